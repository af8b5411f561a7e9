#!/bin/bash
# Sets up (or resets) a private Cyrus IMAP 3.6 instance with JMAP for the
# JMAP benchmark's comparison run (BENCHMARKS.md, "JMAP"), and prints the
# environment for `cargo bench --workspace --bench query`.
#
#   scripts/bench-cyrus.sh          # install if needed, (re)start, empty Inbox
#   scripts/bench-cyrus.sh stop     # stop it
#
# Everything lives in $CYRUS_BENCH_DIR (default /var/tmp/cyrus-bench): its
# own imapd.conf/cyrus.conf, sasldb, spool; HTTP (JMAP) on 127.0.0.1:8018,
# LMTP on 127.0.0.1:2403, IMAP (for cyradm) on 127.0.0.1:1143. The system's
# /etc/imapd.conf is not used. Needs root (Debian packages, the cyrus user).
set -euo pipefail

B=${CYRUS_BENCH_DIR:-/var/tmp/cyrus-bench}
CONF=$B/imapd.conf
USER=bench
PASSWORD=bench-password
ADMIN_PASSWORD=cyrus-admin

stop() {
    if [ -f "$B/run/master.pid" ] && kill -0 "$(cat "$B/run/master.pid")" 2>/dev/null; then
        kill "$(cat "$B/run/master.pid")"
        for _ in $(seq 50); do
            kill -0 "$(cat "$B/run/master.pid")" 2>/dev/null || break
            sleep 0.1
        done
    fi
}

if [ "${1:-}" = stop ]; then
    stop
    exit 0
fi

if [ ! -x /usr/lib/cyrus/bin/httpd ] || ! command -v saslpasswd2 >/dev/null || ! command -v cyradm >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        cyrus-imapd cyrus-caldav cyrus-admin cyrus-clients sasl2-bin >/dev/null
fi
/usr/lib/cyrus/bin/cyr_buildinfo | grep -q '"jmap": true' || {
    echo "this Cyrus build has no JMAP" >&2
    exit 1
}

stop
rm -rf "$B"
mkdir -p "$B/conf" "$B/spool" "$B/run/proc" "$B/run/lock" "$B/run/socket"
cat >"$CONF" <<EOF
configdirectory: $B/conf
defaultpartition: default
partition-default: $B/spool
proc_path: $B/run/proc
mboxname_lockpath: $B/run/lock
lmtpsocket: $B/run/socket/lmtp
idlesocket: $B/run/socket/idle
notifysocket: $B/run/socket/notify
admins: cyrus
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: $B/sasldb2
sasl_mech_list: PLAIN LOGIN
httpmodules: jmap
conversations: yes
conversations_db: twoskip
altnamespace: no
unixhierarchysep: no
lmtp_downcase_rcpt: yes
hashimapspool: true
syslog_prefix: cyrus-bench
httpallowcompress: no
EOF
# Services get the alternate config explicitly: cyrmaster does not pass -C on.
cat >"$B/cyrus.conf" <<EOF
START {
  recover cmd="/usr/lib/cyrus/bin/ctl_cyrusdb -C $CONF -r"
}
SERVICES {
  http cmd="/usr/lib/cyrus/bin/httpd -C $CONF" listen="127.0.0.1:8018" prefork=2 maxchild=64
  lmtp cmd="/usr/lib/cyrus/bin/lmtpd -a -C $CONF" listen="127.0.0.1:2403" prefork=1 maxchild=16
  imap cmd="/usr/lib/cyrus/bin/imapd -C $CONF" listen="127.0.0.1:1143" prefork=0 maxchild=8
}
EVENTS {
  checkpoint cmd="/usr/lib/cyrus/bin/ctl_cyrusdb -C $CONF -c" period=30
}
EOF
printf %s "$PASSWORD" | saslpasswd2 -p -c -f "$B/sasldb2" "$USER"
printf %s "$ADMIN_PASSWORD" | saslpasswd2 -p -c -f "$B/sasldb2" cyrus
chown -R cyrus:mail "$B"
chmod 640 "$B/sasldb2"
/usr/sbin/cyrmaster -C "$CONF" -M "$B/cyrus.conf" -p "$B/run/master.pid" -d
for _ in $(seq 100); do
    (echo >/dev/tcp/127.0.0.1/1143) 2>/dev/null && break || sleep 0.1
done
echo "cm user.$USER" | cyradm --user cyrus --password "$ADMIN_PASSWORD" \
    --server 127.0.0.1 --port 1143 --auth PLAIN >/dev/null

echo "export TERN_BENCH_CYRUS=http://127.0.0.1:8018"
echo "export TERN_BENCH_CYRUS_USER=$USER"
echo "export TERN_BENCH_CYRUS_PASSWORD=$PASSWORD"
echo "export TERN_BENCH_CYRUS_LMTP=127.0.0.1:2403"
