#!/usr/bin/env python3
"""The chaos run's recording upstream: an ESMTP server that journals every message it accepts.

Standard library only. A separate process, so that the harness can SIGKILL it at any moment
and start it again on the same port.

At the end of DATA it appends an "accept" record for the message (its X-Chaos-Id and
X-Chaos-Attempt headers, whether its body matches X-Chaos-Body-SHA256) to the journal,
fsyncs the journal, and only then answers 250. After the 250 has been written to the socket
it appends a "replied" record for the same (pid, seq): an "accept" with no "replied" is a
message this upstream has but may never have confirmed (it was killed, or the connection
broke, in between), so a retry of it is an explained duplicate. Refusals it makes up
(451) are journaled too ("tempfail"), without fsync.

Faults, drawn per reply from --seed:
  --slow-fraction F, --slow-max S  delay a reply (greeting, MAIL, RCPT, DATA, end of DATA)
                                   by up to S seconds, with probability F
  --tempfail-fraction F            answer 451 instead of 250 at the end of DATA (nothing is kept)
  --tempfail-command-fraction F    answer 451 to MAIL or RCPT
SIGUSR1 turns every fault off (the harness's drain phase); SIGUSR2 turns them back on.

Prints "READY <port>" on stdout once listening. SIGTERM exits at once (status 0).
"""

import argparse
import hashlib
import json
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time

MAX_LINE = 64 * 1024
MAX_SIZE = 50 * 1024 * 1024


class State:
    def __init__(self, args):
        self.args = args
        self.calm = args.calm
        self.random = random.Random(args.seed)
        self.lock = threading.Lock()
        self.seq = 0
        self.pid = os.getpid()
        self.journal = os.open(args.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def chance(self, fraction):
        if self.calm or fraction <= 0:
            return False
        with self.lock:
            return self.random.random() < fraction

    def delay(self):
        a = self.args
        if self.chance(a.slow_fraction):
            with self.lock:
                seconds = self.random.uniform(0.01, a.slow_max)
            time.sleep(seconds)

    def next_seq(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def append(self, record, sync):
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        # One write(2) on an O_APPEND descriptor: records of concurrent sessions never interleave.
        os.write(self.journal, line)
        if sync:
            os.fsync(self.journal)


def header_fields(message):
    """The header section's fields (name lowercased → last value) and the body after it."""
    end = message.find(b"\r\n\r\n")
    head, body = (message, b"") if end < 0 else (message[:end + 2], message[end + 4:])
    fields = {}
    for line in head.split(b"\r\n"):
        if b":" in line and not line[:1].isspace():
            name, _, value = line.partition(b":")
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return fields, body


class Handler(socketserver.StreamRequestHandler):
    def setup(self):
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reply(self, text, slow=True):
        if slow:
            self.server.state.delay()
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self):
        state = self.server.state
        try:
            self.reply("220 upstream.chaos.test ESMTP chaos recorder")
            mail = None
            rcpts = 0
            while True:
                line = self.rfile.readline(MAX_LINE)
                if not line:
                    return
                command = line.rstrip(b"\r\n").decode("latin-1")
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    mail, rcpts = None, 0
                    self.reply("250-upstream.chaos.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                               f"250-SIZE {MAX_SIZE}\r\n250 ENHANCEDSTATUSCODES", slow=False)
                elif verb == "HELO":
                    mail, rcpts = None, 0
                    self.reply("250 upstream.chaos.test", slow=False)
                elif verb == "MAIL":
                    if state.chance(state.args.tempfail_command_fraction):
                        state.append({"ev": "tempfail", "at": "mail", "pid": state.pid}, sync=False)
                        self.reply("451 4.3.0 chaos: MAIL deferred")
                        continue
                    mail, rcpts = command, 0
                    self.reply("250 2.1.0 Ok")
                elif verb == "RCPT":
                    if mail is None:
                        self.reply("503 5.5.1 MAIL first", slow=False)
                    elif state.chance(state.args.tempfail_command_fraction):
                        state.append({"ev": "tempfail", "at": "rcpt", "pid": state.pid}, sync=False)
                        self.reply("451 4.3.0 chaos: RCPT deferred")
                    else:
                        rcpts += 1
                        self.reply("250 2.1.5 Ok")
                elif verb == "DATA":
                    if mail is None or rcpts == 0:
                        self.reply("503 5.5.1 no valid recipients", slow=False)
                        continue
                    self.reply("354 End data with <CR><LF>.<CR><LF>")
                    message = self.read_data()
                    if message is None:
                        return
                    mail, rcpts = None, 0
                    self.end_of_data(message)
                elif verb == "RSET":
                    mail, rcpts = None, 0
                    self.reply("250 2.0.0 Ok", slow=False)
                elif verb == "NOOP":
                    self.reply("250 2.0.0 Ok", slow=False)
                elif verb == "QUIT":
                    self.reply("221 2.0.0 Bye", slow=False)
                    return
                else:
                    self.reply("502 5.5.2 Command not implemented", slow=False)
        except (OSError, ValueError):
            return

    def read_data(self):
        """The message, dot-unstuffed; None when the connection ends first."""
        lines = []
        while True:
            line = self.rfile.readline(MAX_LINE)
            if not line:
                return None
            if line == b".\r\n":
                return b"".join(lines)
            if line.startswith(b"."):
                line = line[1:]
            lines.append(line)

    def end_of_data(self, message):
        state = self.server.state
        fields, body = header_fields(message)
        if state.chance(state.args.tempfail_fraction):
            state.append({"ev": "tempfail", "at": "data", "pid": state.pid,
                          "id": fields.get("x-chaos-id"), "att": fields.get("x-chaos-attempt")}, sync=False)
            self.reply("451 4.3.0 chaos: message deferred")
            return
        expected = fields.get("x-chaos-body-sha256")
        seq = state.next_seq()
        record = {"ev": "accept", "pid": state.pid, "seq": seq, "id": fields.get("x-chaos-id"),
                  "att": fields.get("x-chaos-attempt"), "size": len(message),
                  "body_ok": expected is not None and hashlib.sha256(body).hexdigest() == expected,
                  "t": round(time.time(), 3)}
        state.append(record, sync=True)  # on disk before the 250
        self.reply(f"250 2.0.0 Ok: kept as {state.pid}.{seq}")
        state.append({"ev": "replied", "pid": state.pid, "seq": seq}, sync=False)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True  # back on the same port at once after a SIGKILL
    request_queue_size = 128


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--slow-fraction", type=float, default=0.0)
    parser.add_argument("--slow-max", type=float, default=1.0)
    parser.add_argument("--tempfail-fraction", type=float, default=0.0)
    parser.add_argument("--tempfail-command-fraction", type=float, default=0.0)
    parser.add_argument("--calm", action="store_true", help="start with every fault off")
    args = parser.parse_args()
    state = State(args)

    def calm(signum, frame):
        state.calm = signum == signal.SIGUSR1
    signal.signal(signal.SIGUSR1, calm)
    signal.signal(signal.SIGUSR2, calm)
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))

    server = Server(("127.0.0.1", args.port), Handler)
    server.state = state
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
