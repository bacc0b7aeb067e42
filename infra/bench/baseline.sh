#!/usr/bin/env bash
# Builds a function's release binary at an earlier commit, for a same-run comparison in a benchmark:
#   infra/bench/baseline.sh <rev> <package>   → prints the binary's path
# The commit is checked out in a git worktree outside the clone (under the build cache) and built with the same
# target directory, so only the workspace's own crates are compiled again.
set -euo pipefail
rev=$1 package=$2
root=$(git -C "$(dirname "$0")/../.." rev-parse --show-toplevel)
target=${CARGO_TARGET_DIR:-$root/target}
commit=$(git -C "$root" rev-parse --short=12 "$rev^{commit}")
tree=$target/baselines/$commit
if [ ! -d "$tree/.git" ] && [ ! -f "$tree/.git" ]; then
  git -C "$root" worktree add --detach --force "$tree" "$commit" >&2
fi
(cd "$tree" && CARGO_TARGET_DIR=$target cargo build --release -p "$package" >&2)
mkdir -p "$target/baselines/bin-$commit"
cp "$target/release/$package" "$target/baselines/bin-$commit/$package"
echo "$target/baselines/bin-$commit/$package"
