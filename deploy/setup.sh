#!/usr/bin/env bash
# Installs everything Gatehouse needs to build, run its demo and run its tests on Debian:
# build tools for RocksDB/libpg_query, PostgreSQL server binaries (for the throwaway clusters),
# OpenSSH, Chromium and OpenSSL (the evidence tests render the bundle report and check a
# checkpoint signature with them), moto's S3 server from PyPI (the shipping tests' sink), Node.js
# and npm's oidc-provider (the OIDC tests' OpenID Provider), the
# Rust toolchain if missing, and the wasm32-wasip2 target.
set -euo pipefail

need_pkgs=(build-essential cmake clang libclang-dev pkg-config libssl-dev protobuf-compiler
           postgresql postgresql-client postgresql-contrib postgresql-server-dev-all openssh-server openssh-client ca-certificates curl git
           chromium openssl python3 python3-pip)
missing=()
for p in "${need_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js runs the OpenID Provider of the OIDC tests; any install of it will do.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
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

# A real OpenID Provider for the OIDC tests: npm's oidc-provider, pinned by
# conformance/oidc/package-lock.json, installed beside the script the tests copy there.
node_dir="${GATEHOUSE_NODE_DIR:-$HOME/.cache/gatehouse/node}"
oidc_src="$(dirname "$0")/../conformance/oidc"
if [ ! -d "$node_dir/node_modules/oidc-provider" ] || ! cmp -s "$oidc_src/package-lock.json" "$node_dir/package-lock.json"; then
    mkdir -p "$node_dir"
    cp "$oidc_src/package.json" "$oidc_src/package-lock.json" "$node_dir/"
    (cd "$node_dir" && npm ci --silent --no-audit --no-fund)
fi

# PostgreSQL's own regression suite for the pg_regress conformance test.
"$(dirname "$0")/pg-regress-source.sh"
