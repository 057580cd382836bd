#!/usr/bin/env python3
"""A recording SMTP server used as the upstream in Postern's integration tests.

Standard library only. Every accepted message is written to DIR as
    msg-<seq>.eml   the exact message bytes (dot-unstuffed for DATA, raw chunks for BDAT)
    msg-<seq>.json  the envelope (written after the .eml, both atomically: tmp + rename)
and every connection's transcript is appended to DIR/transcript.log.

Prints "READY <port>" on stdout once listening. Exits 0 on SIGTERM/SIGINT.
"""

import argparse
import json
import os
import re
import secrets
import signal
import socket
import socketserver
import ssl
import sys
import threading

MAX_LINE = 64 * 1024


class Config:
    def __init__(self, args):
        self.dir = args.dir
        self.hostname = args.hostname
        self.size = args.size
        self.chunking = not args.no_chunking
        self.dsn = not args.no_dsn
        self.smtputf8 = not args.no_smtputf8
        self.eightbit = not args.no_8bitmime
        self.pipelining = not args.no_pipelining
        self.drop_after_rcpt = args.drop_after_rcpt
        self.close_after_rcpt = args.close_after_rcpt
        self.greeting_code = args.greeting_code
        self.reject_rcpt = [parse_rule(r) for r in args.reject_rcpt]
        self.reject_mail = [parse_rule(r) for r in args.reject_mail]
        self.data_reply = args.data_reply
        self.tls_context = None
        self.vulnerable_starttls = args.vulnerable_starttls
        if args.tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls_cert, args.tls_key or args.tls_cert)
            if args.tls_max_version:
                ctx.maximum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[args.tls_max_version]
            self.tls_context = ctx
        self.seq = 0
        self.conn_seq = 0
        self.lock = threading.Lock()
        self.log_lock = threading.Lock()

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def next_conn(self):
        with self.lock:
            self.conn_seq += 1
            return self.conn_seq


def parse_rule(text):
    """REGEX=REPLY, where REPLY is a full reply line such as '550 5.1.1 No such user'."""
    m = re.match(r"^(.*)=(\d{3}(?: .*)?)$", text, re.S)
    if not m:
        raise argparse.ArgumentTypeError("expected REGEX=CODE TEXT, got %r" % text)
    return re.compile(m.group(1), re.I), m.group(2)


def b2s(b):
    return b.decode("utf-8", errors="replace")


def atomic_write(directory, name, data):
    tmp = os.path.join(directory, ".tmp-%s-%s" % (name, secrets.token_hex(4)))
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(directory, name))


class Disconnect(Exception):
    pass


class Conn:
    """Buffered reader/writer over a socket that can be swapped for TLS."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise Disconnect()
        self.buf += data

    def readline(self):
        """A command line: ends at LF (a preceding CR is stripped)."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > MAX_LINE:
                raise Disconnect()
            self._fill()

    def readline_crlf(self):
        """A DATA line: ends at CRLF only (bare CR / bare LF stay inside the line)."""
        start = 0
        while True:
            i = self.buf.find(b"\r\n", start)
            if i >= 0:
                line = bytes(self.buf[: i + 2])
                del self.buf[: i + 2]
                return line
            start = max(0, len(self.buf) - 1)
            self._fill()

    def readexact(self, n):
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def send(self, data):
        self.sock.sendall(data)


