#!/usr/bin/env bash
# The SMTP benchmark of BENCHMARKS.md ("SMTP"): Postfix's smtp-source
# against Tern's MX listener (release build) and, in the same run, against
# Postfix's smtp-sink (accepts and discards, no disk) for the protocol
# ceiling; then Tern's own load client (benches/smtp_load.rs) for
# per-message latency. Every message Tern acknowledges is durable first.
#
#   crates/smtp/benches/smtp_bench.sh [SESSIONS] [MESSAGES] [SIZE]
#
# Defaults: 20 sessions, 20,000 messages of 10,240 bytes, all to
# alice@example.com. Environment:
#   TERN_BIN               the tern binary ($CARGO_TARGET_DIR/release/tern)
#   TERN_BENCH_DIR         parent of the fresh data directory ($HOME)
#   TERN_BENCH_CHECKS=1    SPF/DKIM/ARC/DMARC/iprev on, against a local DNS
#                          server (dns_zone.py) — off by default
#   TERN_BENCH_SPAM=0      the spam filter off (on by default, as shipped)
#   TERN_BENCH_SPAM_TRAINED=1  the classifier runs on every message, as on
#                          a server whose models are trained (the shipped
#                          rules with [bayes] min_spam = min_ham = 0); as
#                          shipped it waits for 20 trained spam and ham
#   TERN_BENCH_INDEXER_NICE=N  [search] indexer_nice (default: as shipped)
#   TERN_BENCH_LOG=LEVEL   tern's log level (warn; info logs each delivery
#                          with its delays=checks/wait/spam/store)
#   TERN_BENCH_SERVE_LOG=FILE  where to keep tern's log (it is deleted)
# Needs a release build (`cargo build --workspace --release` and
# `cargo bench --workspace --bench smtp_load --no-run`), python3, and
# scripts/postfix-tools.sh (downloads postfix's .deb, installs nothing).
set -euo pipefail

sessions="${1:-20}"
messages="${2:-20000}"
size="${3:-10240}"
root="$(cd "$(dirname "$0")/../../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
tern="${TERN_BIN:-$target/release/tern}"
load="$(ls -t "$target"/release/deps/smtp_load-* 2>/dev/null | grep -v '\.d$' | head -n 1 || true)"
tools="$("$root/scripts/postfix-tools.sh")"
[ -x "$tern" ] || { echo "no release binary at $tern" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
work="$(mktemp -d "${TERN_BENCH_DIR:-$HOME}/tern-smtp-bench.XXXXXX")"
tern_pid="" sink_pid="" dns_pid=""
cleanup() {
    for pid in $tern_pid $sink_pid $dns_pid; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${TERN_BENCH_SERVE_LOG:-}" ]; then cp "$work/serve.log" "$TERN_BENCH_SERVE_LOG" || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

mx=$(free_port) sub=$(free_port) jmap=$(free_port) sink=$(free_port)
checks="enabled = false" dns=""
if [ "${TERN_BENCH_CHECKS:-0}" = 1 ]; then
    dnsport=$(free_port)
    python3 "$root/crates/smtp/benches/dns_zone.py" "$dnsport" &
    dns_pid=$!
    checks="enabled = true"
    dns="nameservers = [\"127.0.0.1:$dnsport\"]"
fi
spam="enabled = true"
[ "${TERN_BENCH_SPAM:-1}" = 0 ] && spam="enabled = false"
if [ "${TERN_BENCH_SPAM_TRAINED:-0}" = 1 ]; then
    sed -e 's/^min_spam = .*/min_spam = 0/' -e 's/^min_ham = .*/min_ham = 0/' \
        "$root/resources/spam/rules.toml" >"$work/rules.toml"
    grep -q '^min_spam = 0$' "$work/rules.toml" && grep -q '^min_ham = 0$' "$work/rules.toml" ||
        { echo "TERN_BENCH_SPAM_TRAINED: no min_spam/min_ham lines in rules.toml" >&2; exit 1; }
    spam="$spam
rules_file = \"$work/rules.toml\""
fi
cat >"$work/tern.toml" <<TOML
data_dir = "$work/data"
hostname = "mx.bench.test"
domains = ["example.com"]
[listen]
jmap = "127.0.0.1:$jmap"
smtp = "127.0.0.1:$mx"
submission = "127.0.0.1:$sub"
[smtp]
max_connections_per_ip = 1000
connections_per_minute = 100000000
[smtp.checks]
$checks
[dns]
$dns
[spam]
$spam
[search]
${TERN_BENCH_INDEXER_NICE:+indexer_nice = $TERN_BENCH_INDEXER_NICE}
[log]
level = "${TERN_BENCH_LOG:-warn}"
TOML
"$tern" --config "$work/tern.toml" domain add example.com >/dev/null
"$tern" --config "$work/tern.toml" account add alice@example.com --password bench >/dev/null
"$tern" --config "$work/tern.toml" serve >"$work/serve.out" 2>"$work/serve.log" &
tern_pid=$!
"$tools/smtp-sink" -u root "127.0.0.1:$sink" 1024 &
sink_pid=$!
for _ in $(seq 200); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$mx)).close(); socket.create_connection(('127.0.0.1',$jmap)).close()" 2>/dev/null && break
    sleep 0.1
