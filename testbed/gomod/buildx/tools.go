//go:build tools

// Package tools pins the docker buildx CLI plugin.
package tools

import _ "github.com/docker/buildx/cmd/buildx"
