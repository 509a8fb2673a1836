#!/usr/bin/env bash
# Push base:1..3 from CACHE_DIR/oci (made by build-images.sh) to a plain-HTTP registry,
# skipping tags the registry already has. Layers stay gzip-compressed as built.
set -euo pipefail
cache=${1:?usage: push-images.sh CACHE_DIR REGISTRY}
reg=${2:?usage: push-images.sh CACHE_DIR REGISTRY (e.g. 127.0.0.1:5000)}
log() { echo "testbed: $*" >&2; }
for c in skopeo curl; do
  command -v "$c" >/dev/null || { log "missing prerequisite: $c (apt-get install $c)"; exit 3; }
done
[ -f "$cache/.complete" ] || { log "no built images in $cache (run build-images.sh $cache first)"; exit 3; }
accept=application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json
accept=$accept,application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json
for n in 1 2 3; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -I -H "Accept: $accept" "http://$reg/v2/base/manifests/$n") || true
  case "$code" in
    200) log "$reg/base:$n already present"; continue ;;
    404) ;;
    *) log "registry http://$reg not usable (HTTP ${code:-none} for /v2/base/manifests/$n)"; exit 1 ;;
  esac
  start=$SECONDS
  skopeo copy -q --dest-tls-verify=false "oci:$cache/oci:$n" "docker://$reg/base:$n"
  log "pushed $reg/base:$n in $((SECONDS - start))s"
done
