#!/usr/bin/env bash
# Builds Tern and runs it with a demo account (demo@localhost / demo).
# Extra arguments go to `tern serve`, e.g. ./scripts/demo.sh --config tern.toml
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh || exit 1
if command -v ccache >/dev/null 2>&1; then
    export CC="ccache cc" CXX="ccache c++" CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-12G}"
fi
echo "Building Tern (the first build compiles RocksDB and takes several minutes)..." >&2
exec cargo run --release -- serve --demo "$@"
