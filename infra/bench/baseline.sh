#!/usr/bin/env bash
# Builds a function's release binary at an earlier commit, for a same-run comparison in a benchmark:
#   infra/bench/baseline.sh <rev> <package>   → prints the binary's path
# The commit is checked out in a git worktree outside the clone (under the build cache) and built with the same
# target directory, so only the workspace's own crates are compiled again. Its crates are versioned
# `<version>-baseline` there: cargo names a path crate's build by its path relative to the workspace and its
# version, so with the same versions the baseline's build would stand for the clone's, and the clone's next build
# (its files older than the baseline's build) would take the baseline's binary for its own.
set -euo pipefail
rev=$1 package=$2
root=$(git -C "$(dirname "$0")/../.." rev-parse --show-toplevel)
target=${CARGO_TARGET_DIR:-$root/target}
commit=$(git -C "$root" rev-parse --short=12 "$rev^{commit}")
tree=$target/baselines/$commit
if [ ! -d "$tree/.git" ] && [ ! -f "$tree/.git" ]; then
  git -C "$root" worktree add --detach --force "$tree" "$commit" >&2
fi
git -C "$tree" ls-files -- '*Cargo.toml' ':!:Cargo.toml' | while read -r manifest; do
  sed -i '0,/^version = "\([^"-]*\)"$/s//version = "\1-baseline"/' "$tree/$manifest"
done
(cd "$tree" && CARGO_TARGET_DIR=$target cargo build --release -p "$package" >&2)
mkdir -p "$target/baselines/bin-$commit"
cp "$target/release/$package" "$target/baselines/bin-$commit/$package"
echo "$target/baselines/bin-$commit/$package"
