#!/usr/bin/env python3
"""A tiny authoritative DNS server on 127.0.0.1 (UDP) for the SMTP
benchmark's run with authentication checks on: SPF and DMARC records for
example.org (the benchmark's sender domain) and forward-confirmed reverse
DNS for 127.0.0.1; NXDOMAIN for everything else.

    python3 dns_zone.py PORT
"""
import socket
import struct
import sys

TXT, A, PTR = 16, 1, 12


def name(text):
    out = b""
    for label in text.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def txt(text):
    return bytes([len(text)]) + text.encode()


ZONE = {
    ("example.org", TXT): [txt("v=spf1 ip4:127.0.0.1 -all")],
    ("load.example.org", TXT): [txt("v=spf1 ip4:127.0.0.1 -all")],
    ("_dmarc.example.org", TXT): [txt("v=DMARC1; p=none")],
    ("load.example.org", A): [bytes([127, 0, 0, 1])],
    ("1.0.0.127.in-addr.arpa", PTR): [name("load.example.org")],
}
NAMES = {n for n, _ in ZONE}


def answer(query):
    at, labels = 12, []
    while query[at] != 0:
        length = query[at]
        labels.append(query[at + 1:at + 1 + length].decode("ascii", "replace").lower())
        at += 1 + length
    qtype = struct.unpack(">H", query[at + 1:at + 3])[0]
    end = at + 5
    qname = ".".join(labels)
    records = ZONE.get((qname, qtype), [])
    rcode = 0 if qname in NAMES else 3
    out = query[:2] + bytes([0x84 | (query[2] & 1), 0x80 | rcode])
    out += struct.pack(">HHHH", 1, len(records), 0, 0) + query[12:end]
    for rdata in records:
        out += b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, 60, len(rdata)) + rdata
    return out


def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", int(sys.argv[1])))
    while True:
        query, peer = sock.recvfrom(1500)
        try:
            sock.sendto(answer(query), peer)
        except (IndexError, struct.error):
            pass


if __name__ == "__main__":
    main()
