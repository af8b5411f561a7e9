#!/usr/bin/env bash
# Everything CI checks: formatting, lints (warnings are errors), all tests,
# the API docs.
# Runs every check even after a failure and exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh || exit 1
if command -v ccache >/dev/null 2>&1; then
    export CC="ccache cc" CXX="ccache c++" CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-12G}"
fi

failed=()
run() {
    printf '\n==> %s\n' "$*" >&2
    "$@" || failed+=("$*")
}
run cargo fmt --all -- --check
run cargo clippy --workspace --all-targets -- -D warnings
# The FoundationDB backend: compiled and linted here (libfdb_c, needed to
# link and run it, is not installable on these machines). Without RocksDB in
# this build, so it does not disturb the RocksDB build the others share.
run cargo clippy -p tern-store --no-default-features --features foundationdb -- -D warnings
run cargo test --workspace
# The API docs: every intra-doc link resolves (links to private items from
# public docs are plain code spans).
RUSTDOCFLAGS="-D warnings" run cargo doc --workspace --no-deps

if [ ${#failed[@]} -ne 0 ]; then
    printf '\ntest.sh: FAILED:\n' >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
printf '\ntest.sh: all checks passed\n' >&2