class Handler(socketserver.BaseRequestHandler):
    def setup(self):
        self.cfg = self.server.cfg
        self.cid = self.cfg.next_conn()
        self.conn = Conn(self.request)
        self.helo = None
        self.tls = False
        self.reset()

    def finish(self):
        try:
            self.request.close()
        except OSError:
            pass

    def reset(self):
        self.mail_from = None
        self.mail_params = []
        self.rcpts = []
        self.rcpt_params = []
        self.bdat = None  # bytearray while a BDAT transaction is open
        self.bdat_failed = False

    def log(self, direction, data):
        line = "%d %s %s\n" % (self.cid, direction, b2s(data).rstrip("\r\n"))
        with self.cfg.log_lock:
            with open(os.path.join(self.cfg.dir, "transcript.log"), "a", encoding="utf-8") as f:
                f.write(line)

    def reply(self, text):
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.log("S:", text)
        self.conn.send(text + b"\r\n")

    def handle(self):
        try:
            self.session()
        except (Disconnect, ConnectionError, ssl.SSLError, OSError):
            self.log("--", b"disconnected")

    def ehlo_lines(self):
        ext = []
        if self.cfg.pipelining:
            ext.append("PIPELINING")
        ext.append("SIZE %d" % self.cfg.size)
        if self.cfg.eightbit:
            ext.append("8BITMIME")
        if self.cfg.smtputf8:
            ext.append("SMTPUTF8")
        if self.cfg.chunking:
            ext.append("CHUNKING")
        if self.cfg.dsn:
            ext.append("DSN")
        ext.append("ENHANCEDSTATUSCODES")
        if self.cfg.tls_context is not None and not self.tls:
            ext.append("STARTTLS")
        return ext

    def session(self):
        self.log("--", ("connect from %s:%d" % self.client_address).encode())
        code = self.cfg.greeting_code
        if code == 421:
            self.reply("421 4.3.2 %s Service not available" % self.cfg.hostname)
            return
        if code == 554:
            self.reply("554 5.3.2 %s No SMTP service here" % self.cfg.hostname)
            while True:
                line = self.conn.readline()
                self.log("C:", line)
                if line.strip().upper() == b"QUIT":
                    self.reply("221 2.0.0 Bye")
                    return
                self.reply("503 5.5.1 No SMTP service here")
        self.reply("220 %s ESMTP recording sink" % self.cfg.hostname)
        while True:
            line = self.conn.readline()
            self.log("C:", line)
            cmdline = line.rstrip(b"\r\n")
            verb, _, arg = cmdline.partition(b" ")
            verb = verb.upper()
            h = getattr(self, "cmd_" + b2s(verb), None) if verb.isalpha() else None
            if h is None:
                self.reply("502 5.5.2 Command not recognized")
                continue
            if h(arg) == "quit":
                return

    # --- commands -------------------------------------------------------------

    def cmd_HELO(self, arg):
        self.helo = b2s(arg.strip())
        self.reset()
        self.reply("250 %s" % self.cfg.hostname)

    def cmd_EHLO(self, arg):
        self.helo = b2s(arg.strip())
        self.reset()
        lines = [self.cfg.hostname] + self.ehlo_lines()
        out = ["250-%s" % l for l in lines[:-1]] + ["250 %s" % lines[-1]]
        self.log("S:", "\n".join(out).encode())
        self.conn.send(("\r\n".join(out) + "\r\n").encode())

    def cmd_STARTTLS(self, arg):
        if self.cfg.tls_context is None or self.tls:
            self.reply("502 5.5.1 STARTTLS not available")
            return
        self.reply("220 2.0.0 Ready to start TLS")
        pending = bytes(self.conn.buf)
        self.conn.buf.clear()  # discard anything pipelined after STARTTLS
        self.request = self.cfg.tls_context.wrap_socket(self.request, server_side=True)
        self.conn = Conn(self.request)
        if self.cfg.vulnerable_starttls:
            self.conn.buf += pending  # negative control for the injection probe
        self.tls = True
        self.helo = None
        self.reset()

    def cmd_NOOP(self, arg):
        self.reply("250 2.0.0 Ok")

    def cmd_RSET(self, arg):
        self.reset()
        self.reply("250 2.0.0 Ok")

    def cmd_QUIT(self, arg):
        self.reply("221 2.0.0 Bye")
        return "quit"

    def cmd_VRFY(self, arg):
        self.reply("252 2.0.0 Cannot VRFY user")

    def parse_path(self, arg, keyword):
        m = re.match(rb"^" + keyword + rb":\s*<([^>]*)>(.*)$", arg, re.I | re.S)
        if not m:
            return None, None
        params = [b2s(p) for p in m.group(2).split()]
        return b2s(m.group(1)), params

    def unsupported_param(self, params):
        for p in params:
            key = p.split("=", 1)[0].upper()
            if key == "SMTPUTF8" and not self.cfg.smtputf8:
                return p
            if key == "BODY" and not self.cfg.eightbit and p.upper() != "BODY=7BIT":
                return p
            if key in ("RET", "ENVID", "NOTIFY", "ORCPT") and not self.cfg.dsn:
                return p
        return None

    def cmd_MAIL(self, arg):
        if self.helo is None:
            self.reply("503 5.5.1 Error: send HELO/EHLO first")
            return
        if self.mail_from is not None:
            self.reply("503 5.5.1 Error: nested MAIL command")
            return
        addr, params = self.parse_path(arg, b"FROM")
        if addr is None:
            self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        bad = self.unsupported_param(params)
        if bad:
            self.reply("555 5.5.4 Unsupported option: %s" % bad)
            return
        for p in params:
            if p.upper().startswith("SIZE="):
                try:
                    if int(p[5:]) > self.cfg.size:
                        self.reply("552 5.3.4 Message size exceeds fixed limit")
                        return
                except ValueError:
                    self.reply("501 5.5.4 Bad SIZE parameter")
                    return
        for rx, rep in self.cfg.reject_mail:
            if rx.search(addr):
                self.reply(rep)
                return
        self.mail_from = addr
        self.mail_params = params
        self.reply("250 2.1.0 Ok")

    def cmd_RCPT(self, arg):
        if self.mail_from is None:
            self.reply("503 5.5.1 Error: need MAIL command")
            return
        addr, params = self.parse_path(arg, b"TO")
        if addr is None:
            self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        bad = self.unsupported_param(params)
        if bad:
            self.reply("555 5.5.4 Unsupported option: %s" % bad)
            return
        for rx, rep in self.cfg.reject_rcpt:
            if rx.search(addr):
                self.reply(rep)
                return
        self.rcpts.append(addr)
        self.rcpt_params.append(params)
        self.reply("250 2.1.5 Ok")
        if self.cfg.close_after_rcpt:
            self.log("--", b"closing the connection after RCPT (--close-after-rcpt)")
            try:
                self.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            raise Disconnect()

    def cmd_DATA(self, arg):
        if self.cfg.drop_after_rcpt and self.mail_from is not None:
            self.log("--", b"dropping connection at DATA (--drop-after-rcpt)")
            raise Disconnect()
        if self.mail_from is None:
            self.reply("503 5.5.1 Error: need MAIL command")
            return
        if not self.rcpts:
            self.reply("554 5.5.1 Error: no valid recipients")
            return
        if self.bdat is not None:
            self.reply("503 5.5.1 Error: DATA after BDAT")
            return
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        body = bytearray()
        lines = 0
        while True:
            line = self.conn.readline_crlf()
            if line == b".\r\n":
                break
            if line.startswith(b"."):
                line = line[1:]
            body += line
            lines += 1
        self.log("C:", b"<%d bytes, %d lines of DATA>" % (len(body), lines))
        self.finish_message(bytes(body), "DATA")

    def cmd_BDAT(self, arg):
        parts = arg.split()
        if not self.cfg.chunking:
            self.reply("502 5.5.1 BDAT not supported")
            return
        if not parts or not parts[0].isdigit() or len(parts) > 2 or (
            len(parts) == 2 and parts[1].upper() != b"LAST"
        ):
            self.reply("501 5.5.4 Syntax: BDAT size [LAST]")
            return
        n = int(parts[0])
        last = len(parts) == 2
        if self.cfg.drop_after_rcpt and self.mail_from is not None:
            self.log("--", b"dropping connection at BDAT (--drop-after-rcpt)")
            raise Disconnect()
        chunk = self.conn.readexact(n)
        self.log("C:", b"<%d bytes of BDAT>" % n)
        if self.mail_from is None or not self.rcpts:
            self.reply("503 5.5.1 Error: need MAIL and RCPT before BDAT")
            return
        if self.bdat is None:
            self.bdat = bytearray()
        self.bdat += chunk
        if last:
            self.finish_message(bytes(self.bdat), "BDAT")
        else:
            self.reply("250 2.0.0 %d octets received" % n)

    def finish_message(self, body, via):
        if self.cfg.data_reply:
            self.reply(self.cfg.data_reply)
            self.reset()
            return
        seq = self.cfg.next_seq()
        queue_id = secrets.token_hex(5).upper()
        meta = {
            "seq": seq,
            "queue_id": queue_id,
            "mail_from": self.mail_from,
            "mail_params": self.mail_params,
            "rcpts": self.rcpts,
            "rcpt_params": self.rcpt_params,
            "helo": self.helo,
            "via": via,
            "tls": self.tls,
            "tls_version": self.request.version() if self.tls else None,
            "size": len(body),
            "connection": self.cid,
            "client": "%s:%d" % self.client_address,
        }
        name = "msg-%06d" % seq
        atomic_write(self.cfg.dir, name + ".eml", body)
        atomic_write(self.cfg.dir, name + ".json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        self.reply("250 2.0.0 Ok: queued as %s" % queue_id)
        self.reset()


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--hostname", default="sink.test")
    ap.add_argument("--size", type=int, default=52428800)
    ap.add_argument("--reject-rcpt", action="append", default=[], metavar="REGEX=REPLY",
                    help="e.g. 'bad@=550 5.1.1 No such user'")
    ap.add_argument("--reject-mail", action="append", default=[], metavar="REGEX=REPLY")
    ap.add_argument("--data-reply", default=None,
                    help="final reply to DATA/BDAT LAST instead of accepting (nothing recorded)")
    ap.add_argument("--no-chunking", action="store_true")
    ap.add_argument("--no-dsn", action="store_true")
    ap.add_argument("--no-smtputf8", action="store_true")
    ap.add_argument("--no-8bitmime", action="store_true")
    ap.add_argument("--no-pipelining", action="store_true")
    ap.add_argument("--drop-after-rcpt", action="store_true",
                    help="close the connection when DATA/BDAT arrives")
    ap.add_argument("--close-after-rcpt", action="store_true",
                    help="close the connection right after replying 250 to RCPT")
    ap.add_argument("--greeting-code", type=int, choices=[220, 421, 554], default=220)
    ap.add_argument("--tls-cert", default=None, help="advertise STARTTLS with this cert (PEM)")
    ap.add_argument("--tls-key", default=None)
    ap.add_argument("--tls-max-version", default=None, choices=["1.2", "1.3"], help="the newest TLS version to negotiate")
    ap.add_argument("--vulnerable-starttls", action="store_true",
                    help="keep plaintext pipelined after STARTTLS (test-the-test only)")
    args = ap.parse_args()

    os.makedirs(args.dir, exist_ok=True)
    cfg = Config(args)
    server = Server((args.host, args.port), Handler)
    server.cfg = cfg

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    port = server.server_address[1]
    sys.stdout.write("READY %d\n" % port)
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
