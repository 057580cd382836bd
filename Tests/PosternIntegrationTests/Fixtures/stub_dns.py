#!/usr/bin/env python3
"""A tiny authoritative DNS server for tests: TXT, A, AAAA and PTR records from a file.

    stub_dns.py ADDRESS PORT RECORDS [TTL]

ADDRESS "auto" picks a free address 127.53.X.Y (port 53 then needs root). RECORDS holds one
record a line, "name<TAB>text": a TXT record (split into 255-octet strings as needed), or
"name<TAB>TYPE<TAB>value" with TYPE one of A, AAAA, PTR (value: an address, a host name). A query
for a listed name gets its TXT records (other types: an empty answer); a parent of a listed
name (an empty non-terminal such as example.test under _dmarc.example.test) gets an empty
answer; any other name gets NXDOMAIN. UDP answers over 512 octets are truncated (TC) so the
resolver asks again over TCP, which is served too. Prints "READY ADDRESS PORT" once bound;
exits on SIGTERM. Engines that read /etc/resolv.conf (opendkim-testmsg, OpenDMARC) are pointed
at it from a private mount namespace (see Harness/MilterEngines.swift)."""
import random
import signal
import socket
import struct
import sys
import threading

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

address, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
# Optional 4th argument: the TTL of every record (default 60; 0: nothing is cached).
ttl = int(sys.argv[4]) if len(sys.argv) > 4 else 60
TYPES = {"A": 1, "PTR": 12, "TXT": 16, "AAAA": 28}
records = {}
with open(path, encoding="utf-8") as f:
    for line in f:
        line = line.rstrip("\r\n")
        if not line.strip() or line.startswith("#"):
            continue
        name, text = line.split("\t", 1)
        rtype = 16
        if "\t" in text and text.split("\t", 1)[0] in TYPES:
            kind, value = text.split("\t", 1)
            rtype, text = TYPES[kind], value
        records.setdefault(name.strip().rstrip(".").lower(), []).append((rtype, text))


def rdata(rtype, text):
    if rtype == 1:
        return socket.inet_pton(socket.AF_INET, text)
    if rtype == 28:
        return socket.inet_pton(socket.AF_INET6, text)
    if rtype == 12:
        return b"".join(bytes([len(label)]) + label.encode() for label in text.rstrip(".").split(".")) + b"\0"
    data = text.encode()
    chunks = [data[j:j + 255] for j in range(0, len(data), 255)] or [b""]
    return b"".join(bytes([len(c)]) + c for c in chunks)


def answer(query, limit=None):
    if len(query) < 17:
        return None
    qid, flags, qdcount = struct.unpack(">HHH", query[:6])
    if qdcount != 1:
        return None
    i, labels = 12, []
    while i < len(query) and query[i] != 0:
        n = query[i]
        labels.append(query[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    if i + 5 > len(query):
        return None
    qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
    question = query[12:i + 5]
    name = ".".join(labels).lower()
    rd = flags & 0x0100
    rrs = []
    for rtype, text in records.get(name, []):
        if qtype not in (rtype, 255):
            continue
        rrs.append(b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, ttl, len(rdata(rtype, text))) + rdata(rtype, text))
    exists = name in records or any(k.endswith("." + name) for k in records)
    rcode = 0 if exists else 3
    body = b"".join(rrs)
    if limit is not None and 12 + len(question) + len(body) > limit:
        return struct.pack(">HHHHHH", qid, 0x8600 | rd | rcode, 1, 0, 0, 0) + question
    return struct.pack(">HHHHHH", qid, 0x8400 | rd | rcode, 1, len(rrs), 0, 0) + question + body


def serve_udp(sock):
    while True:
        data, peer = sock.recvfrom(4096)
        reply = answer(data, limit=512)
        if reply:
            sock.sendto(reply, peer)


def serve_tcp_client(conn):
    with conn:
        try:
            while True:
                head = conn.recv(2)
                if len(head) < 2:
                    return
                n = struct.unpack(">H", head)[0]
                data = b""
                while len(data) < n:
                    chunk = conn.recv(n - len(data))
                    if not chunk:
                        return
                    data += chunk
                reply = answer(data)
                if reply:
                    conn.sendall(struct.pack(">H", len(reply)) + reply)
        except OSError:
            return


def serve_tcp(sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_client, args=(conn,), daemon=True).start()


def bind(addr):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        udp.bind((addr, port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((addr, port))
        tcp.listen(16)
        return udp, tcp
    except OSError:
        udp.close()
        tcp.close()
        raise


if address == "auto":
    for attempt in range(50):
        candidate = "127.53.%d.%d" % (random.randint(0, 255), random.randint(1, 254))
        try:
            udp, tcp = bind(candidate)
            address = candidate
            break
        except OSError as e:
            error = e
    else:
        sys.exit("stub_dns: no free 127.53.x.y address for port %d: %s" % (port, error))
else:
    udp, tcp = bind(address)

threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
print("READY", address, port, flush=True)
serve_udp(udp)
