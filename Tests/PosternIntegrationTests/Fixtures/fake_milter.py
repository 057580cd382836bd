#!/usr/bin/env python3
"""A scriptable milter FILTER (the libmilter side of the Sendmail milter protocol, v6) for tests.

Standard library only. Listens on 127.0.0.1:PORT, serves many MTA connections at once (one
thread each); every connection is one milter session: OPTNEG, then events until QUIT or close.
Prints "LISTENING <port>" on stdout (flushed) once ready. Exits 0 on SIGTERM/SIGINT.

    fake_milter.py [--host 127.0.0.1] [--port 0] [--script FILE | --script-json TEXT] [--record FILE]

A Swift twin with the same behaviour lives in Tests/PosternEnginesTests/FakeMilter.swift.

SCRIPT FORMAT (JSON object; every key optional; {} is a well-behaved filter that continues everything)
-----------------------------------------------------------------------------------------------
"negotiate": {                      the reply to OPTNEG
    "version":  6,                  default: min(offered, 6). Anything may be sent (7 = too new).
    "actions":  511,                SMFIF_* asked for; default 0x1FF & offered (libmilter-like)
    "protocol": 2097152,            SMFIP_* returned, sent AS IS (may hold bits not offered, like
                                    rspamd's 0xFF080 = every NR bit 0x1000..0x80000 plus NR_HDR 0x80).
                                    Default: offered & SKIP (0x400), i.e. "send me every event,
                                    wait for every reply", which is what a plain libmilter filter gives.
    "macros":   {"1": "{tls_version} {cipher}", "5": "i"}
                                    SMFIM_* stage number -> macro names (secondary negotiation)
}
"replies": {LETTER: REPLY, ...}     per command C H M R T L N B E U; default "continue".
    REPLY is one of
      "continue" | "accept" | "reject" | "tempfail" | "discard" | "skip" | "shutdown"
      | "conn_fail"                         (SMFIR_CONN_FAIL 'f'; Postfix does not know it)
      | "progress_then_continue"            p every progress_interval s, 3 times, then c
      | "progress_then_continue:N"          ... N times
      | "reply:550 5.7.1 text"              SMFIR_REPLYCODE, sent verbatim (multi-line: "550-a\\r\\n550 b")
      | "quarantine:reason"                 SMFIR_QUARANTINE; at E it is followed by "continue"
                                            unless the E reply is itself a quarantine (then c follows)
      | {"if_body_contains": "GTUBE", "then": REPLY, "else": REPLY}
      | {"if_header_present": "X-Name", "then": REPLY, "else": REPLY}      (name case-insensitive)
      | {"if_rcpt_equals": "<a@b.example>", "then": REPLY, "else": REPLY}
                                            at R: this RCPT's address; later: any RCPT of the message.
                                            then/else default "continue" and may nest conditions.
    When the returned protocol has the NR flag for that command, no reply is sent (as a filter
    that negotiated "no reply" does), unless "reply_despite_nr": true (a misbehaving filter).
"progress_interval": 0.2
"eom_actions": [ ... ]              modifications sent in order at E, before the final E reply:
    {"add_header": [name, value]}               'h'
    {"insert_header": [index, name, value]}     'i'
    {"change_header": [index, name, value]}     'm' ("" deletes)
    {"replace_body": "text"}                    'b' packets of at most 65535 octets each
    {"replace_body": ["text", repeat]}          the text repeated (for large bodies)
    {"add_rcpt": "<x@y>"}                       '+'
    {"add_rcpt_par": ["<x@y>", "NOTIFY=NEVER"]} '2'
    {"del_rcpt": "<x@y>"}                       '-'
    {"change_from": ["<a@b>", "RET=HDRS"]}      'e' (one element: no ESMTP args)
    {"quarantine": "reason"}                    'q'
    {"add_header_if_seen": [name, seen]}        'h' name: "yes" or "no" (was header `seen` among
                                                the headers this filter received?)
    Values are sent verbatim: with HDR_LEADSPC negotiated, write the leading space yourself
    (add_header_if_seen adds it for you). In any string value, these are substituted:
      $header:Name  first value seen for that header (as received; Name is letters, digits, - _)
      $macro:{i} / $macro:i  the newest value of that macro over all stages so far
      $mail  the MAIL address   $rcpts  RCPT addresses, comma-separated   $helo   $client   $conn
Faults (per connection; limited to some connections with "faults_on": [1, 3], 1-based):
    "never_answer_at": "E"      from that command on: read and record everything, reply nothing
    "close_at": "B"             close the socket when that command arrives (recorded first)
    "garbage_at": "M"           instead of the reply, send non-protocol bytes:
    "garbage_kind": "frame"     "frame" (default): a whole packet with code 0x01 and 16 random
                                octets; "random": 64 random octets; "text": "HTTP/1.1 400 Bad Request\\r\\n\\r\\n"
    "oversize_at": "E"          instead of the reply, send an oversize packet:
    "oversize_kind": "header"   "header" (default): only a length of 2^31-1 (0x7FFFFFFF) and one
                                code octet, then silence; "packet": a real 16 MiB packet, code 'b'
                                at E (followed by the E reply), 'O' at O, 'y' otherwise (it is the reply)
    "unoffered_actions": true   OPTNEG reply asks for actions 0x3FF (0x1FF|0x200): more than offered
    "slow": {"E": 3.0}          sleep that many seconds before replying to that command (each time)
    "max_packet": 65535         like libmilter: a packet announcing more data is recorded with
                                "too_big": true and the connection is closed (SMFIC_TOOBIG)
    "fault": "never_answer", "at": "E"   is accepted as a spelling of "never_answer_at": "E"
                                (likewise close / garbage / oversize)

RECORDING (--record FILE): JSON lines, appended and flushed. One line per packet received,
written on receipt (before any reply or "slow" sleep):
    {"conn": N, "seq": n, "cmd": "L", "fields": ["Subject", "hi"], "size": 12, "time": ...}
and, after the fake answered a packet, one line without "cmd" naming what it sent:
    {"conn": N, "seq": n, "sent": ["h", "m", "c"], "time": ...}     (same conn and seq)
  fields: C [host, family, port, address] (family "4" "6" "L" "U"); H [helo]; M/R the argv;
  L [name, value] exactly as received (leading space visible); U [line]; O [version, actions,
  protocol] as decimal strings; D: "for": the stage's command letter and "macros": {name: value};
  B: "data": the chunk (UTF-8, invalid octets replaced) and "size"; T N E A Q K: [].
  Extra keys: "unwanted": true when the MTA sent an event this filter excluded with a NO* flag;
  "too_big": true (see max_packet); "closed": true (close_at). In "sent" lines: the codes of
  the packets sent, modifications included; "?" stands for garbage or oversize bytes.
  When the MTA closes (or resets) the connection, a last line {"conn": N, "seq": n,
  "closed_by_mta": "Closed" | "ConnectionResetError" | ...} is written (not after QUIT: then
  the fake closes the connection itself, as libmilter does).
"""

