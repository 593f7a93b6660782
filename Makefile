# The only commands a new machine needs are `make test` and (later) `make demo`; the rest are steps.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: build plugin image test chaos demo bench lint fmt crds cluster-build cluster-up cluster-down fixtures

build:
	$(CARGO) build --release

## The kubectl plugin `kubectl ilert` (the same binary under the name kubectl-ilert) into
## $(PREFIX)/bin, by default ~/.local/bin.
PREFIX ?= $(HOME)/.local
plugin: build
	install -D -m 0755 target/release/ilert-rollout-controller $(PREFIX)/bin/kubectl-ilert

## The OCI image from the Dockerfile, with buildah (no Docker engine); prints its size and layers.
## IMAGE_BINARY=source compiles inside the build stage, as the release does; IMAGE=name:tag to tag.
image:
	image/build.sh

## A short story on a local control plane: rollouts become ilert events before your eyes.
demo:
	demo/run.sh

## Builds the control plane binaries and the image if missing, starts it, runs every test, stops it again.
test: cluster-build image
	tests/run.sh

## The long fault-injection suite on a control plane of its own (kill -9 during 200 rollouts, API
## server and etcd outages, a 2-minute ilert outage, failover during a 200-rollout burst).
chaos: cluster-build
	tests/run.sh chaos

## N Deployments rolling out at once (BENCH_N=100,1000,5000 by default), kubewatch beside the
## controller as a peer; report in target/bench/.
bench: cluster-build
	tests/cluster/build.sh peers
	tests/run.sh bench

## Formatting, clippy, the Helm chart, the Dockerfile and the GitHub workflows.

lint: cluster-build
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --test chaos -- -D warnings
	$$(tests/cluster/build.sh print-bin-dirs | sed -n 's/^HELM_BIN=//p')/helm lint charts/ilert-rollout-controller
	$$(tests/tools.sh)/hadolint Dockerfile
	$$(tests/cluster/build.sh print-bin-dirs | sed -n 's/^ACTIONLINT_BIN=//p')/actionlint .github/workflows/*.yaml

fmt:
	$(CARGO) fmt

## Regenerates the CRD YAML from the Rust types.
crds:
	$(CARGO) run --quiet -- crds > crds/ilert.com_ilertpipelines.yaml
	cp crds/ilert.com_ilertpipelines.yaml charts/ilert-rollout-controller/crds/

cluster-build:
	tests/cluster/build.sh

cluster-up: cluster-build
	tests/cluster/up.sh

cluster-down:
	tests/cluster/down.sh

## Captures real Deployment/ReplicaSet objects into tests/fixtures (needs a running control plane).
fixtures:
	tests/fixtures/capture.py