done

echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GB RAM, data on $(df -h "$work" | awk 'NR==2{print $1}')"
echo "tern: $tern"
echo "config: [smtp.checks] $checks; [spam] $(echo $spam); log level warn"
echo "workload: $sessions sessions, $messages messages of $size bytes, one recipient each, connections kept (smtp-source -d)"

tern_ticks() { # user+system clock ticks of tern serve (all its threads)
    awk '{print $14 + $15}' "/proc/$tern_pid/stat"
}
machine_ticks() { # busy and total clock ticks of every CPU
    awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat
}
run() { # label port
    local start end t0 t1 m0 m1
    echo "load before: $(uptime | sed 's/.*load average: //')"
    t0=$(tern_ticks) m0=$(machine_ticks)
    start=$(date +%s.%N)
    "$tools/smtp-source" -d -s "$sessions" -m "$messages" -l "$size" \
        -M load.example.org -f load@example.org -t alice@example.com "127.0.0.1:$2"
    end=$(date +%s.%N)
    t1=$(tern_ticks) m1=$(machine_ticks)
    python3 -c "e = $end - $start; print(f'$1: $messages messages in {e:.2f} s = {$messages / e:.0f} messages/s')"
    # CPU during the run (USER_HZ is 100): tern's per message, and how
    # busy the machine's CPUs were (all processes).
    python3 -c "
m0, m1 = '$m0'.split(), '$m1'.split()
busy = (int(m1[0]) - int(m0[0])) / max(1, int(m1[1]) - int(m0[1]))
print(f'  CPU: tern {($t1 - $t0) / 100:.2f} s = {($t1 - $t0) * 1e4 / $messages:.0f} us per message; machine {100 * busy:.0f}% busy')"
    echo "load after: $(uptime | sed 's/.*load average: //')"
}
run "smtp-source -> smtp-sink (ceiling)" "$sink"
run "smtp-source -> tern MX" "$mx"
run "smtp-source -> smtp-sink (ceiling, again)" "$sink"
if [ -n "$load" ]; then
    echo "load before: $(uptime | sed 's/.*load average: //')"
    "$load" "127.0.0.1:$mx" "$sessions" "$messages" "$size" alice@example.com
    echo "load after: $(uptime | sed 's/.*load average: //')"
else
    echo "smtp_load is not built: cargo bench --workspace --bench smtp_load --no-run"
fi

# Every acknowledged message is in the inbox (JMAP Mailbox/get).
python3 - "$jmap" <<'PY'
import base64, json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
auth = "Basic " + base64.b64encode(b"alice@example.com:bench").decode()
def call(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Authorization": auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)
session = call(base + "/.well-known/jmap")
account = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
res = call(session["apiUrl"], {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
    "methodCalls": [["Mailbox/get", {"accountId": account, "properties": ["role", "totalEmails"]}, "m"]]})
for box in res["methodResponses"][0][1]["list"]:
    if box["totalEmails"]:
        print(f"stored: {box['totalEmails']} emails in {box['role']}")
# The spam filter's verdict on one of them (which tests ran, BAYES_* among
# them once the classifier is used).
res = call(session["apiUrl"], {"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
    "methodCalls": [["Email/query", {"accountId": account, "limit": 1}, "q"],
        ["Email/get", {"accountId": account, "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
            "properties": ["header:X-Spam-Status:asText"]}, "g"]]})
for email in res["methodResponses"][1][1]["list"]:
    print(f"X-Spam-Status: {email['header:X-Spam-Status:asText']}")
PY
