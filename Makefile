# Conveniences over scripts/: `make demo` = scripts/demo.sh, `make test` = scripts/test.sh.

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

demo:
	@./scripts/demo.sh

test:
	@./scripts/test.sh

unit:
	$(GO) test ./...

bench:
	@./scripts/bench.sh

fmt:
	gofmt -w cmd internal

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
