#!/usr/bin/env python3
"""Postern's chaos run: real binary, a recording upstream, MTA-like clients, faults; then an audit.

Standard library only. See Chaos/README.md. Exit status: 0 when the audit passes, 1 when it
fails (lost, phantom, unexplained duplicate, corrupted, refused, unfinished, a crash), 2 when
the run could not be set up. With --self-check, a short run against Postern's unsafe
early-ack switch comes first, and the whole run fails (status 3) unless that one is caught.
"""

import argparse
import collections
import hashlib
import heapq
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM = os.path.join(ROOT, "Chaos", "upstream.py")
SENDER_DOMAIN = "chaos.test"
RECIPIENT = "rcpt@upstream.chaos.test"


def log(text):
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class SetupError(Exception):
    pass


# MARK: - Processes

class Managed:
    """One process the harness starts, and starts again; stdout and stderr go to one log file
    (appended, one marker line per start). Stopped by its PID."""

    def __init__(self, name, workdir, env=None):
        self.name = name
        self.logpath = os.path.join(workdir, f"{name}.log")
        self.env = env
        self.process = None
        self.starts = 0

    def start(self, argv):
        self.starts += 1
        with open(self.logpath, "ab") as f:
            f.write(f"=== chaos: start {self.starts} at {time.strftime('%H:%M:%S')}: {' '.join(argv)}\n".encode())
            offset = f.tell()
            # Its own session: a Ctrl-C reaches the harness only, which then stops everything in order.
            self.process = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, start_new_session=True, cwd=ROOT)
        return offset

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def signal(self, signum):
        if self.alive():
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def kill(self):
        """SIGKILL, and reaps it."""
        if self.process is None:
            return None
        self.signal(signal.SIGKILL)
        return self.process.wait()

    def stop(self, grace=10.0):
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit status (None: killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.process.returncode

    def log_since(self, offset):
        with open(self.logpath, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def tail(self, lines=30):
        try:
            with open(self.logpath, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""


# MARK: - Messages and the clients' queue

class Attempt:
    __slots__ = ("id", "dot_sent", "outcome", "stage", "reply", "ambiguous")

    def __init__(self, attempt_id):
        self.id = attempt_id
        self.dot_sent = False
        self.outcome = None  # ack, tempfail, refused, error, dropped_mid_data, dropped_after_dot
        self.stage = None
        self.reply = None
        self.ambiguous = False  # the final dot went out and no reply to it was read


class Message:
    __slots__ = ("id", "seed", "size", "attempts", "acked", "refused", "gave_up")

    def __init__(self, index, seed, size):
        self.id = f"m{index:06d}"
        self.seed = seed
        self.size = size
        self.attempts = []
        self.acked = None  # the Attempt that got 250 after its final dot
        self.refused = None  # the 5xx that ended it
        self.gave_up = False

    def new_attempt(self):
        attempt = Attempt(f"{self.id}.a{len(self.attempts) + 1}")
        self.attempts.append(attempt)
        return attempt


class Bodies:
    """Message bodies, made again on demand from each message's seed (nothing big is kept):
    lines from a fixed pool, some starting with dots (dot-stuffing), one just "."."""

    def __init__(self, seed):
        rng = random.Random(seed)
        letters = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,;:-'"
        pool = []
        for i in range(1024):
            line = "".join(rng.choice(letters) for _ in range(rng.randint(0, 120)))
            if i % 37 == 0:
                line = "." + line
            if i % 101 == 0:
                line = ".." + line
            if i == 500:
                line = "."
            pool.append(line.encode() + b"\r\n")
        self.pool = pool

    def body(self, message):
        rng = random.Random(message.seed)
        lines, total = [], 0
        while total < message.size:
            line = self.pool[rng.randrange(len(self.pool))]
            lines.append(line)
            total += len(line)
        return b"".join(lines)

    def data(self, message, attempt):
        """The DATA stream of one attempt, dot-stuffed, ending with the final dot."""
        body = self.body(message)
        digest = hashlib.sha256(body).hexdigest()
        head = (f"From: <sender@{SENDER_DOMAIN}>\r\nTo: <{RECIPIENT}>\r\nSubject: chaos {message.id}\r\n"
                f"Message-ID: <{message.id}@{SENDER_DOMAIN}>\r\nX-Chaos-Id: {message.id}\r\n"
                f"X-Chaos-Attempt: {attempt.id}\r\nX-Chaos-Body-SHA256: {digest}\r\n\r\n").encode()
        stuffed = body.replace(b"\r\n.", b"\r\n..")
        if stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        return head + stuffed + b".\r\n"


class MessageQueue:
    """The clients' shared queue, like an MTA's: fresh messages, and retries due at a time."""

    def __init__(self, messages, rate=0.0):
        self.cv = threading.Condition()
        self.fresh = collections.deque(messages)
        # With a rate, fresh message i is not due before start + i / rate.
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.start = time.monotonic()
        self.released = 0
        self.retries = []
        self.sequence = 0
        self.open = len(messages)
        self.stopped = False

    def take(self, wait):
        """A message due now (a retry first, else a fresh one); None after `wait` seconds or at the end."""
        deadline = time.monotonic() + wait
        with self.cv:
            while True:
                if self.stopped or self.open == 0:
                    return None
                now = time.monotonic()
                if self.retries and self.retries[0][0] <= now:
                    return heapq.heappop(self.retries)[2]
                fresh_due = self.start + self.released * self.interval
                if self.fresh and fresh_due <= now:
                    self.released += 1
                    return self.fresh.popleft()
                if now >= deadline:
                    return None
                until = deadline if not self.retries else min(deadline, self.retries[0][0])
                if self.fresh:
                    until = min(until, fresh_due)
                self.cv.wait(max(0.001, until - now))

    def again(self, message, delay):
        with self.cv:
            self.sequence += 1
            heapq.heappush(self.retries, (time.monotonic() + delay, self.sequence, message))
            self.cv.notify()

    def done(self, message):
        with self.cv:
            self.open -= 1
            self.cv.notify_all()

    def stop(self):
        with self.cv:
            self.stopped = True
            self.cv.notify_all()

    @property
    def finished(self):
        with self.cv:
            return self.stopped or self.open == 0

    @property
    def fresh_left(self):
        with self.cv:
            return len(self.fresh)


class ConnectionClosed(Exception):
    pass


class Client:
    """One SMTP client connection: send, read one (multi-line) reply."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def reply(self):
        lines = []
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionClosed("connection closed by the server")
                self.buffer += chunk
                continue
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            lines.append(line.decode("latin-1"))
            if len(line) < 4 or line[3:4] != b"-":
                try:
                    return int(line[:3]), lines[-1]
                except ValueError:
                    raise ConnectionClosed(f"not a reply: {lines[-1]!r}")

    def command(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def abort(self, reset):
        """Hangs up at once; `reset`: with a RST (SO_LINGER 0) instead of a FIN."""
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass

    def quit(self):
        try:
            self.sock.settimeout(2)
            self.command("QUIT")
        except (OSError, ConnectionClosed):
            pass
        self.abort(False)


# MARK: - The run

class Run:
    def __init__(self, args, workdir, broken):
        self.args = args
        self.workdir = workdir
        self.broken = broken
        self.rng = random.Random(args.seed)
        self.bodies = Bodies(args.seed)
        self.lock = threading.Lock()  # counters and attempt records
        self.counters = collections.Counter()
        self.replies = collections.Counter()  # (stage, code) of every non-250 the clients saw
        self.refusals = collections.Counter()
        self.problems = []  # crashes and other things that fail the run by themselves
        self.closing = False  # stop_all has begun: nothing is started again
        self.chaos = threading.Event()  # set while faults are on
        self.stopping = threading.Event()  # fault threads end
        self.postern_lock = threading.Lock()  # one restart or signal at a time
        self.upstream_lock = threading.Lock()
        self.redis_lock = threading.Lock()
        self.journal = os.path.join(workdir, "journal.jsonl")
        self.port = args.port or free_port()
        self.upstream_port = args.upstream_port or free_port()
        self.metrics_port = free_port()
        self.redis_port = free_port()
        self.redis_server = shutil.which("redis-server") if args.redis else None
        if args.redis and not self.redis_server and os.path.exists("/usr/bin/redis-server"):
            self.redis_server = "/usr/bin/redis-server"
        env = dict(os.environ)
        env.pop("POSTERN_TEST_UNSAFE_EARLY_ACK", None)
        if broken:
            env["POSTERN_TEST_UNSAFE_EARLY_ACK"] = "1"
        # A crash prints its backtrace into postern.log (and never waits at a prompt).
        env.setdefault("SWIFT_BACKTRACE", "enable=yes,interactive=no")
        self.postern = Managed("postern", workdir, env)
        self.upstream = Managed("upstream", workdir)
        self.redis = Managed("redis", workdir)
        self.messages = []
        for index in range(1, args.messages + 1):
            roll = self.rng.random()
            if roll < 0.01:
                size = self.rng.randint(1_100_000, 2_000_000)  # past the 1 MiB spool threshold: on disk
            elif roll < 0.10:
                size = self.rng.randint(20_000, 200_000)
            else:
                size = self.rng.randint(500, 4_000)
            self.messages.append(Message(index, self.rng.getrandbits(64), size))
        self.queue = MessageQueue(self.messages, args.rate)

    def count(self, name, amount=1):
        with self.lock:
            self.counters[name] += amount

    # Processes

    def write_configuration(self):
        policy = os.path.join(self.workdir, "policy.yaml")
        with open(policy, "w") as f:
            f.write("version: 1\n"
                    "limits:\n"
                    "  per_client: { key: client_ip, count: messages, rate: 1000000/1m }\n"
                    "rules:\n"
                    "  - id: generous-limit\n"
                    "    stage: mail\n"
                    "    if: { limit: per_client }\n"
                    "    then: tempfail\n")
        store = ""
        if self.redis_server:
            store = (f"limits_store:\n  url: redis://127.0.0.1:{self.redis_port}/0\n"
                     f"  failure: {self.args.redis_failure}\n  timeout: 300ms\n  pool_size: 2\n")
        config = os.path.join(self.workdir, "postern.yaml")
        with open(config, "w") as f:
            f.write(f"hostname: postern.chaos.test\n"
                    f"listen:\n  - address: 127.0.0.1:{self.port}\n"
                    f"upstreams:\n  - url: smtp://127.0.0.1:{self.upstream_port}\n"
                    f"    tls: \"off\"\n    forward_client: \"off\"\n    idle_connections: 8\n    idle_timeout: 5s\n"
                    f"upstream_retry_after: 1s\n"
                    f"shutdown_grace_period: {self.args.grace}s\n"
                    f"limits:\n  max_connections_per_ip: 200\n"
                    f"log_level: info\n"
                    f"decision_log: {os.path.join(self.workdir, 'decisions.log')}\n"
                    f"metrics: 127.0.0.1:{self.metrics_port}\n"
                    f"policy: {policy}\n" + store)
        self.config = config

    def crash_report(self):
        """The crashed thread's first frames in the last Postern's log (Swift backtrace), if any."""
        text = self.postern.log_since(self.postern_offset)
        at = text.find("crashed:\n")
        if at < 0:
            return "no backtrace in postern.log"
        start = text.rfind("\n", 0, at) + 1
        frames = [" ".join(line.split()) for line in text[start:].splitlines()[:6] if line.strip()]
        return " | ".join(frames)

    def start_postern(self):
        offset = self.postern.start([self.args.postern, "serve", "--config", self.config])
        self.postern_offset = offset
        marker = f"listening on 127.0.0.1:{self.port}"
        if not wait_for(lambda: not self.postern.alive() or marker in self.postern.log_since(offset), 30):
            raise SetupError(f"postern not listening after 30s\n{self.postern.tail()}")
        if not self.postern.alive():
            raise SetupError(f"postern exited at start (status {self.postern.process.returncode})\n{self.postern.tail()}")

    def upstream_argv(self):
        a = self.args
        argv = [sys.executable, UPSTREAM, "--port", str(self.upstream_port), "--journal", self.journal,
                "--seed", str(self.rng.getrandbits(32))]
        if a.slow:
            argv += ["--slow-fraction", str(a.slow_fraction), "--slow-max", str(a.slow_max)]
        if a.tempfail:
            argv += ["--tempfail-fraction", str(a.tempfail_fraction),
                     "--tempfail-command-fraction", str(a.tempfail_fraction / 4)]
        if not self.chaos.is_set():
            argv.append("--calm")
        return argv

    def start_upstream(self):
        self.upstream.start(self.upstream_argv())
        if not wait_for(lambda: not self.upstream.alive() or port_open(self.upstream_port), 15):
            raise SetupError(f"upstream not listening\n{self.upstream.tail()}")
        if not self.upstream.alive():
            raise SetupError(f"upstream exited at start\n{self.upstream.tail()}")

    def start_redis(self):
        self.redis.start([self.redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--daemonize", "no", "--dir", self.workdir])
        if not wait_for(lambda: not self.redis.alive() or port_open(self.redis_port), 15):
            raise SetupError(f"redis-server not listening\n{self.redis.tail()}")

    def stop_all(self):
        """Every process this run started, by its PID, whatever happened."""
        self.closing = True
        self.chaos.clear()
        self.stopping.set()
        self.queue.stop()
        for managed, lock, grace in ((self.postern, self.postern_lock, self.args.grace + 10),
                                     (self.upstream, self.upstream_lock, 5), (self.redis, self.redis_lock, 0)):
            locked = lock.acquire(timeout=30)  # a restart under way finishes first
            try:
                managed.stop(grace) if grace else managed.kill()
            finally:
                if locked:
                    lock.release()

    # Clients

    def client(self, index):
        rng = random.Random(self.args.seed * 1000 + index)
        sender = f"client{index}@{SENDER_DOMAIN}"
        while not self.queue.finished:
            try:
                conn = Client(self.port, self.args.client_timeout)
            except OSError:
                self.count("connect_failures")
                time.sleep(rng.uniform(0.1, 0.5))
                continue
            try:
                code, text = conn.reply()
                if code != 220:
                    raise ConnectionClosed(f"greeting: {text}")
                code, text = conn.command(f"EHLO client{index}.{SENDER_DOMAIN}")
                if code != 250:
                    raise ConnectionClosed(f"EHLO: {text}")
            except (OSError, ConnectionClosed):
                self.count("session_failures")
                conn.abort(False)
                time.sleep(rng.uniform(0.1, 0.5))
                continue
            keep = True
            for _ in range(rng.randint(1, 5)):
                message = self.queue.take(wait=1.0)
                if message is None:
                    break
                keep = self.transaction(conn, message, sender, rng)
                if not keep:
                    break
            if keep:
                conn.quit()

    def retry(self, message, rng):
        tries = len(message.attempts)
        if tries >= self.args.max_attempts:
            message.gave_up = True
            self.queue.done(message)
            return
        self.queue.again(message, min(4.0, rng.uniform(0.1, 0.4) * 2 ** min(tries - 1, 4)))

    def transaction(self, conn, message, sender, rng):
        """One attempt of `message` on `conn`. True when the connection may carry another one."""
        attempt = message.new_attempt()
        stage = "mail"
        try:
            data = self.bodies.data(message, attempt)
            code, text = conn.command(f"MAIL FROM:<{sender}> SIZE={len(data)}")
            if code == 250:
                stage = "rcpt"
                code, text = conn.command(f"RCPT TO:<{RECIPIENT}>")
            if code == 250:
                stage = "data"
                code, text = conn.command("DATA")
                if code == 354:
                    stage = "final"
                    chaos = self.chaos.is_set()
                    if chaos and self.args.drop_mid_data and rng.random() < self.args.drop_fraction:
                        # Everything but the final dot, or a random part; then hang up.
                        cut = len(data) - 2 if rng.random() < 0.3 else rng.randrange(0, len(data) - 3)
                        conn.sock.sendall(data[:cut])
                        conn.abort(reset=rng.random() < 0.5)
                        attempt.outcome = "dropped_mid_data"
                        self.count("drops_mid_data")
                        self.retry(message, rng)
                        return False
                    drop_after = chaos and self.args.drop_after_dot and rng.random() < self.args.drop_fraction
                    attempt.dot_sent = True  # from here on, the upstream may have it
                    conn.sock.sendall(data)
                    if drop_after:
                        conn.abort(reset=rng.random() < 0.5)
                        attempt.outcome = "dropped_after_dot"
                        attempt.ambiguous = True
                        self.count("drops_after_dot")
                        self.retry(message, rng)
                        return False
                    code, text = conn.reply()
                    if code == 250:
                        attempt.outcome = "ack"
                        attempt.reply = text
                        message.acked = attempt
                        self.queue.done(message)
                        return True
        except (OSError, ConnectionClosed) as error:
            attempt.outcome = "error"
            attempt.stage = stage
            attempt.reply = str(error)
            attempt.ambiguous = attempt.dot_sent
            self.count("ambiguous_errors" if attempt.dot_sent else "errors_before_dot")
            conn.abort(False)
            self.retry(message, rng)
            return False
        attempt.stage = stage
        attempt.reply = text
        with self.lock:
            self.replies[(stage, code)] += 1
        if 500 <= code < 600:
            attempt.outcome = "refused"
            message.refused = f"{stage}: {text}"
            with self.lock:
                self.refusals[f"{stage}: {text[:60]}"] += 1
            self.queue.done(message)
        else:
            attempt.outcome = "tempfail"
            self.retry(message, rng)
        conn.quit()
        return False

    # Faults

    def every(self, spread, action):
        """Runs `action` at random intervals within `spread` (seconds) while faults are on."""
        low, high = spread
        rng = random.Random(self.rng.getrandbits(32))
        while not self.stopping.wait(rng.uniform(low, high)):
            if not self.chaos.is_set():
                continue
            try:
                action(rng)
            except SetupError as error:
                self.problems.append(f"restart failed: {error}")
                self.stopping.set()

    def kill_upstream(self, rng):
        with self.upstream_lock:
            self.upstream.kill()
            self.count("upstream_kills")
            time.sleep(rng.uniform(0.1, 1.5))
            if not self.closing:
                self.start_upstream()

    def restart_postern(self, rng):
        with self.postern_lock:
            started = time.monotonic()
            status = self.postern.stop(self.args.grace + 10)
            elapsed = time.monotonic() - started
            self.count("postern_restarts")
            if status != 0:
                self.problems.append(f"postern exited with status {status} {elapsed:.1f}s after SIGTERM: "
                                     f"{self.crash_report()}")
            time.sleep(rng.uniform(0.2, 1.5))
            if not self.closing:
                self.start_postern()

    def sighup(self, rng):
        with self.postern_lock:
            self.postern.signal(signal.SIGHUP)
            self.count("sighups")

    def kill_redis(self, rng):
        with self.redis_lock:
            self.redis.kill()
            self.count("redis_kills")
            time.sleep(rng.uniform(0.2, 2.0))
            if not self.closing:
                self.start_redis()

    def monitor(self):
        """A process that died by itself is a crash: noted (it fails the run), and started again."""
        watched = [(self.postern, self.postern_lock, self.start_postern),
                   (self.upstream, self.upstream_lock, self.start_upstream)]
        if self.redis_server:
            watched.append((self.redis, self.redis_lock, self.start_redis))
        while not self.queue.finished:
            for managed, lock, start in watched:
                with lock:
                    if self.closing or self.queue.finished:
                        return
                    if not managed.alive():
                        status = managed.process.returncode if managed.process else None
                        self.problems.append(f"{managed.name} (pid {managed.pid}) died by itself, status {status}:\n"
                                             f"{managed.tail(20)}")
                        self.count(f"{managed.name}_crashes")
                        try:
                            start()
                        except SetupError as error:
                            self.problems.append(str(error))
                            self.queue.stop()
            time.sleep(0.2)

    # The whole run

    def execute(self):
        a = self.args
        log(f"{'BROKEN (POSTERN_TEST_UNSAFE_EARLY_ACK=1) ' if self.broken else ''}run: {a.messages} messages, "
            f"{a.clients} clients, work directory {self.workdir}")
        self.write_configuration()
        self.chaos.set()
        if a.redis and not self.redis_server:
            log("redis-server not found: the Redis fault is off, limits in memory")
        if self.redis_server:
            self.start_redis()
        self.start_upstream()
        self.start_postern()
        started = time.monotonic()
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(a.clients)]
        faults = []
        if a.upstream_kill:
            faults.append((a.upstream_kill_every, self.kill_upstream))
        if a.postern_restart:
            faults.append((a.postern_restart_every, self.restart_postern))
        if a.sighup:
            faults.append((a.sighup_every, self.sighup))
        if self.redis_server:
            faults.append((a.redis_kill_every, self.kill_redis))
        fault_threads = [threading.Thread(target=self.every, args=f, daemon=True) for f in faults]
        monitor = threading.Thread(target=self.monitor, daemon=True)
        for thread in threads + fault_threads + [monitor]:
            thread.start()

        drain_started = None
        last_report = started
        while not self.queue.finished:
            time.sleep(0.2)
            now = time.monotonic()
            if drain_started is None and (self.queue.fresh_left == 0 or self.stopping.is_set()):
                # Every message has had its first attempt: faults off, let the retries finish.
                drain_started = now
                self.chaos.clear()
                self.stopping.set()
                for thread in fault_threads:
                    thread.join()
                with self.upstream_lock:
                    self.upstream.signal(signal.SIGUSR1)
                log(f"drain: faults off after {now - started:.0f}s, {self.queue.open} messages still open")
            if drain_started is not None and now - drain_started > a.drain_timeout:
                log(f"drain timeout: {self.queue.open} messages still open after {a.drain_timeout}s")
                self.queue.stop()
            if now - last_report >= 15:
                last_report = now
                acked = sum(1 for m in self.messages if m.acked)
                with self.lock:
                    c = dict(self.counters)
                log(f"{now - started:.0f}s: acknowledged={acked} open={self.queue.open} "
                    + " ".join(f"{k}={v}" for k, v in sorted(c.items())))
        self.chaos.clear()
        self.stopping.set()
        for thread in fault_threads:
            thread.join()
        for thread in threads:
            thread.join(timeout=a.client_timeout + 10)
        monitor.join(timeout=5)
        elapsed = time.monotonic() - started
        # Postern stops first, so that nothing more reaches the upstream; then the upstream.
        status = self.postern.stop(a.grace + 10)
        if status != 0:
            self.problems.append(f"postern exited with status {status} at the end: {self.crash_report()}")
        self.upstream.stop(5)
        self.redis.kill()
        return self.audit(elapsed)

    def audit(self, elapsed):
        accepts, replied, tempfails, torn = [], set(), collections.Counter(), 0
        with open(self.journal, "rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    torn += 1
                    continue
                if record["ev"] == "accept":
                    accepts.append(record)
                elif record["ev"] == "replied":
                    replied.add((record["pid"], record["seq"]))
                elif record["ev"] == "tempfail":
                    tempfails[record["at"]] += 1
        attempts = {a.id: (m, a) for m in self.messages for a in m.attempts}
        copies = collections.defaultdict(list)
        phantoms, corrupt = [], []
        for record in accepts:
            found = attempts.get(record.get("att"))
            if found is None or found[0].id != record.get("id") or not found[1].dot_sent:
                phantoms.append(record)  # no final dot was ever sent for it
                continue
            if not record.get("body_ok"):
                corrupt.append(record)
            # Ambiguous upstream-side: kept and fsynced, but the 250 was never written.
            upstream_ambiguous = (record["pid"], record["seq"]) not in replied
            copies[found[0].id].append((found[1], upstream_ambiguous, record))

        lost, mismatched, duplicates, explained, unexplained, delivered_unacked = [], [], 0, 0, [], []
        explained_by = collections.Counter()
        for message in self.messages:
            kept = copies.get(message.id, [])
            if message.acked:
                if not kept:
                    lost.append(message)
                elif not any(attempt is message.acked for attempt, _, _ in kept):
                    mismatched.append(message)  # 250 for an attempt the upstream never had
            if not kept:
                continue
            # One copy is the message; every other one is a duplicate, explained when its
            # attempt was ambiguous (client side or upstream side).
            justified = [c for c in kept if c[0] is message.acked or c[0].ambiguous or c[1]]
            if message.acked is None and len(justified) == 0:
                delivered_unacked.append((message, kept[0]))
            duplicates += len(kept) - 1
            extras = list(kept)
            primary = next((c for c in kept if c[0] is message.acked), None) or (justified or kept)[0]
            extras.remove(primary)
            for attempt, upstream_ambiguous, record in extras:
                if attempt.ambiguous or upstream_ambiguous:
                    explained += 1
                    explained_by["client" if attempt.ambiguous else "upstream"] += 1
                else:
                    unexplained.append((message, attempt, record))

        acknowledged = sum(1 for m in self.messages if m.acked)
        refused = [m for m in self.messages if m.refused]
        gave_up = [m for m in self.messages if m.gave_up]
        unfinished = [m for m in self.messages if not (m.acked or m.refused or m.gave_up)]
        c = self.counters
        summary = (f"chaos: {'BROKEN ' if self.broken else ''}messages={len(self.messages)} acknowledged={acknowledged} "
                   f"lost={len(lost)} phantom={len(phantoms)} duplicates={duplicates} "
                   f"(explained={explained} unexplained={len(unexplained)}) "
                   f"faults: upstream_kills={c['upstream_kills']} postern_restarts={c['postern_restarts']} "
                   f"sighups={c['sighups']} redis_kills={c['redis_kills']} drops_mid_data={c['drops_mid_data']} "
                   f"drops_after_dot={c['drops_after_dot']} upstream_451={sum(tempfails.values())} "
                   f"elapsed={elapsed:.0f}s")
        total_attempts = sum(len(m.attempts) for m in self.messages)
        details = (f"chaos: refused={len(refused)} unfinished={len(unfinished)} gave_up={len(gave_up)} "
                   f"corrupt={len(corrupt)} mismatched={len(mismatched)} delivered_unacked={len(delivered_unacked)} "
                   f"torn_journal_lines={torn} explained_by_client={explained_by['client']} "
                   f"explained_by_upstream={explained_by['upstream']} attempts={total_attempts} journal_accepts={len(accepts)} "
                   f"ambiguous_attempts={sum(1 for m in self.messages for a in m.attempts if a.ambiguous)} "
                   f"upstream_451_at={dict(tempfails)} connect_failures={c['connect_failures']} "
                   f"crashes={sum(v for k, v in c.items() if k.endswith('_crashes'))}")
        print(summary, flush=True)
        print(details, flush=True)
        if self.replies:
            print("chaos: non-250 replies seen by the clients (stage, code): "
                  + ", ".join(f"{s} {code}: {n}" for (s, code), n in sorted(self.replies.items())), flush=True)
        for reason, n in self.refusals.most_common():
            print(f"chaos: permanently refused {n}: {reason}", flush=True)

        failures = []

        def show(what, items, describe):
            if items:
                failures.append(f"{what}={len(items)}")
                for item in items[:10]:
                    print(f"chaos: {what}: {describe(item)}", flush=True)

        def history(message):
            return "; ".join(f"{a.id} {a.outcome}{'@' + a.stage if a.stage else ''}"
                             f"{' dot' if a.dot_sent else ''}{' ambiguous' if a.ambiguous else ''}"
                             f"{' ' + a.reply if a.reply else ''}" for a in message.attempts)

        show("lost", lost, lambda m: f"{m.id} acknowledged ({m.acked.id}: {m.acked.reply}) but never upstream; {history(m)}")
        show("phantom", phantoms, lambda r: f"journal {json.dumps(r)} (no final dot sent for it)")
        show("unexplained", unexplained, lambda x: f"{x[0].id}: copy of {x[1].id} with a definite reply "
                                                  f"({x[1].outcome} {x[1].reply}); journal {json.dumps(x[2])}; {history(x[0])}")
        show("corrupt", corrupt, lambda r: f"journal {json.dumps(r)} (body differs from what was sent)")
        show("mismatched", mismatched, lambda m: f"{m.id}: 250 for {m.acked.id}, not in the journal; {history(m)}")
        show("delivered_unacked", delivered_unacked, lambda x: f"{x[0].id}: upstream has {x[1][0].id}, "
                                                              f"the client was told otherwise; {history(x[0])}")
        show("refused", refused, lambda m: f"{m.id}: {m.refused}")
        show("unfinished", unfinished, lambda m: f"{m.id}: {history(m)}")
        show("gave_up", gave_up, lambda m: f"{m.id}: {history(m)}")
        if torn:
            failures.append(f"torn_journal_lines={torn}")
        for problem in self.problems:
            failures.append("problem")
            print(f"chaos: problem: {problem}", flush=True)
        verdict = "PASS" if not failures else "FAIL (" + ", ".join(sorted(set(failures))) + ")"
        print(f"chaos: {verdict}", flush=True)
        return {"passed": not failures, "lost": len(lost), "summary": summary}


def run_once(args, broken, expect_caught=False):
    workdir = tempfile.mkdtemp(prefix="postern-chaos-broken-" if broken else "postern-chaos-", dir=args.workdir)
    run = Run(args, workdir, broken)
    result = None
    try:
        result = run.execute()
    finally:
        run.stop_all()
        as_expected = result and (result["passed"] != expect_caught) and (not expect_caught or result["lost"] > 0)
        if as_expected and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work directory kept: {workdir} (journal.jsonl, postern.log, upstream.log, decisions.log)")
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(description="Postern's chaos run (see Chaos/README.md).")
    on = argparse.BooleanOptionalAction
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--rate", type=float, default=40.0,
                   help="new messages a second, at most (retries come on top); 0: as fast as the clients go")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    p.add_argument("--postern", default=os.path.join(ROOT, ".build", "release", "postern"))
    p.add_argument("--port", type=int, default=0, help="Postern's port (default: a free one)")
    p.add_argument("--upstream-port", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the run directory is made (default: the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the run directory even when the run passes")
    p.add_argument("--broken", action="store_true",
                   help="run Postern with POSTERN_TEST_UNSAFE_EARLY_ACK=1: the audit must fail (lost > 0)")
    p.add_argument("--self-check", action="store_true",
                   help="first a short broken run, which must be caught; then the real run")
    p.add_argument("--self-check-messages", type=int, default=300)
    # Faults: each on by default.
    p.add_argument("--drop-mid-data", action=on, default=True, help="clients hang up in the middle of DATA")
    p.add_argument("--drop-after-dot", action=on, default=True, help="clients hang up right after the final dot")
    p.add_argument("--drop-fraction", type=float, default=0.02, help="of attempts, for each of the two drops")
    p.add_argument("--upstream-kill", action=on, default=True, help="SIGKILL the upstream, start it again")
    p.add_argument("--upstream-kill-every", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN", "MAX"))
    p.add_argument("--slow", action=on, default=True, help="the upstream delays replies")
    p.add_argument("--slow-fraction", type=float, default=0.05)
    p.add_argument("--slow-max", type=float, default=1.0)
    p.add_argument("--tempfail", action=on, default=True, help="the upstream answers 451")
    p.add_argument("--tempfail-fraction", type=float, default=0.05, help="at the end of DATA (a quarter of it at MAIL/RCPT)")
    p.add_argument("--sighup", action=on, default=True, help="SIGHUP to Postern")
    p.add_argument("--sighup-every", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"))
    p.add_argument("--postern-restart", action=on, default=True, help="SIGTERM Postern, start it again")
    p.add_argument("--postern-restart-every", type=float, nargs=2, default=(10.0, 25.0), metavar=("MIN", "MAX"))
    p.add_argument("--redis", action=on, default=True, help="shared limits in a redis-server that is killed (when installed)")
    p.add_argument("--redis-kill-every", type=float, nargs=2, default=(5.0, 15.0), metavar=("MIN", "MAX"))
    p.add_argument("--redis-failure", choices=["fail_open", "fail_closed"], default="fail_closed")
    p.add_argument("--grace", type=int, default=5, help="Postern's shutdown_grace_period, seconds")
    p.add_argument("--client-timeout", type=float, default=60.0)
    p.add_argument("--max-attempts", type=int, default=60)
    p.add_argument("--drain-timeout", type=float, default=180.0)
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = int(time.time()) % 1_000_000
    return args


def main(argv):
    args = parse_args(argv)
    if not os.access(args.postern, os.X_OK):
        print(f"chaos: no Postern binary at {args.postern} (swift build -c release --product postern)", file=sys.stderr)
        return 2
    log(f"seed {args.seed}")

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background, where it was ignored
    try:
        if args.self_check and not args.broken:
            check = argparse.Namespace(**vars(args))
            check.messages = args.self_check_messages
            # Enough 451s at the end of DATA that an early 250 loses mail for certain.
            check.tempfail = True
            check.tempfail_fraction = max(args.tempfail_fraction, 0.2)
            result = run_once(check, broken=True, expect_caught=True)
            if result["passed"] or result["lost"] == 0:
                print("chaos: self-check FAILED: the broken mode (early 250) was not caught", flush=True)
                return 3
            print("chaos: self-check ok: the broken mode was caught "
                  f"(lost={result['lost']}); now the real run", flush=True)
        result = run_once(args, broken=args.broken)
        return 0 if result["passed"] else 1
    except SetupError as error:
        print(f"chaos: setup failed: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("chaos: interrupted; every process stopped", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
