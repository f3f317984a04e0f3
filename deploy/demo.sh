#!/usr/bin/env bash
# Sets everything up and runs the demo: a throwaway PostgreSQL with fake customer data, the
# example policies, the built-in plugins (PII masking and a SQL guard on target `app`), and
# Gatehouse in front of it on 127.0.0.1:6432.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
plugins=$(./deploy/build-plugins.sh)
# Always the whole workspace: building one package unifies features differently and would
# rebuild RocksDB's C++ (half an hour on a small machine).
cargo build --release --locked --workspace
exec "$CARGO_TARGET_DIR/release/gatehouse" demo --policies policies --plugins "$plugins" "$@"
