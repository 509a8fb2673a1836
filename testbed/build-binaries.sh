#!/usr/bin/env bash
# Build the testbed's real components from the Go module proxy, once per pinned
# version set, into $BUILDFAN_TESTBED_CACHE/bin-<key>/. Prints that directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${BUILDFAN_TESTBED_CACHE:-$HOME/.cache/buildfan-testbed}
# The key changes whenever a wrapper module's pins change.
key=$(cat "$here"/gomod/*/go.mod "$here"/gomod/*/go.sum "$0" | sha256sum | cut -c1-12)
out="$cache/bin-$key"
if [ -f "$out/.complete" ]; then echo "$out"; exit 0; fi
command -v go >/dev/null || { echo "testbed: 'go' not found; install Go 1.26 (https://go.dev/dl)" >&2; exit 3; }
gov=$(go env GOVERSION)
case "$gov" in
  go1.26.*) ;;
  *) echo "testbed: found $gov; building with GOEXPERIMENT=nojsonv2 (Go 1.27's JSON breaks Kubernetes' OpenAPI)" >&2
     export GOEXPERIMENT=nojsonv2 ;;
esac
mkdir -p "$out.tmp"
export GOFLAGS=-buildvcs=false CGO_ENABLED=0
build() { # module-dir output package [ldflags]
  local start=$SECONDS
  (cd "$here/gomod/$1" && go build -trimpath -ldflags "-s -w ${4:-}" -o "$out.tmp/$2" "$3")
  echo "testbed: built $2 in $((SECONDS - start))s" >&2
}
build kwok kwok sigs.k8s.io/kwok/cmd/kwok
build buildx docker-buildx github.com/docker/buildx/cmd/buildx \
  "-X github.com/docker/buildx/version.Version=v0.36.1 -X github.com/docker/buildx/version.Package=github.com/docker/buildx"
build buildkit buildkitd github.com/moby/buildkit/cmd/buildkitd \
  "-X github.com/moby/buildkit/version.Version=v0.32.2"
build buildkit buildctl github.com/moby/buildkit/cmd/buildctl \
  "-X github.com/moby/buildkit/version.Version=v0.32.2"
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  build kubernetes "$c" "k8s.io/kubernetes/cmd/$c"
done
# kwok's stages and CRDs, from the same pinned module, for testbed.py to load.
kwok_src=$(cd "$here/gomod/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
mkdir -p "$out.tmp/kwok-assets"
cp "$kwok_src"/kustomize/stage/node/fast/node-initialize.yaml "$kwok_src"/kustomize/stage/pod/fast/pod-ready.yaml \
  "$kwok_src"/kustomize/stage/pod/fast/pod-delete.yaml "$kwok_src"/kustomize/crd/bases/kwok.x-k8s.io_execs.yaml \
  "$kwok_src"/kustomize/crd/bases/kwok.x-k8s.io_clusterexecs.yaml "$out.tmp/kwok-assets/"
chmod -R u+w "$out.tmp/kwok-assets"
rm -rf "$out" && mv "$out.tmp" "$out" && touch "$out/.complete"
echo "$out"
