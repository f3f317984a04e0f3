#!/usr/bin/env bash
# Builds Gatehouse's WebAssembly plugins (plugins/*) as wasm32-wasip2 components and copies them
# to an output directory as <plugin>.wasm (pii-mask.wasm, sql-guard.wasm, ssh-guard.wasm,
# template.wasm, test-hostile.wasm). Prints the output directory on stdout (cargo's output goes to stderr).
#
#   deploy/build-plugins.sh [OUT_DIR]        # default: $HOME/.cache/gatehouse/plugins
#
# The plugins are their own cargo workspace (plugins/Cargo.toml) with their own target
# directory, GATEHOUSE_PLUGIN_TARGET_DIR (default $HOME/.cache/gatehouse/plugins-target): never
# the main workspace's. Idempotent: when nothing changed, cargo does nothing and no output file
# is rewritten (files are replaced atomically, and only when their content changed, so a
# gateway watching the directory for hot reload sees each new version exactly once).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$HOME/.cache/gatehouse/plugins}"
target_dir="${GATEHOUSE_PLUGIN_TARGET_DIR:-$HOME/.cache/gatehouse/plugins-target}"
target=wasm32-wasip2

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target" >&2
    fi
fi

cargo build --release --locked --target "$target" \
    --manifest-path "$root/plugins/Cargo.toml" \
    --target-dir "$target_dir" >&2

mkdir -p "$out"
built=0
for manifest in "$root"/plugins/*/Cargo.toml; do
    name="$(basename "$(dirname "$manifest")")"
    artifact="$target_dir/$target/release/gatehouse_plugin_${name//-/_}.wasm"
    if [[ ! -f "$artifact" ]]; then
        echo "build-plugins: $artifact was not produced" >&2
        exit 1
    fi
    dest="$out/$name.wasm"
    if ! cmp -s "$artifact" "$dest"; then
        tmp="$(mktemp "$out/.$name.wasm.XXXXXX")"
        cp "$artifact" "$tmp"
        chmod 644 "$tmp"
        mv -f "$tmp" "$dest"
        echo "build-plugins: updated $dest" >&2
    fi
    built=$((built + 1))
done
echo "build-plugins: $built plugins in $out" >&2
echo "$out"
