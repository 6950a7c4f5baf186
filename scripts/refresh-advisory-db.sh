#!/usr/bin/env bash
# Refreshes deny/advisory-db, the snapshot of the RustSec advisory database that
# scripts/deny.sh checks against, from rustsec/advisory-db:
#
#   bash scripts/refresh-advisory-db.sh            # clones it (needs GitHub)
#   bash scripts/refresh-advisory-db.sh CHECKOUT   # from a clone already here (work tree or
#                                                  # bare; its HEAD is taken)
#
# Takes crates/ (the advisories for crates.io crates) and the licence files, and writes the
# commit and its date to deny/advisory-db/SNAPSHOT. Then: bash scripts/deny.sh, and commit
# deny/advisory-db with the date in the message.
set -euo pipefail
cd "$(dirname "$0")/.."

url=https://github.com/rustsec/advisory-db
dest=deny/advisory-db
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ $# -ge 1 ]; then
    src=$1
else
    src=$tmp/advisory-db
    git clone --quiet --depth 1 "$url" "$src"
fi

commit=$(git -C "$src" rev-parse HEAD)
date=$(git -C "$src" show -s --format=%cI HEAD)
git -C "$src" archive HEAD crates LICENSE.txt LICENSES | tar -x -C "$tmp" --one-top-level=new
[ -d "$tmp/new/crates" ] || { echo "refresh-advisory-db: no crates/ in $src" >&2; exit 1; }

rm -rf "$dest/crates" "$dest/LICENSES" "$dest/LICENSE.txt"
mkdir -p "$dest"
cp -r "$tmp/new/crates" "$tmp/new/LICENSES" "$tmp/new/LICENSE.txt" "$dest/"
cat > "$dest/SNAPSHOT" <<EOF
# The RustSec advisory database (rustsec/advisory-db), crates/ and its licences, as of:
commit=$commit
date=$date
# Written by scripts/refresh-advisory-db.sh; read by scripts/deny.sh.
EOF
echo "deny/advisory-db: rustsec/advisory-db $commit of $date," \
    "$(find "$dest/crates" -name '*.md' | wc -l) advisories"
