#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, decision tests and end-to-end suites.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads="${GATEHOUSE_TEST_THREADS:-4}"
