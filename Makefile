# The only commands a new machine needs are `make test` and (later) `make demo`; the rest are steps.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: build test lint fmt crds cluster-build cluster-up cluster-down fixtures

build:
	$(CARGO) build --release

## Builds the control plane binaries if missing, starts it, runs every test, stops it again.
test: cluster-build
	tests/run.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## Regenerates the CRD YAML from the Rust types.
crds:
	$(CARGO) run --quiet -- crds > crds/ilert.com_ilertpipelines.yaml

cluster-build:
	tests/cluster/build.sh

cluster-up: cluster-build
	tests/cluster/up.sh

cluster-down:
	tests/cluster/down.sh

## Captures real Deployment/ReplicaSet objects into tests/fixtures (needs a running control plane).
fixtures:
	tests/fixtures/capture.py
