#!/usr/bin/env bash
# Sets everything up and runs the demo: a throwaway PostgreSQL with fake customer data, the
# example policies, and Gatehouse in front of it on 127.0.0.1:6432.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}"
cargo build --release --locked -p gatehouse
exec "$CARGO_TARGET_DIR/release/gatehouse" demo --policies policies "$@"
