#!/usr/bin/env bash
# Installs everything Gatehouse needs to build, run its demo and run its tests on Debian:
# build tools for RocksDB/libpg_query, PostgreSQL server binaries (for the throwaway clusters),
# OpenSSH, Chromium and OpenSSL (the evidence tests render the bundle report and check a
# checkpoint signature with them), moto's S3 server from PyPI (the shipping tests' sink), the
# Rust toolchain if missing, and the wasm32-wasip2 target.
set -euo pipefail

need_pkgs=(build-essential cmake clang libclang-dev pkg-config libssl-dev protobuf-compiler
           postgresql postgresql-client postgresql-contrib postgresql-server-dev-all openssh-server openssh-client ca-certificates curl git
           chromium openssl python3 python3-pip)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "Rust is not installed: install rustup (https://rustup.rs) and run this again" >&2
        exit 1
    fi
fi
rustup target list --installed 2>/dev/null | grep -q wasm32-wasip2 || rustup target add wasm32-wasip2 || true

# A real S3 API for the shipping tests (moto's server, from PyPI).
if ! python3 -c 'import moto.server, flask' >/dev/null 2>&1; then
    python3 -m pip install -q 'moto[server]' 2>/dev/null ||
        python3 -m pip install -q --break-system-packages 'moto[server]'
fi

# PostgreSQL's own regression suite for the pg_regress conformance test.
"$(dirname "$0")/pg-regress-source.sh"
