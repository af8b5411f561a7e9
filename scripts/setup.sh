#!/usr/bin/env bash
# Installs what building Tern needs on a fresh Debian/Ubuntu machine, and
# nothing when it is all there already (safe to run every time).
#
# Needs: cargo with rustfmt and clippy (Rust 1.95+), a C++ compiler, and
# clang + libclang-dev (RocksDB's C++ is built from source; its Rust bindings
# are generated with libclang).
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo not found: install Rust 1.95 or newer (https://rustup.rs) and run again."
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            say "adding the Rust component $component"
            rustup component add "$component"
        else
            say "cargo $component is missing and there is no rustup to add it."
            exit 1
        fi
    fi
done

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v clang >/dev/null 2>&1 || installed clang || missing+=(clang)
installed libclang-dev || missing+=(libclang-dev)
# End-to-end SMTP tests drive the server with swaks (a real third-party client).
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
# swaks speaks STARTTLS through these Perl modules (only "recommended" by
# its package, so --no-install-recommends leaves them out).
perl -MNet::SSLeay -MIO::Socket::SSL -e 1 >/dev/null 2>&1 ||
    missing+=(libnet-ssleay-perl libio-socket-ssl-perl)
# The virus-scanning tests start ClamAV's daemon with their own config and
# signature file (no freshclam, no public database).
[ -x /usr/sbin/clamd ] || installed clamav-daemon || missing+=(clamav-daemon)
# A C/C++ compiler cache: RocksDB's C++ build (many minutes on two cores) is
# redone whenever a dependency change alters librocksdb-sys's build hash;
# with ccache that is a cache hit. test.sh and demo.sh use it when present.
command -v ccache >/dev/null 2>&1 || missing+=(ccache)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]}, and this is not a Debian/Ubuntu system: install them and run again."
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
