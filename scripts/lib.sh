# Shared by the scripts: Go on PATH, build prerequisites, binaries in bin/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0
if [ "$(id -u)" != 0 ]; then
	echo "run this as root: mvm creates bridges and TAPs and installs packages with apt" >&2
	exit 1
fi
./scripts/install-deps.sh
version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
ldflags="-s -w -X github.com/mvm-dev/mvm/internal/version.stamped=$version"
mkdir -p bin
go build -trimpath -ldflags "$ldflags" -o bin/mvm-agent ./cmd/mvm-agent
go build -trimpath -ldflags "$ldflags" -o bin/mvmctl ./cmd/mvmctl