import argparse
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time

SKIP = 0x400
HDR_LEADSPC = 0x100000
NO_FLAG = {"C": 0x1, "H": 0x2, "M": 0x4, "R": 0x8, "B": 0x10, "L": 0x20, "N": 0x40, "U": 0x100, "T": 0x200}
NR_FLAG = {"C": 0x1000, "H": 0x2000, "M": 0x4000, "R": 0x8000, "T": 0x10000, "U": 0x20000, "N": 0x40000,
           "B": 0x80000, "L": 0x80}
SIMPLE = {"continue": b"c", "accept": b"a", "reject": b"r", "tempfail": b"t", "discard": b"d",
          "skip": b"s", "shutdown": b"4", "conn_fail": b"f"}
NO_REPLY = set("ADQK")  # macro, abort, quit, quit-new-connection
CHUNK = 65535
# $header:Name (letters, digits, - and _), $macro:{name} or $macro:name, $mail $rcpts $helo $client $conn
REFERENCE = re.compile(r"\$(header|macro):(\{[^}\s]*\}|[A-Za-z0-9_-]+)|\$(mail|rcpts|helo|client|conn)\b")


def z(text):
    return text.encode("utf-8") + b"\0"


def packet(code, data=b""):
    return (len(data) + 1).to_bytes(4, "big") + code + data


def split_strings(data):
    parts = data.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "replace") for p in parts]


class Script:
    def __init__(self, obj):
        self.raw = obj
        self.negotiate = obj.get("negotiate", {})
        self.replies = obj.get("replies", {})
        self.eom_actions = obj.get("eom_actions", [])
        self.progress_interval = float(obj.get("progress_interval", 0.2))
        self.reply_despite_nr = bool(obj.get("reply_despite_nr", False))
        self.faults_on = obj.get("faults_on")
        self.never_answer_at = obj.get("never_answer_at")
        self.close_at = obj.get("close_at")
        self.garbage_at = obj.get("garbage_at")
        self.garbage_kind = obj.get("garbage_kind", "frame")
        self.oversize_at = obj.get("oversize_at")
        self.oversize_kind = obj.get("oversize_kind", "header")
        self.unoffered_actions = bool(obj.get("unoffered_actions", False))
        self.slow = {k: float(v) for k, v in obj.get("slow", {}).items()}
        self.max_packet = int(obj.get("max_packet", CHUNK))
        fault = obj.get("fault")
        if fault:
            at = obj.get("at", "E")
            key = {"never_answer": "never_answer_at", "close": "close_at", "garbage": "garbage_at",
                   "oversize": "oversize_at"}.get(fault)
            if key is None:
                raise SystemExit("unknown fault %r" % fault)
            setattr(self, key, at)


