# mvm — two entry points for a fresh Debian 12 machine (as root):
#   make demo   boot the default microVM, run commands in it, take it down
#   make test   run the whole test suite (unit, fuzz seeds, real-VM integration)
# Both install what they need and are safe to run twice.

SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/mvm-dev/mvm/internal/version.stamped=$(VERSION)
BIN := $(CURDIR)/bin
export GOFLAGS := -buildvcs=false
export CGO_ENABLED := 0

.PHONY: all build deps demo test unit integration bench clean fmt vet

all: build

deps:
	@./scripts/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mvm-agent ./cmd/mvm-agent
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/mvmctl ./cmd/mvmctl

demo: deps build
	@./scripts/demo.sh

test: deps build
	@./scripts/test.sh

unit:
	$(GO) test ./...

bench: deps build
	@./scripts/bench.sh

fmt:
	gofmt -w cmd internal

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
