#!/usr/bin/env bash
# Installs the build prerequisites on Debian 12 (Go is expected at /usr/local/go or on
# PATH; the Go modules come from the module proxy). Host packages for running VMs are
# installed by `mvmctl bootstrap`. Safe to run twice.
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v make >/dev/null || need+=(make)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v gcc >/dev/null || need+=(gcc libc6-dev) # the race detector needs cgo
command -v depmod >/dev/null || need+=(kmod)         # cross-checks the initramfs module order
if ((${#need[@]})); then
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q --no-install-recommends "${need[@]}" || { apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; }
fi
if ! command -v go >/dev/null; then
	if [ -x /usr/local/go/bin/go ]; then
		echo "note: add /usr/local/go/bin to PATH" >&2
	else
		echo "Go is not installed: install Go 1.26 (https://go.dev/dl) into /usr/local/go" >&2
		exit 1
	fi
fi
go mod download