class Recorder:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8") if path else None

    def write(self, entry):
        if not self.file:
            return
        with self.lock:
            self.file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self.file.flush()


class Closed(Exception):
    pass


class Session:
    def __init__(self, sock, conn, script, recorder):
        self.sock = sock
        self.conn = conn
        self.script = script
        self.recorder = recorder
        self.seq = 0
        faults_on = script.faults_on
        self.faulty = faults_on is None or conn in faults_on
        self.silent = False
        self.offered_actions = 0
        self.offered_protocol = 0
        self.protocol = 0
        self.macros = {}  # stage letter -> {name: value}, the latest D packet for each
        self.connect = []
        self.helo = ""
        self.reset_message()

    def reset_message(self):
        self.mail = []
        self.rcpts = []
        self.headers = []
        self.body = bytearray()
        self.current_rcpt = None

    # I/O
    def read_exact(self, n):
        chunks = []
        while n > 0:
            data = self.sock.recv(min(n, 1 << 20))
            if not data:
                raise Closed()
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def send(self, data, sent, code=None):
        self.sock.sendall(data)
        sent.append(code if code is not None else chr(data[4]))

    # Main loop
    def run(self):
        try:
            while True:
                header = self.read_exact(4)
                length = int.from_bytes(header, "big")
                if length < 1:
                    self.record({"cmd": "", "fields": [], "size": 0, "bad_length": True})
                    return
                if length - 1 > self.script.max_packet:
                    code = self.read_exact(1)
                    self.record({"cmd": code.decode("latin-1"), "fields": [], "size": length - 1, "too_big": True})
                    return
                body = self.read_exact(length)
                if not self.handle(chr(body[0]), body[1:]):
                    return
        except (Closed, ConnectionError, OSError) as error:
            # The MTA hung up (or reset): worth knowing when no QUIT came first.
            self.recorder.write({"conn": self.conn, "seq": self.seq, "closed_by_mta": type(error).__name__,
                                 "time": round(time.time(), 3)})
            return

    def record(self, entry):
        self.seq += 1
        entry = dict({"conn": self.conn, "seq": self.seq}, **entry)
        entry["time"] = round(time.time(), 3)
        self.recorder.write(entry)

    def decode(self, cmd, data):
        entry = {"cmd": cmd, "fields": [], "size": len(data)}
        if cmd == "O":
            if len(data) >= 12:
                entry["fields"] = [str(int.from_bytes(data[i:i + 4], "big")) for i in (0, 4, 8)]
        elif cmd == "D":
            entry["for"] = chr(data[0]) if data else ""
            strings = split_strings(data[1:])
            entry["macros"] = {strings[i]: strings[i + 1] if i + 1 < len(strings) else ""
                               for i in range(0, len(strings), 2)}
        elif cmd == "C":
            name_end = data.find(b"\0")
            host = data[:name_end].decode("utf-8", "replace")
            family = chr(data[name_end + 1]) if len(data) > name_end + 1 else ""
            fields = [host, family]
            if family != "U" and len(data) >= name_end + 4:
                port = int.from_bytes(data[name_end + 2:name_end + 4], "big")
                fields += [str(port)] + split_strings(data[name_end + 4:])
            entry["fields"] = fields
        elif cmd == "B":
            entry["data"] = data.decode("utf-8", "replace")
        elif cmd in "HMRLU":
            entry["fields"] = split_strings(data)
        elif data:
            entry["fields"] = [data.hex()]
        if cmd in NO_FLAG and self.protocol & NO_FLAG[cmd]:
            entry["unwanted"] = True
        return entry

    def handle(self, cmd, data):
        entry = self.decode(cmd, data)
        sent = []
        script = self.script
        faulty = self.faulty

        # Remember what was seen (for conditions and $references).
        if cmd != "R":
            self.current_rcpt = None
        if cmd == "D":
            self.macros[entry["for"]] = entry["macros"]
        elif cmd == "C":
            self.connect = entry["fields"]
        elif cmd == "H":
            self.helo = entry["fields"][0] if entry["fields"] else ""
        elif cmd == "M":
            self.reset_message()
            self.mail = entry["fields"]
        elif cmd == "R":
            self.current_rcpt = entry["fields"][0] if entry["fields"] else ""
            self.rcpts.append(self.current_rcpt)
        elif cmd == "L":
            f = entry["fields"] + ["", ""]
            self.headers.append((f[0], f[1]))
        elif cmd == "B":
            self.body += data

        closing = faulty and script.close_at == cmd
        if closing:
            entry["closed"] = True
        self.record(entry)  # on receipt, before any reply (or sleep)
        seq = self.seq
        if closing:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return False
        if faulty and script.never_answer_at == cmd:
            self.silent = True
        if self.silent or cmd in NO_REPLY:
            if cmd == "A":
                self.reset_message()
            elif cmd == "K":
                self.reset_message()
                self.macros = {}
            return cmd != "Q"
        try:
            if faulty and cmd in script.slow:
                time.sleep(script.slow[cmd])
            if faulty and script.garbage_at == cmd:
                self.send(self.garbage(), sent, "?")
            elif faulty and script.oversize_at == cmd:
                self.send_oversize(cmd, sent)
                if script.oversize_kind != "packet":
                    self.silent = True  # a length with nothing after it: nothing can follow
                elif cmd == "E":
                    self.reply(cmd, sent)  # the 16 MiB 'b' was a modification: the final reply follows
                    self.reset_message()
            elif cmd == "O":
                self.negotiate(data, sent)
            elif cmd == "E":
                for action in script.eom_actions:
                    for pkt in self.modification(action):
                        self.send(pkt, sent)
                self.reply(cmd, sent)
                self.reset_message()
            elif cmd in NR_FLAG and self.protocol & NR_FLAG[cmd] and not script.reply_despite_nr:
                pass
            else:
                self.reply(cmd, sent)
        finally:
            if sent:
                self.recorder.write({"conn": self.conn, "seq": seq, "sent": sent, "time": round(time.time(), 3)})
        return True

    # Replies
    def negotiate(self, data, sent):
        n = self.script.negotiate
        version = int.from_bytes(data[0:4], "big") if len(data) >= 4 else 6
        self.offered_actions = int.from_bytes(data[4:8], "big") if len(data) >= 8 else 0
        self.offered_protocol = int.from_bytes(data[8:12], "big") if len(data) >= 12 else 0
        reply_version = int(n["version"]) if "version" in n else min(version, 6)
        actions = int(n["actions"]) if "actions" in n else 0x1FF & self.offered_actions
        if self.faulty and self.script.unoffered_actions:
            actions = 0x3FF
        self.protocol = int(n["protocol"]) if "protocol" in n else self.offered_protocol & SKIP
        out = reply_version.to_bytes(4, "big") + actions.to_bytes(4, "big") + self.protocol.to_bytes(4, "big")
        for stage, names in sorted(n.get("macros", {}).items(), key=lambda kv: int(kv[0])):
            out += int(stage).to_bytes(4, "big") + z(names)
        self.send(packet(b"O", out), sent)

    def choose(self, reply):
        while isinstance(reply, dict):
            if "if_body_contains" in reply:
                hit = reply["if_body_contains"].encode("utf-8") in self.body
            elif "if_header_present" in reply:
                want = reply["if_header_present"].lower()
                hit = any(name.lower() == want for name, _ in self.headers)
            elif "if_rcpt_equals" in reply:
                want = reply["if_rcpt_equals"]
                # At RCPT: this recipient; at later stages: any recipient of the message.
                hit = self.current_rcpt == want if self.current_rcpt is not None else want in self.rcpts
            else:
                raise ValueError("unknown condition %r" % reply)
            reply = reply.get("then", "continue") if hit else reply.get("else", "continue")
        return reply

    def reply(self, cmd, sent):
        reply = self.choose(self.script.replies.get(cmd, "continue"))
        self.send_reply(reply, sent, final=(cmd == "E"))

    def send_reply(self, reply, sent, final=False):
        if reply in SIMPLE:
            self.send(packet(SIMPLE[reply]), sent)
        elif reply.startswith("progress_then_continue"):
            count = int(reply.split(":", 1)[1]) if ":" in reply else 3
            for _ in range(count):
                self.send(packet(b"p"), sent)
                time.sleep(self.script.progress_interval)
            self.send(packet(b"c"), sent)
        elif reply.startswith("reply:"):
            self.send(packet(b"y", z(reply[len("reply:"):])), sent)
        elif reply.startswith("quarantine:"):
            self.send(packet(b"q", z(reply[len("quarantine:"):])), sent)
            if final:  # quarantine is not final: something must follow
                self.send(packet(b"c"), sent)
        else:
            raise ValueError("unknown reply %r" % reply)

    def expand(self, value):
        """Substitutes $header:Name, $macro:name, $mail, $rcpts, $helo, $client, $conn."""
        if not isinstance(value, str):
            return value

        def sub(m):
            kind, arg = m.group(1) or m.group(3), m.group(2)
            if kind == "header":
                return next((v for name, v in self.headers if name.lower() == arg.lower()), "")
            if kind == "macro":
                bare = arg.strip("{}")
                for stage in "EBNLTRMHC":  # newest stage first, as smfi_getsymval looks
                    macros = self.macros.get(stage, {})
                    for key in (bare, "{" + bare + "}"):
                        if key in macros:
                            return macros[key]
                return ""
            return {"mail": self.mail[0] if self.mail else "", "rcpts": ",".join(self.rcpts), "helo": self.helo,
                    "client": self.connect[3] if len(self.connect) > 3 else "", "conn": str(self.conn)}[kind]

        return REFERENCE.sub(sub, value)

    def modification(self, action):
        (kind, arg), = action.items()
        e = self.expand
        if kind == "add_header":
            return [packet(b"h", z(e(arg[0])) + z(e(arg[1])))]
        if kind == "insert_header":
            return [packet(b"i", int(arg[0]).to_bytes(4, "big") + z(e(arg[1])) + z(e(arg[2])))]
        if kind == "change_header":
            return [packet(b"m", int(arg[0]).to_bytes(4, "big") + z(e(arg[1])) + z(e(arg[2])))]
        if kind == "replace_body":
            text, repeat = (arg, 1) if isinstance(arg, str) else (arg[0], int(arg[1]))
            body = e(text).encode("utf-8") * repeat
            return [packet(b"b", body[i:i + CHUNK]) for i in range(0, len(body), CHUNK)] or [packet(b"b")]
        if kind == "add_rcpt":
            return [packet(b"+", z(e(arg)))]
        if kind == "add_rcpt_par":
            return [packet(b"2", z(e(arg[0])) + z(e(arg[1])))]
        if kind == "del_rcpt":
            return [packet(b"-", z(e(arg)))]
        if kind == "change_from":
            args = [arg] if isinstance(arg, str) else arg
            return [packet(b"e", b"".join(z(e(a)) for a in args))]
        if kind == "quarantine":
            return [packet(b"q", z(e(arg)))]
        if kind == "add_header_if_seen":
            seen = any(name.lower() == arg[1].lower() for name, _ in self.headers)
            value = ("yes" if seen else "no")
            if self.protocol & HDR_LEADSPC:
                value = " " + value
            return [packet(b"h", z(arg[0]) + z(value))]
        raise ValueError("unknown eom action %r" % kind)

    def garbage(self):
        kind = self.script.garbage_kind
        if kind == "random":
            return os.urandom(64)
        if kind == "text":
            return b"HTTP/1.1 400 Bad Request\r\n\r\n"
        return packet(b"\x01", os.urandom(16))

    def send_oversize(self, cmd, sent):
        if self.script.oversize_kind == "packet":
            size = 16 << 20
            code = {"E": b"b", "O": b"O"}.get(cmd, b"y")
            self.sock.sendall((size + 1).to_bytes(4, "big") + code)
            block = b"x" * (1 << 20)
            for _ in range(16):
                self.sock.sendall(block)
        else:
            self.sock.sendall((0x7FFFFFFF).to_bytes(4, "big") + b"c")
        sent.append("?")


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        server = self.server
        with server.lock:
            server.conn_seq += 1
            conn = server.conn_seq
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Session(self.request, conn, server.script, server.recorder).run()


def main():
    ap = argparse.ArgumentParser(description="A scriptable milter filter for tests (see the file's header).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--script", default=None, help="JSON script file")
    ap.add_argument("--script-json", default=None, help="the JSON script inline")
    ap.add_argument("--record", default=None, help="append one JSON line per received packet")
    args = ap.parse_args()

    obj = {}
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            obj = json.load(f)
    elif args.script_json:
        obj = json.loads(args.script_json)

    server = Server((args.host, args.port), Handler)
    server.script = Script(obj)
    server.recorder = Recorder(args.record)
    server.lock = threading.Lock()
    server.conn_seq = 0

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    sys.stdout.write("LISTENING %d\n" % server.server_address[1])
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
