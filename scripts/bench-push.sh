#!/usr/bin/env bash
# Push benchmark (BENCHMARKS.md, "Push"): SMTP 250 -> StateChange latency
# over PUSH_DELIVERIES deliveries, and server memory per idle WebSocket
# connection over PUSH_CONNECTIONS connections, against `tern serve` built
# in the bench (release) profile.
set -euo pipefail
cd "$(dirname "$0")/.."
# 10,000 client and 10,000 server sockets (in two processes): raise the
# descriptor limit as far as allowed, and say what it is.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "open files limit: $(ulimit -n)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/tern-target}"
echo "uname: $(uname -srm)"
echo "uptime: $(uptime)"
cargo bench --workspace --bench push
echo "uptime: $(uptime)"
