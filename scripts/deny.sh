#!/usr/bin/env bash
# cargo deny check (advisories, licences, bans, sources; deny.toml) on a machine that reaches
# crates.io but not GitHub, where the RustSec advisory database lives:
#
#   1. installs cargo-deny $DENY_VERSION if it is not there (about 2 minutes on 2 cores);
#   2. downloads every crate in Cargo.lock, for all targets (`cargo metadata` needs them,
#      and `--offline` forbids it to download), and refreshes cargo's crates.io index cache
#      (the yanked-version check reads it);
#   3. lays the snapshot in deny/advisory-db out as the git repository cargo-deny reads
#      (deny.toml `db-path`), its one commit dated with the snapshot's date, so cargo-deny's
#      staleness limit (deny.toml `maximum-db-staleness`) measures the snapshot's real age;
#   4. cargo deny --offline check: the advisories come from the snapshot, nothing else is
#      fetched.
#   5. fails on any advisory in the snapshot against a crate patched in from vendor/, which
#      cargo-deny does not match (it matches registry crates only).
#
# What this cannot see: advisories published after the snapshot's date (printed below).
# Refresh it with scripts/refresh-advisory-db.sh where GitHub is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

DENY_VERSION=0.20.2

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $DENY_VERSION" ]; then
    echo "=== deny: installing cargo-deny $DENY_VERSION"
    start=$(date +%s)
    cargo install cargo-deny --version "$DENY_VERSION" --locked
    echo "=== deny: installed in $(( $(date +%s) - start )) s"
fi

cargo fetch --locked --quiet
# Brings cargo's index cache up to date (the lock file stays as it is), which is what
# cargo-deny reads for yanked versions.
cargo update --dry-run --quiet 2>/dev/null

snapshot=deny/advisory-db
commit=$(sed -n 's/^commit=//p' "$snapshot/SNAPSHOT")
date=$(sed -n 's/^date=//p' "$snapshot/SNAPSHOT")
if [ -z "$commit" ] || [ -z "$date" ]; then
    echo "deny: $snapshot/SNAPSHOT has no commit= or date=" >&2
    exit 1
fi
age_days=$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))

# Where cargo-deny looks for the default database under db-path: `<db-path>/advisory-db-<hash
# of the URL>`. Asked of cargo-deny itself (its debug log names the directory), so that a new
# cargo-deny with another naming scheme still finds the snapshot.
db_root=target/advisory-db
mkdir -p "$db_root"
db=$(cargo deny -L debug --offline check advisories 2>&1 |
    sed -n "s/.*Opening advisory database at '\\(.*\\)'.*/\\1/p" | head -n 1) || true
case "$db" in
    "$db_root"/advisory-db-* | */"$db_root"/advisory-db-*) ;;
    *) echo "deny: cannot tell where cargo-deny reads the advisory database (got '$db')" >&2; exit 1 ;;
esac

rm -rf "$db"
mkdir -p "$db"
cp -r "$snapshot/crates" "$snapshot/LICENSE.txt" "$snapshot/LICENSES" "$db/"
git -C "$db" init -q
git -C "$db" add -A
GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
    git -C "$db" -c user.name=snapshot -c user.email=snapshot@invalid -c commit.gpgsign=false \
    commit -q -m "rustsec/advisory-db $commit"
# cargo-deny takes the later of the commit date and .git/HEAD's mtime as the fetch time.
touch -d "$date" "$db/.git/HEAD"

echo "=== deny: advisory database: rustsec/advisory-db $commit of $date ($age_days days old)"
if [ "$age_days" -gt 90 ]; then
    echo "=== deny: WARNING: advisories published since $date are not checked;" \
        "refresh deny/advisory-db with scripts/refresh-advisory-db.sh"
fi

status=0
cargo deny --offline --locked check || status=$?

# cargo-deny matches advisories against crates from a registry only: a crate patched in from
# vendor/ (a path) is never matched, even at the version it was taken from. So every advisory
# in the snapshot against a vendored crate's name fails here until someone has read it and
# listed its id in `reviewed` (with why it does not apply), or dropped the patch.
reviewed=()
for dir in vendor/*/; do
    name=$(basename "$dir")
    for adv in "$snapshot/crates/$name"/*.md; do
        [ -e "$adv" ] || continue
        id=$(basename "$adv" .md)
        if [[ " ${reviewed[*]} " == *" $id "* ]]; then
            continue
        fi
        echo "=== deny: $id is an advisory against $name, which is vendored ($dir): cargo-deny" \
            "does not check path crates; read $adv and list $id in reviewed= in $0, or drop the patch" >&2
        status=1
    done
done
exit "$status"
