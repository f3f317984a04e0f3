#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, decision tests and end-to-end suites.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
# The WebAssembly plugins the end-to-end suites load (own cargo workspace and target dir).
export GATEHOUSE_PLUGIN_DIR="${GATEHOUSE_PLUGIN_DIR:-$(./deploy/build-plugins.sh)}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked -- --test-threads="${GATEHOUSE_TEST_THREADS:-4}"
# The plugins' own workspace (native build for their unit tests, e.g. pii-mask's labelled corpus).
plugin_target="${GATEHOUSE_PLUGIN_TARGET_DIR:-$HOME/.cache/gatehouse/plugins-target}/native"
cargo fmt --manifest-path plugins/Cargo.toml --all -- --check
cargo clippy --manifest-path plugins/Cargo.toml --target-dir "$plugin_target" --workspace --all-targets --locked -- -D warnings
cargo test --manifest-path plugins/Cargo.toml --target-dir "$plugin_target" --workspace --locked
