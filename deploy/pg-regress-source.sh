#!/usr/bin/env bash
# Fetches PostgreSQL's own regression suite (SQL, expected output, data files) for the
# installed server's major version from Debian's source package, and builds the suite's C
# helper library (regress.so) against the installed server headers. The conformance test
# `pg_regress` runs it directly and through Gatehouse and compares the two.
#
# Result: $GATEHOUSE_PG_REGRESS_DIR (default ~/.cache/gatehouse/pg-regress/<major>) holding
# sql/, expected/, data/, parallel_schedule, regress.so and SOURCE_VERSION. Idempotent.
set -euo pipefail

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bindir" ] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
major=$(basename "$(dirname "$bindir")")
dest="${GATEHOUSE_PG_REGRESS_DIR:-$HOME/.cache/gatehouse/pg-regress/$major}"
if [ -f "$dest/regress.so" ] && [ -f "$dest/parallel_schedule" ]; then
    exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Debian images ship without deb-src entries; add them next to the binary ones.
if ! apt-cache showsrc "postgresql-$major" 2>/dev/null | grep -q '^Version:'; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
            $SUDO tee /etc/apt/sources.list.d/gatehouse-deb-src.sources >/dev/null
    elif [ -f /etc/apt/sources.list ]; then
        grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' |
            $SUDO tee /etc/apt/sources.list.d/gatehouse-deb-src.list >/dev/null
    fi
    $SUDO apt-get update -qq
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# Newest first; a version listed by the index is not always still on the mirror (security
# updates move on), so try each. Minor versions share the suite's SQL and expected files
# closely enough for a direct-versus-Gatehouse comparison, which uses one copy for both runs.
fetched=""
for v in $(apt-cache showsrc "postgresql-$major" | sed -n 's/^Version: //p' | sort -Vr | uniq); do
    if apt-get source --download-only -qq "postgresql-$major=$v" >/dev/null 2>&1; then
        fetched=$v
        break
    fi
done
[ -n "$fetched" ] || { echo "could not download the postgresql-$major source package" >&2; exit 1; }
tarball=$(ls postgresql-"$major"_*.orig.tar.* | head -n 1)
upstream=${tarball#postgresql-"$major"_}
top="postgresql-${upstream%%.orig.tar.*}"
tar xf "$tarball" "$top/src/test/regress"

if [ ! -f "/usr/include/postgresql/$major/server/postgres.h" ]; then
    $SUDO apt-get install -y -qq "postgresql-server-dev-$major" >/dev/null
fi
src="$top/src/test/regress"
cc -O2 -fPIC -shared -I"/usr/include/postgresql/$major/server" "$src/regress.c" -o "$src/regress.so"

mkdir -p "$(dirname "$dest")"
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
cp -r "$src/sql" "$src/expected" "$src/data" "$src/parallel_schedule" "$src/resultmap" "$src/regress.so" "$dest.tmp/"
echo "$fetched" > "$dest.tmp/SOURCE_VERSION"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "PostgreSQL $fetched regression suite in $dest"
