#!/usr/bin/env python3
"""STARTTLS command-injection probe (CVE-2011-0411 class).

    starttls_injection.py --port P [--host H] [--ehlo NAME]

Over one TCP connection: read the greeting, EHLO, then send "STARTTLS\\r\\nNOOP\\r\\n" in ONE
write, read the STARTTLS reply, do the TLS handshake (no verification), send "EHLO" inside TLS
and collect every reply that arrives within a quiet period. A safe server discards the
plaintext NOOP: the only reply inside TLS is the EHLO one. Prints one JSON object:
  {"greeting", "ehlo", "starttls_reply", "handshake": "ok"|"error: …",
   "pre_command_data": [lines received inside TLS before we sent anything],
   "post_tls_replies": [[lines of reply 1], …], "injected_noop_answered": bool}
Exit status 0 always (unless the probe itself crashes); the caller judges the result.
"""

import argparse
import json
import socket
import ssl
import time


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self, timeout):
        self.sock.settimeout(timeout)
        while b"\n" not in self.buf:
            data = self.sock.recv(4096)
            if not data:
                raise EOFError("connection closed")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def reply(self, timeout):
        lines = []
        while True:
            l = self.line(timeout)
            lines.append(l)
            if len(l) < 4 or l[3] != "-":
                return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ehlo", default="injector.test")
    ap.add_argument("--quiet", type=float, default=1.5)
    args = ap.parse_args()
    out = {"handshake": None, "pre_command_data": [], "post_tls_replies": [],
           "injected_noop_answered": False}

    sock = socket.create_connection((args.host, args.port), timeout=10)
    r = Reader(sock)
    out["greeting"] = r.reply(10)
    sock.sendall(("EHLO %s\r\n" % args.ehlo).encode())
    out["ehlo"] = r.reply(10)
    sock.sendall(b"STARTTLS\r\nNOOP\r\n")  # one write: the NOOP is the injected command
    out["starttls_reply"] = r.reply(10)
    if not out["starttls_reply"][-1].startswith("220"):
        print(json.dumps(out))
        return
    if r.buf:
        # plaintext bytes after the 220 (a reply to the NOOP before TLS)
        out["pre_command_data"].append("plaintext after 220: %r" % r.buf)
        out["injected_noop_answered"] = True
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        tls = ctx.wrap_socket(sock, server_hostname="localhost")
        out["handshake"] = "ok"
        out["tls_version"] = tls.version()
    except (ssl.SSLError, OSError) as e:
        out["handshake"] = "error: %r" % (e,)
        print(json.dumps(out))
        return
    t = Reader(tls)
    # Anything that arrives before we send a command is an answer to the injected NOOP.
    try:
        while True:
            out["pre_command_data"].append(t.line(args.quiet))
            out["injected_noop_answered"] = True
    except (socket.timeout, ssl.SSLError, EOFError, OSError):
        pass
    try:
        tls.sendall(("EHLO %s\r\n" % args.ehlo).encode())
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                out["post_tls_replies"].append(t.reply(args.quiet))
            except (socket.timeout, ssl.SSLError, EOFError, OSError):
                break
        tls.sendall(b"QUIT\r\n")
        try:
            out["quit_reply"] = t.reply(3)
        except (socket.timeout, ssl.SSLError, EOFError, OSError):
            pass
    except OSError as e:
        out["error"] = repr(e)
    # The EHLO reply is multi-line (250-name ...); a NOOP reply would be an extra single line.
    replies = out["post_tls_replies"]
    if len(replies) != 1 or not replies[0][0].startswith("250"):
        out["injected_noop_answered"] = out["injected_noop_answered"] or len(replies) > 1
    print(json.dumps(out))


if __name__ == "__main__":
    main()
