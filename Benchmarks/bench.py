#!/usr/bin/env python3
"""`make bench`: Postern's throughput, CPU, memory and latency against the smtp-sink ceiling.

    make bench            # the full run (about 5 minutes on 2 cores, after the build)
    make bench QUICK=1    # a short run (under 2 minutes): fewer cells, one round, smaller counts

    QUICK=1 POSTERN_BINARY=.build-x/release/postern python3 Benchmarks/bench.py [--out DIR]

Postfix's smtp-source sends to Postfix's smtp-sink directly (the ceiling: nothing in between)
and through a release build of Postern relaying to the same smtp-sink, the two alternated in
every cell so that drift on the machine affects both. Everything it measures, and how to read
it, is in Benchmarks/README.md. Results go to Benchmarks/results/ (results.md, results.json,
throughput.png) unless --out says otherwise.

Environment: POSTERN_BINARY (default .build/release/postern), POLICY_BENCH_BINARY (default
.build/release/postern-policy-bench; skipped when absent), QUICK=1, BENCH_COMMAND (the command
line recorded in the results; the Makefile sets it).
"""
import argparse
import datetime
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, str(Path(__file__).resolve().parent))
import heavy_policy  # noqa: E402
import rspamd_engine  # noqa: E402
import smtp_clients  # noqa: E402
from smtp_clients import BenchError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

HELO = "bench.client.example"
SENDER = "sender@bench.example"
RECIPIENT = "rcpt@sink.example"
SUBJECT = "benchmark message"

KB4 = 4096           # "4 KB": smtp-source -l, the payload after its headers
KB100 = 100 * 1024   # "100 KB"
BIG = 50 * 1024 * 1024  # "50 MB": the message octets after the headers

# The targets. Where "KB"/"MB" could be read either way, the stricter reading is used:
# the message sizes are binary (larger), the memory limits decimal (smaller).
# 4 KB, default policy: at 10 and 100 sessions (one session has no target: there the client's
# round trips, not the CPUs, set the pace). When the CPUs are the limit, a relay does one
# sink's and one source's work per message, so about half the straight-to-sink rate is the best
# it can do here.
TARGET_RATIO_4K = 0.5
TARGET_RATIO_100K = 0.5
TARGET_RATIO_HEAVY = 0.4
# The policy name of the cells with a milter in the chain (no target: they show its cost).
ENGINE_POLICY = "rspamd"
# The policy name of the cells with a connect-stage DNS list (no target: they show its cost).
DNSBL_POLICY = "dnsbl"
# The policy name of the cells with Postfix's 40 typical header and body checks
# (Benchmarks/postfix_checks.yaml; no ratio target: they show the content rules' cost).
CHECKS_POLICY = "postfix-checks"
COST_POLICIES = (ENGINE_POLICY, DNSBL_POLICY, CHECKS_POLICY)
STUB_DNS = ROOT / "Tests" / "PosternIntegrationTests" / "Fixtures" / "stub_dns.py"
# Postern's CPU per relayed 4 KB message against smtp-source's plus smtp-sink's per message
# in the direct runs of the same cell (a relay is one sink plus one source).
TARGET_CPU_TO_TOOLS = 1.0
# Postfix's 40 checks over 100 KB: at most this much CPU per message more than the default policy.
TARGET_CHECKS_EXTRA_MS = 0.5
TARGET_IDLE_BYTES = 8_000
TARGET_BIG_RSS_BYTES = 20_000_000
# postern replay: 1 million records in under a minute.
TARGET_REPLAY_SECONDS_PER_MILLION = 60


def log(text):
    print(text, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name):
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if not path:
        sys.exit(f"bench: {name} not found (Debian package postfix; `make bench` installs it)")
    return path


def wait_for(predicate, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def raise_nofile(limit=65536):
    """Raises this process's open-file limit as far as allowed; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in (limit, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, soft), max(wanted, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


def median(values):
    return statistics.median(values) if values else None


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


# MARK: - Processes

class Sink:
    """Postfix's smtp-sink with -c counters; `messages` is the number of "." it has answered.

    The counters go to a file, read only when asked: a pipe read by this process would wake it
    for every counter update and slow the sink down."""

    def __init__(self, workdir):
        self.port = free_port()
        args = [tool("smtp-sink"), "-c", "-m", "2000"]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        args += [f"127.0.0.1:{self.port}", "5000"]
        self.counters = workdir / "smtp-sink.counters"
        self._stdout = open(self.counters, "wb")
        self._stderr = open(workdir / "smtp-sink.stderr", "wb")
        self.process = subprocess.Popen(args, stdout=self._stdout, stderr=self._stderr)
        if not wait_for(lambda: _port_open(self.port) or self.process.poll() is not None, 10) or self.process.poll() is not None:
            self.stop()
            raise BenchError("smtp-sink did not start")

    def cpu_seconds(self):
        """utime + stime of smtp-sink, from /proc/PID/stat."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    @property
    def messages(self):
        with open(self.counters, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256))
            found = re.findall(rb"mesg=(\d+)", f.read())
        return int(found[-1]) if found else 0

    def wait_count(self, expected, timeout=10):
        return wait_for(lambda: self.messages >= expected, timeout)

    def stop(self):
        stop_process(self.process)
        self._stdout.close()
        self._stderr.close()


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_process(process, grace=15):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Postern:
    """A release Postern relaying to the sink, with its own configuration and decision log."""

    def __init__(self, binary, workdir, name, sink_port, policy=None, nofile=None, extra=(), engine=None):
        self.port = free_port()
        self.name = name
        self.decision_log = workdir / f"postern-{name}-decisions.log"
        self.stderr_path = workdir / f"postern-{name}.stderr"
        spool = workdir / "spool"
        spool.mkdir(exist_ok=True)
        config = [
            "hostname: postern.bench",
            "listen:",
            f"  - address: 127.0.0.1:{self.port}",
            "upstreams:",
            f'  - url: "smtp://127.0.0.1:{sink_port}"',
            "    tls: \"off\"",
            "limits:",
            "  max_connections: 100000",
            "  max_connections_per_ip: 100000",
            "  message_size: 200MiB",
            "spool:",
            f"  directory: {spool}",
            f"decision_log: {self.decision_log}",
        ]
        if policy:
            config.append(f"policy: {policy}")
        config += list(extra)
        # An engine in the chain (rspamd): its CPU is measured with Postern's.
        self.engine = engine
        self.config = workdir / f"postern-{name}.yaml"
        self.config.write_text("\n".join(config) + "\n")
        check = subprocess.run([binary, "check", "--config", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise BenchError(f"postern check --config {self.config} failed:\n{check.stdout}{check.stderr}")
        self.check_output = check.stdout.strip()

        def limits():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self._stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen([binary, "serve", "--config", str(self.config)], cwd=workdir,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=self._stderr, preexec_fn=limits)
        self.pid = self.process.pid
        if not wait_for(lambda: self._greets() or self.process.poll() is not None, 60, interval=0.1) \
                or self.process.poll() is not None:
            self.stop()
            raise BenchError(f"postern ({name}) did not start: {self.stderr_tail()}")
        self._log_offset = 0
        self._accepted = 0

    def _greets(self):
        try:
            conn = smtp_clients.Connection(self.port, timeout=2)
        except OSError:
            return False
        try:
            conn.expect(220, "greeting")
            conn.command("QUIT", 221)
            return True
        except (OSError, BenchError):
            return False
        finally:
            conn.close()

    def stderr_tail(self, lines=15):
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self):
        return self.process.poll() is None

    def cpu_seconds(self):
        """utime + stime of the process (all threads), from /proc/PID/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def status_kb(self, key):
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise BenchError(f"no {key} in /proc/{self.pid}/status")

    def rss_bytes(self):
        return self.status_kb("VmRSS") * 1024

    def hwm_bytes(self):
        return self.status_kb("VmHWM") * 1024

    def reset_hwm(self):
        """Resets VmHWM to the current RSS (Linux: 5 > /proc/PID/clear_refs). False when not allowed."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def accepted(self):
        """Decision records with "decision":"accepted" written so far."""
        try:
            with open(self.decision_log, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except FileNotFoundError:
            return self._accepted
        complete = data.rfind(b"\n") + 1
        self._accepted += data[:complete].count(b'"decision":"accepted"')
        self._log_offset += complete
        return self._accepted

    def wait_accepted(self, expected, timeout=10):
        return wait_for(lambda: self.accepted() >= expected, timeout, interval=0.05)

    def stop(self):
        stop_process(self.process)
        self._stderr.close()


# MARK: - Throughput

def smtp_source(port, sessions, messages, size):
    """Runs smtp-source; returns the wall time in seconds. A failure raises BenchError."""
    args = [tool("smtp-source"), "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-M", HELO, "-f", SENDER, "-t", RECIPIENT, "-S", SUBJECT, f"127.0.0.1:{port}"]
    start = time.monotonic()
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise BenchError(f"smtp-source timed out: {' '.join(args)}")
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise BenchError(f"smtp-source exited {result.returncode}: {' '.join(args)}\n{result.stdout[-800:]}{result.stderr[-800:]}")
    return elapsed


def relay_run(sink, postern, sessions, messages, size):
    """One smtp-source run, straight to the sink (postern None) or through Postern, checked:
    the sink counted every message, and Postern recorded each one as accepted."""
    sink_before = sink.messages
    if postern is None:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        sink_cpu = sink.cpu_seconds()
        elapsed = smtp_source(sink.port, sessions, messages, size)
        if not sink.wait_count(sink_before + messages):
            raise BenchError(f"direct run: smtp-sink counted {sink.messages - sink_before} of {messages} messages")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # smtp-source is the only child waited for in the run; smtp-sink is read from /proc.
        source_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        tools_cpu = source_cpu + sink.cpu_seconds() - sink_cpu
        return {"messages": messages, "seconds": elapsed, "rate": messages / elapsed,
                "tools_cpu_ms_per_message": tools_cpu * 1000 / messages}
    accepted_before = postern.accepted()
    postern.reset_hwm()
    cpu_before = postern.cpu_seconds()
    engine_before = postern.engine.cpu_seconds() if postern.engine else 0
    elapsed = smtp_source(postern.port, sessions, messages, size)
    cpu = postern.cpu_seconds() - cpu_before
    engine_cpu = postern.engine.cpu_seconds() - engine_before if postern.engine else None
    if not postern.wait_accepted(accepted_before + messages):
        raise BenchError(f"postern run: {postern.accepted() - accepted_before} of {messages} messages accepted; "
                         f"stderr: {postern.stderr_tail(5)}")
    if not sink.wait_count(sink_before + messages):
        raise BenchError(f"postern run: smtp-sink counted {sink.messages - sink_before} of {messages} messages")
    return {"messages": messages, "seconds": elapsed, "rate": messages / elapsed,
            "cpu_seconds": cpu, "cpu_ms_per_message": cpu * 1000 / messages,
            "peak_rss_bytes": postern.hwm_bytes(), "rss_bytes": postern.rss_bytes(),
            **({"engine_cpu_ms_per_message": engine_cpu * 1000 / messages} if engine_cpu is not None else {})}


def messages_for(rate, seconds, sessions, minimum):
    """A message count that takes about `seconds` at `rate`, a multiple of `sessions`."""
    count = max(minimum, sessions * 5, int(rate * seconds))
    return -(-count // sessions) * sessions


def throughput_cell(sink, postern, policy, sessions, size, rounds, seconds):
    label = f"{policy}, {size // 1024} KB, {plural(sessions, 'session')}"
    probe = messages_for(0, 0, sessions, 40 if size <= KB4 else 20)

    def calibrate(target):
        """Short runs, growing until one lasts 0.3 s, give the rate that sizes the timed runs
        (and warm up both paths)."""
        messages = probe
        for _ in range(4):
            run = relay_run(sink, target, sessions, messages, size)
            if run["seconds"] >= 0.3:
                break
            messages = messages_for(run["rate"], 0.4, sessions, messages * 2)
        return [run["rate"]]

    direct_rates, postern_rates = calibrate(None), calibrate(postern)
    direct_runs, postern_runs = [], []
    for _ in range(rounds):
        # Each run is sized from the median rate seen so far on its side, to last about `seconds`.
        direct_runs.append(relay_run(sink, None, sessions, messages_for(median(direct_rates), seconds, sessions, probe), size))
        postern_runs.append(relay_run(sink, postern, sessions, messages_for(median(postern_rates), seconds, sessions, probe), size))
        direct_rates.append(direct_runs[-1]["rate"])
        postern_rates.append(postern_runs[-1]["rate"])
    ceiling = median([r["rate"] for r in direct_runs])
    through = median([r["rate"] for r in postern_runs])
    # Each Postern run is compared with the direct run just before it, so drift on the machine
    # (other load) cancels out as far as it can; the cell's ratio is the median of those.
    ratios = [p["rate"] / d["rate"] for d, p in zip(direct_runs, postern_runs)]
    cell = {
        "policy": policy, "size": size, "sessions": sessions,
        "ceiling_rate": ceiling, "postern_rate": through, "ratio": median(ratios), "round_ratios": ratios,
        "cpu_ms_per_message": median([r["cpu_ms_per_message"] for r in postern_runs]),
        "tools_cpu_ms_per_message": median([r["tools_cpu_ms_per_message"] for r in direct_runs]),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in postern_runs),
        **({"engine_cpu_ms_per_message": median([r["engine_cpu_ms_per_message"] for r in postern_runs])}
           if postern.engine else {}),
        "direct_runs": direct_runs, "postern_runs": postern_runs,
    }
    engine = f"  engine cpu {cell['engine_cpu_ms_per_message']:.3f} ms/msg" if postern.engine else ""
    log(f"  {label:32} ceiling {ceiling:8.0f}/s  postern {through:8.0f}/s  ratio {cell['ratio']:.2f}  "
        f"cpu {cell['cpu_ms_per_message']:.3f} ms/msg (source+sink {cell['tools_cpu_ms_per_message']:.3f})  peak rss {cell['peak_rss_bytes'] / 2**20:.1f} MiB{engine}")
    return cell


def pipelining_cell(sink, postern, sessions, size, rounds, messages):
    """The pipelining client (`smtp_clients.pipelined_run`, 20 messages per connection) straight
    to the sink and through Postern, alternated: rates, ratio, Postern's CPU per message."""
    direct, through, cpu = [], [], []
    smtp_clients.pipelined_run(postern.port, sessions, sessions * 4, size)  # warm-up
    for _ in range(rounds):
        before = sink.messages
        direct.append(messages / smtp_clients.pipelined_run(sink.port, sessions, messages, size))
        if not sink.wait_count(before + messages):
            raise BenchError("pipelining, direct: smtp-sink did not count every message")
        before, accepted, used = sink.messages, postern.accepted(), postern.cpu_seconds()
        through.append(messages / smtp_clients.pipelined_run(postern.port, sessions, messages, size))
        cpu.append((postern.cpu_seconds() - used) * 1000 / messages)
        if not sink.wait_count(before + messages) or not postern.wait_accepted(accepted + messages):
            raise BenchError("pipelining, through Postern: not every message was relayed")
    cell = {"sessions": sessions, "size": size, "messages": messages, "ceiling_rate": median(direct),
            "postern_rate": median(through), "ratio": median([t / d for d, t in zip(direct, through)]),
            "cpu_ms_per_message": median(cpu)}
    log(f"  pipelining client, {size // 1024} KB, {plural(sessions, 'session')}: ceiling {cell['ceiling_rate']:.0f}/s  "
        f"postern {cell['postern_rate']:.0f}/s  ratio {cell['ratio']:.2f}  cpu {cell['cpu_ms_per_message']:.3f} ms/msg")
    return cell


# MARK: - Latency, idle connections, the big message

def latency(sink, postern, transactions, clients):
    """Per-transaction wall time straight to the sink and through Postern, in alternating halves."""
    direct, through = [], []
    half = max(1, transactions // 2)
    for _ in range(2):
        direct += smtp_clients.latency_samples(sink.port, half, clients=clients)
        through += smtp_clients.latency_samples(postern.port, half, clients=clients)
    result = {"clients": clients, "transactions": len(direct)}
    for name, samples in (("direct", direct), ("postern", through)):
        result[name] = {"p50_ms": percentile(samples, 50) * 1000, "p99_ms": percentile(samples, 99) * 1000,
                        "mean_ms": statistics.fmean(samples) * 1000}
    result["added_p50_ms"] = result["postern"]["p50_ms"] - result["direct"]["p50_ms"]
    result["added_p99_ms"] = result["postern"]["p99_ms"] - result["direct"]["p99_ms"]
    log(f"  latency, {plural(clients, 'client')}: direct p50 {result['direct']['p50_ms']:.3f} "
        f"p99 {result['direct']['p99_ms']:.3f} ms; postern p50 {result['postern']['p50_ms']:.3f} "
        f"p99 {result['postern']['p99_ms']:.3f} ms; added p50 {result['added_p50_ms']:.3f} p99 {result['added_p99_ms']:.3f} ms")
    return result


def idle_connections(binary, workdir, sink, count):
    nofile = raise_nofile()
    if nofile < count + 100:
        raise BenchError(f"the open-file limit is {nofile}; {count} idle connections need more")
    postern = Postern(binary, workdir, "idle", sink.port, policy=ROOT / "Policies" / "default.yaml",
                      nofile=max(nofile, count + 1000))
    try:
        # Warm-up: a few hundred sessions, closed, so one-time allocations are in the baseline.
        smtp_clients.close_all(smtp_clients.open_idle(postern.port, 200))
        time.sleep(1.0)
        before = postern.rss_bytes()
        start = time.monotonic()
        connections = smtp_clients.open_idle(postern.port, count)
        opened = time.monotonic() - start
        try:
            time.sleep(1.0)
            during = postern.rss_bytes()
            time.sleep(1.0)
            during = max(during, postern.rss_bytes())
            # Every connection must still be open and served: a NOOP on a sample of them.
            for conn in connections[:: max(1, count // 50)]:
                conn.command("NOOP", 250)
        finally:
            smtp_clients.close_all(connections)
        time.sleep(1.5)
        after = postern.rss_bytes()
        alive = postern.alive()
    finally:
        postern.stop()
    if not alive:
        raise BenchError("postern died during the idle-connection test")
    result = {"connections": count, "rss_before_bytes": before, "rss_held_bytes": during,
              "rss_after_close_bytes": after, "bytes_per_connection": (during - before) / count,
              "open_seconds": opened}
    log(f"  idle: {count} connections after EHLO: rss {before / 2**20:.1f} -> {during / 2**20:.1f} MiB, "
        f"{result['bytes_per_connection']:.0f} bytes per connection (after closing: {after / 2**20:.1f} MiB)")
    return result


def big_message(binary, workdir, sink, size):
    postern = Postern(binary, workdir, "big", sink.port, policy=ROOT / "Policies" / "default.yaml")
    try:
        data = smtp_clients.big_message(size)
        smtp_clients.send_big(postern.port, smtp_clients.big_message(4096))  # warm-up
        time.sleep(0.5)
        baseline = postern.rss_bytes()
        hwm_reset = postern.reset_hwm()
        peak = [baseline]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], postern.rss_bytes())
                except (OSError, BenchError):
                    return
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sink_before = sink.messages
        sampler.start()
        start = time.monotonic()
        try:
            reply = smtp_clients.send_big(postern.port, data)
        finally:
            elapsed = time.monotonic() - start
            stop.set()
            sampler.join()
        hwm = postern.hwm_bytes() if hwm_reset else None
        after = postern.rss_bytes()
        if not sink.wait_count(sink_before + 1):
            raise BenchError("the 50 MB message did not reach smtp-sink")
    finally:
        postern.stop()
    sampled_peak = peak[0]
    peak_bytes = max(sampled_peak, hwm or 0)
    result = {"message_bytes": len(data) - 3, "seconds": elapsed, "reply": reply,
              "rss_baseline_bytes": baseline, "rss_peak_sampled_bytes": sampled_peak, "vmhwm_bytes": hwm,
              "rss_after_bytes": after, "rss_increase_bytes": peak_bytes - baseline}
    log(f"  50 MB message: {elapsed:.2f} s, rss {baseline / 2**20:.1f} MiB -> peak {peak_bytes / 2**20:.1f} MiB "
        f"(+{result['rss_increase_bytes'] / 2**20:.1f} MiB; sampled every 50 ms: {sampled_peak / 2**20:.1f}, "
        f"VmHWM: {(hwm or 0) / 2**20:.1f}), reply: {reply}")
    return result


def policy_bench(quick):
    binary = Path(os.environ.get("POLICY_BENCH_BINARY", ROOT / ".build" / "release" / "postern-policy-bench"))
    if not binary.exists():
        log(f"  {binary} not found: skipped (make bench builds it)")
        return None
    args = [str(binary)] + (["--quick"] if quick else [])
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=900)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(args)} exited {result.returncode}: {result.stderr[-800:]}")
    log(result.stdout.rstrip())
    return {"command": " ".join([os.path.relpath(binary, ROOT)] + args[1:]), "output": result.stdout}


def replay_bench(binary, workdir, count):
    """`postern replay` over `count` generated records (the layout `serve` writes: sessions of
    one or two transactions, 2,000 clients, 5,000 senders, a fifth with a subject the candidate
    refuses) against a candidate with a subject rule and a per-sender limit."""
    if subprocess.run([str(binary), "replay", "--help"], capture_output=True).returncode != 0:
        log("  skipped: this build has no `postern replay`")
        return None
    log_path = workdir / "replay-decisions.log"
    start_ms = 1_796_515_200_000
    rng = random.Random(7)
    with open(log_path, "w") as out:
        for index in range(count):
            ts = start_ms + index * 50
            ms = ts % 1000
            seconds = ts // 1000
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"
            client = f"198.51.{rng.randrange(8)}.{rng.randrange(250)}"
            sender = f"user{rng.randrange(5000)}@sender{rng.randrange(50)}.example"
            subject = "cheap pills today" if rng.random() < 0.2 else f"report {index}"
            out.write(json.dumps({
                "schema": 1, "ts": stamp, "id": f"R{index:08d}", "session": f"S{index // 2:08d}", "policy_version": "bench",
                "client": {"ip": client, "port": 40000 + index % 20000, "helo": "mail.client.example", "tls": None, "auth": None},
                "mail_from": sender, "rcpts": [{"address": f"rcpt{rng.randrange(100)}@example.org", "reply": "250 2.1.5 Ok"}],
                "size": 4096, "message_id": f"<{index}@client.example>", "subject": subject,
                "decision": "accepted", "stage": "data", "rule": None, "reason": None,
                "reply": {"code": 250, "enhanced": "2.0.0", "text": "Ok: queued"},
                "upstream": {"host": "127.0.0.1:2526", "reply": "250 2.0.0 Ok: queued", "queue_id": None},
                "shadow": [], "timings": {"total_ms": 3, "filters_ms": 0, "upstream_ms": 2}}, separators=(",", ":")) + "\n")
    candidate = workdir / "replay-candidate.yaml"
    candidate.write_text((ROOT / "Policies" / "default.yaml").read_text()
                         .replace("file: lists/", f"file: {ROOT / 'Policies' / 'lists'}/")
                         .replace("rules:\n", "limits:\n  bench_sender: { key: sender, count: messages, rate: 30/1h }\nrules:\n"
                                  "  - { id: bench-pills, stage: data, if: { subject: { regex: pills } }, then: reject }\n"
                                  "  - { id: bench-throttle, stage: rcpt, if: { limit: bench_sender }, then: tempfail }\n", 1))
    config = workdir / "replay-config.yaml"
    config.write_text("upstreams: [{ url: \"maildir:/nonexistent\" }]\nrelay_domains: [example.org]\n")
    command = [str(binary), "replay", "--config", str(config), "--policy", str(candidate), "--json", str(log_path)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    begun = time.monotonic()
    result = subprocess.run(["/usr/bin/time", "-f", "%M"] + command, capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - begun
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise BenchError(f"postern replay exited {result.returncode}: {result.stderr[-800:]}")
    report = json.loads(result.stdout)
    if report.get("replayed") != count:
        raise BenchError(f"postern replay replayed {report.get('replayed')} of {count} records")
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    entry = {"records": count, "seconds": round(seconds, 2), "records_per_second": round(count / seconds),
             "cpu_seconds": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
             "peak_rss_bytes": peak_kb * 1024, "changed": report["changed"], "by_change": report["by_change"],
             "log_bytes": log_path.stat().st_size}
    log(f"  {count:,} records ({entry['log_bytes'] / 1e6:.0f} MB) in {seconds:.1f} s ({entry['records_per_second']:,}/s), "
        f"CPU {entry['cpu_seconds']} s, peak RSS {peak_kb / 1024:.0f} MiB; changed {report['changed']:,} {report['by_change']}")
    log_path.unlink()
    return entry


# MARK: - Report

def environment(binary, quick):
    def run(args):
        try:
            return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    commit = run(["git", "rev-parse", "--short=12", "HEAD"]) or "unknown"
    if run(["git", "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    variables = [f"{name}={os.environ[name]}" for name in ("QUICK", "POSTERN_BINARY", "POLICY_BENCH_BINARY")
                 if os.environ.get(name)]
    command = os.environ.get("BENCH_COMMAND") or " ".join(
        variables + ["python3", os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": os.uname().release, "commit": commit,
        "command": command, "mode": "quick" if quick else "full",
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "postern": run([str(binary), "version"]) or str(binary),
        "postfix": run(["postconf", "-dh", "mail_version"]),
    }


def verdict(ok):
    return "PASS" if ok else "FAIL"


def ratio_target(cell):
    """The ratio a throughput cell must reach, or None (one session at 4 KB, the cost cells)."""
    if any(kind in cell["policy"] for kind in COST_POLICIES):
        return None
    if cell["policy"] != "default":
        return TARGET_RATIO_HEAVY
    if cell["size"] == KB4:
        return TARGET_RATIO_4K if cell["sessions"] > 1 else None
    return TARGET_RATIO_100K


def targets(cells, idle, big, replay=None):
    rows = []
    for cell in cells:
        need = ratio_target(cell)
        if need is None:
            continue
        rows.append((f"throughput, {cell['policy']} policy, {cell['size'] // 1024} KB, {plural(cell['sessions'], 'session')}",
                     f"{cell['ratio']:.2f} of the ceiling", f">= {need}", verdict(cell["ratio"] >= need)))
    for cell in cells:
        if cell["policy"] == "default" and cell["size"] == KB4:
            tools = cell["tools_cpu_ms_per_message"]
            rows.append((f"CPU per relayed 4 KB message, {plural(cell['sessions'], 'session')}",
                         f"{cell['cpu_ms_per_message']:.3f} ms ({cell['cpu_ms_per_message'] / tools:.2f}× smtp-source + smtp-sink's {tools:.3f} ms)",
                         f"<= {TARGET_CPU_TO_TOOLS}× smtp-source + smtp-sink", verdict(cell["cpu_ms_per_message"] <= TARGET_CPU_TO_TOOLS * tools)))
    plain = {(c["size"], c["sessions"]): c for c in cells if c["policy"] == "default"}
    for cell in cells:
        base = plain.get((cell["size"], cell["sessions"]))
        if cell["policy"] == CHECKS_POLICY and cell["size"] == KB100 and base:
            extra = cell["cpu_ms_per_message"] - base["cpu_ms_per_message"]
            rows.append((f"Postfix's 40 checks, 100 KB, {plural(cell['sessions'], 'session')}: CPU over the default policy",
                         f"+{extra:.3f} ms", f"<= +{TARGET_CHECKS_EXTRA_MS} ms", verdict(extra <= TARGET_CHECKS_EXTRA_MS)))
    if idle:
        rows.append((f"memory per idle connection ({idle['connections']} after EHLO)",
                     f"{idle['bytes_per_connection'] / 1000:.1f} KB", "<= 8 KB (8,000 bytes)",
                     verdict(idle["bytes_per_connection"] <= TARGET_IDLE_BYTES)))
    if big:
        rows.append(("RSS increase relaying a 50 MB message", f"{big['rss_increase_bytes'] / 1e6:.1f} MB",
                     "<= 20 MB (20,000,000 bytes)", verdict(big["rss_increase_bytes"] <= TARGET_BIG_RSS_BYTES)))
    if replay:
        per_million = replay["seconds"] * 1_000_000 / replay["records"]
        rows.append((f"postern replay, {replay['records']:,} records", f"{replay['seconds']:.1f} s ({per_million:.1f} s per million)",
                     "<= 60 s per million records", verdict(per_million <= TARGET_REPLAY_SECONDS_PER_MILLION)))
    return rows


def markdown(env, cells, latencies, idle, big, policy, rows, settings, pipelining=None, replay=None):
    out = [f"# Postern benchmark ({env['mode']} run)", "",
           f"- date: {env['date']}",
           f"- machine: {env['nproc']} CPUs ({env['cpu']}), Linux {env['kernel']}; load average "
           f"{' '.join(env['load_average_at_start'])} at the start, {' '.join(env['load_average_at_end'])} at the end",
           f"- commit: {env['commit']}; {env['postern']}; Postfix {env['postfix']} (smtp-source, smtp-sink)",
           f"- command: `{env['command']}` (took {env['duration_seconds'] // 60} min {env['duration_seconds'] % 60} s)",
           f"- {settings}",
           *([f"- **warning**: {env['warning']}"] if env.get("warning") else []),
           "", "## Targets", "",
           "| target | measured | threshold | result |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | **{d}** |" for a, b, c, d in rows]
    passed = sum(1 for r in rows if r[3] == "PASS")
    out += ["", f"{passed} of {len(rows)} targets met.", "",
            "## Throughput", "",
            "smtp-source → smtp-sink (ceiling) and smtp-source → Postern → smtp-sink, alternated; "
            "one connection per message. Rates are the medians of the rounds; the ratio is the median of each "
            "round's Postern rate over the direct rate just before it. CPU is Postern's user+system time per "
            "relayed message (median of the rounds); peak RSS is Postern's highest VmHWM in the cell's runs.", "",
            "| policy | size | sessions | ceiling msg/s | Postern msg/s | ratio | target | result | CPU ms/msg | smtp-source + smtp-sink CPU ms/msg | peak RSS MiB |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for c in cells:
        if any(kind in c["policy"] for kind in COST_POLICIES):
            continue
        need = ratio_target(c)
        out.append(f"| {c['policy']} | {c['size'] // 1024} KB | {c['sessions']} | {c['ceiling_rate']:.0f} | "
                   f"{c['postern_rate']:.0f} | {c['ratio']:.2f} | {need if need is not None else '–'} | "
                   f"{verdict(c['ratio'] >= need) if need is not None else '–'} | "
                   f"{c['cpu_ms_per_message']:.3f} | {c['tools_cpu_ms_per_message']:.3f} | {c['peak_rss_bytes'] / 2**20:.1f} |")
    plain = {(c["size"], c["sessions"]): c for c in cells if c["policy"] == "default"}

    def cost_section(kind, title, text, header, extra):
        """A section comparing the cells of `kind` with the default policy's same cells in this run."""
        chosen = [c for c in cells if kind in c["policy"]]
        if not chosen:
            return []
        lines = ["", title, "", text, "", header, "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if extra else "")]
        for c in chosen:
            base = plain.get((c["size"], c["sessions"]))
            without = f"{base['cpu_ms_per_message']:.3f}" if base else "n/a"
            lines.append(f"| {c['size'] // 1024} KB | {c['sessions']} | {c['ceiling_rate']:.0f} | {c['postern_rate']:.0f} | "
                         f"{c['ratio']:.2f} | {c['cpu_ms_per_message']:.3f} | {without} |" + (f" {extra(c)} |" if extra else ""))
        return lines

    out += cost_section(
        ENGINE_POLICY, "## With rspamd in the chain",
        "The default policy plus `milters: [rspamd]` (rspamd 3.4, one rspamd_proxy worker in milter mode "
        "scanning by itself, the stock rules without the network modules, no Hyperscan): every message "
        "goes through rspamd before it is relayed. Postern's CPU per message is compared with the same "
        "cell without the milter in this run; rspamd's is its own processes' user+system time.",
        "| size | sessions | ceiling msg/s | Postern + rspamd msg/s | ratio | Postern CPU ms/msg | without milter | rspamd CPU ms/msg |",
        lambda c: f"{c['engine_cpu_ms_per_message']:.3f}")
    out += cost_section(
        DNSBL_POLICY, "## With a DNS list at connect",
        "The default policy plus `dns:` (servers: a local stub DNS server, records with TTL 0, so nothing is "
        "cached) and one `dnsbl:` list with a connect rule: before each greeting Postern verifies the client's "
        "name (PTR, then A) and asks the list, every connection (smtp-source opens one per message).",
        "| size | sessions | ceiling msg/s | Postern msg/s | ratio | Postern CPU ms/msg | without DNS |", None)
    out += cost_section(
        CHECKS_POLICY, "## With Postfix's 40 header and body checks",
        "`Benchmarks/postfix_checks.yaml`: 20 `header.NAME` and 20 `body` regexes, the typical Postfix "
        "header_checks and body_checks, none matching smtp-source's messages. Postern parses every message and "
        "scans its body once for the body patterns (Hyperscan, PCRE2 confirming a hit). Compared with the "
        "default policy's same cell in this run, which has no content rules (no parse).",
        "| size | sessions | ceiling msg/s | Postern msg/s | ratio | Postern CPU ms/msg | default policy |", None)
    if pipelining:
        c = pipelining
        out += ["", "## With a pipelining client", "",
                "smtp-source sends one command at a time. This client (`smtp_clients.pipelined_run`, Python threads) "
                "sends MAIL, RCPT and DATA in one write (RFC 2920), then the message, 20 messages per connection, "
                "default policy; straight to smtp-sink and through Postern, alternated. The client's own CPU bounds "
                "both sides, so the ratio here says less about Postern than the CPU does.", "",
                "| size | sessions | messages per run | ceiling msg/s | Postern msg/s | ratio | Postern CPU ms/msg |",
                "|---|---:|---:|---:|---:|---:|---:|",
                f"| {c['size'] // 1024} KB | {c['sessions']} | {c['messages']} | {c['ceiling_rate']:.0f} | "
                f"{c['postern_rate']:.0f} | {c['ratio']:.2f} | {c['cpu_ms_per_message']:.3f} |"]
    out += ["", "## Added latency per message", "",
            "One 4 KB transaction at a time per connection (MAIL, RCPT, DATA, each waiting for its reply), "
            "default policy; wall time from MAIL to the final reply.", "",
            "| clients | transactions each side | direct p50 ms | direct p99 ms | Postern p50 ms | Postern p99 ms | added p50 ms | added p99 ms |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lat in latencies:
        out.append(f"| {lat['clients']} | {lat['transactions']} | {lat['direct']['p50_ms']:.3f} | {lat['direct']['p99_ms']:.3f} | "
                   f"{lat['postern']['p50_ms']:.3f} | {lat['postern']['p99_ms']:.3f} | "
                   f"{lat['added_p50_ms']:.3f} | {lat['added_p99_ms']:.3f} |")
    out += ["", "## Memory", ""]
    if idle:
        out.append(f"- Idle connections: {idle['connections']} connections held after EHLO; Postern's RSS "
                   f"{idle['rss_before_bytes'] / 2**20:.1f} MiB before, {idle['rss_held_bytes'] / 2**20:.1f} MiB while held "
                   f"(**{idle['bytes_per_connection']:.0f} bytes per connection**), "
                   f"{idle['rss_after_close_bytes'] / 2**20:.1f} MiB after closing them; opened in {idle['open_seconds']:.1f} s.")
    if big:
        hwm = f"{big['vmhwm_bytes'] / 2**20:.1f} MiB" if big["vmhwm_bytes"] else "n/a"
        out.append(f"- One {big['message_bytes']:,}-octet message: Postern's RSS {big['rss_baseline_bytes'] / 2**20:.1f} MiB "
                   f"before, peak {max(big['rss_peak_sampled_bytes'], big['vmhwm_bytes'] or 0) / 2**20:.1f} MiB "
                   f"(VmHWM {hwm}; sampled every 50 ms: {big['rss_peak_sampled_bytes'] / 2**20:.1f} MiB), "
                   f"**+{big['rss_increase_bytes'] / 1e6:.1f} MB**; relayed in {big['seconds']:.2f} s; "
                   f"smtp-sink's reply: `{big['reply']}`.")
    if replay:
        out += ["", "## Replay", "",
                f"`postern replay --json` of {replay['records']:,} generated records ({replay['log_bytes'] / 1e6:.0f} MB) against "
                f"the default policy plus a subject rule and a per-sender limit: **{replay['seconds']:.1f} s** "
                f"({replay['records_per_second']:,} records/s), CPU {replay['cpu_seconds']} s, peak RSS "
                f"{replay['peak_rss_bytes'] / 2**20:.0f} MiB; {replay['changed']:,} changed ({replay['by_change']})."]
    if policy:
        out += ["", "## Policy engine (postern-policy-bench)", "", f"`{policy['command']}`", "", "```",
                policy["output"].rstrip(), "```"]
    out += ["", "![throughput](throughput.png)", ""]
    return "\n".join(out)


def chart(cells, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("  matplotlib is not installed: no chart (python3 -m pip install matplotlib)")
        return False
    groups = {}
    for cell in cells:
        groups.setdefault((cell["policy"], cell["size"]), []).append(cell)
    columns = min(2, len(groups))
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.8 * rows), squeeze=False)
    for axis in axes.flat[len(groups):]:
        axis.set_visible(False)
    for axis, ((policy, size), group) in zip(axes.flat, groups.items()):
        group.sort(key=lambda c: c["sessions"])
        x = list(range(len(group)))
        width = 0.38
        axis.bar([i - width / 2 for i in x], [c["ceiling_rate"] for c in group], width, label="ceiling (direct)", color="#9aa5b1")
        axis.bar([i + width / 2 for i in x], [c["postern_rate"] for c in group], width, label="Postern", color="#2b6cb0")
        for i, c in zip(x, group):
            axis.annotate(f"{c['ratio']:.2f}", (i + width / 2, c["postern_rate"]), ha="center", va="bottom", fontsize=8)
        axis.set_xticks(x, [str(c["sessions"]) for c in group])
        axis.set_xlabel("concurrent sessions")
        axis.set_ylabel("messages/s")
        axis.set_title(f"{policy} policy, {size // 1024} KB")
        axis.legend(fontsize=8)
    fig.suptitle("smtp-source throughput: straight to smtp-sink vs through Postern (ratio on the bars)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# MARK: - Main

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "Benchmarks" / "results"), help="where the results go")
    options = parser.parse_args()
    quick = os.environ.get("QUICK", "") not in ("", "0")
    binary = Path(os.environ.get("POSTERN_BINARY", ROOT / ".build" / "release" / "postern")).resolve()
    if not binary.exists():
        sys.exit(f"bench: {binary} not found: build it with `swift build -c release --product postern`")
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    if quick:
        plan = [("default", KB4, 1), ("default", KB4, 10), ("default", KB4, 100),
                ("default", KB100, 10), ("heavy", KB4, 10)]
        rounds, seconds, idle_count = 1, 1.0, 2000
        latency_plan = [(300, 1), (40, 10)]
    else:
        plan = [(policy, size, sessions) for policy in ("default", "heavy")
                for size in (KB4, KB100) for sessions in (1, 10, 100)]
        rounds, seconds, idle_count = 3, 3.0, 10_000
        latency_plan = [(2000, 1), (300, 10)]
    settings = (f"{rounds} round{'s' if rounds > 1 else ''} per cell, each run about {seconds:.0f} s; "
                f"idle test {idle_count} connections; Postern at its default log level (info, one line per message)")
    started = time.monotonic()
    env = environment(binary, quick)
    log(f"postern bench ({env['mode']}): {binary}, commit {env['commit']}, {env['nproc']} CPUs ({env['cpu']})")
    load = float(env["load_average_at_start"][0])
    if load > (os.cpu_count() or 1) / 2:
        env["warning"] = (f"the load average was {load:.1f} on {os.cpu_count()} CPUs when the benchmark started: other "
                          "processes compete for the CPUs, so the throughput ratios and latencies are unreliable "
                          "(CPU per message and memory much less so)")
        log(f"warning: {env['warning']}")

    workdir = Path(tempfile.mkdtemp(prefix="postern-bench-"))
    processes = []
    try:
        sink = Sink(workdir)
        processes.append(sink)
        heavy = heavy_policy.write(workdir)
        check = subprocess.run([str(binary), "check", "--policy", str(heavy)], capture_output=True, text=True)
        if check.returncode != 0:
            raise BenchError(f"the generated heavy policy does not check:\n{check.stdout[-2000:]}{check.stderr[-2000:]}")
        log(f"heavy policy: {heavy_policy.RULES} rules, {heavy_policy.REGEXES} regexes, GeoIP, 3 rate limits: "
            f"{check.stdout.strip().splitlines()[-1]}")

        cells, latencies = [], []
        for policy_name, policy_path in (("default", ROOT / "Policies" / "default.yaml"), ("heavy", heavy)):
            wanted = [(size, sessions) for p, size, sessions in plan if p == policy_name]
            if not wanted:
                continue
            log(f"throughput, {policy_name} policy:")
            postern = Postern(binary, workdir, policy_name, sink.port, policy=policy_path)
            processes.append(postern)
            for size, sessions in wanted:
                cells.append(throughput_cell(sink, postern, policy_name, sessions, size, rounds, seconds))
            if policy_name == "default":
                for transactions, clients in latency_plan:
                    latencies.append(latency(sink, postern, transactions, clients))
                pipelining = pipelining_cell(sink, postern, 10, KB4, rounds, 1000 if quick else 4000)
            if not postern.alive():
                raise BenchError(f"postern ({policy_name}) died: {postern.stderr_tail()}")
            postern.stop()
            processes.remove(postern)

        engine_plan = [(KB4, 10)] if quick else [(KB4, 1), (KB4, 10), (KB100, 10)]
        rspamd = rspamd_engine.start(workdir)
        if rspamd is None:
            log("throughput with rspamd: skipped (rspamd is not installed)")
        else:
            processes.append(rspamd)
            log(f"throughput, default policy + rspamd ({rspamd.milter_address}):")
            postern = Postern(binary, workdir, "rspamd", sink.port, policy=ROOT / "Policies" / "default.yaml",
                              extra=["milters:", f'  - {{ name: rspamd, address: "{rspamd.milter_address}" }}'], engine=rspamd)
            processes.append(postern)
            for size, sessions in engine_plan:
                cells.append(throughput_cell(sink, postern, f"default + {ENGINE_POLICY}", sessions, size, rounds, seconds))
            postern.stop()
            processes.remove(postern)
            rspamd.stop()
            processes.remove(rspamd)

        dnsbl_plan = [(KB4, 10)] if quick else [(KB4, 1), (KB4, 10), (KB4, 100)]
        log("throughput, default policy + a DNS list at connect (stub DNS server, TTL 0):")
        records = workdir / "dns-records"
        records.write_text("1.0.0.127.in-addr.arpa\tPTR\tlocalhost.bench.test\nlocalhost.bench.test\tA\t127.0.0.1\n"
                           "2.0.0.127.bl.bench.test\tA\t127.0.0.2\n")
        dns_port = free_port()
        stub = subprocess.Popen([sys.executable, str(STUB_DNS), "127.0.0.1", str(dns_port), str(records), "0"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            if not stub.stdout.readline().startswith(b"READY"):
                raise BenchError("the stub DNS server did not start")
            dnsbl_policy = workdir / "dnsbl.yaml"
            dnsbl_policy.write_text((ROOT / "Policies" / "default.yaml").read_text() + "\n")
            text = dnsbl_policy.read_text().replace("file: lists/", f"file: {ROOT / 'Policies' / 'lists'}/")
            rule = ("  - id: bench-dnsbl\n    stage: connect\n    if: { dnsbl: bench }\n    then: reject\n")
            text = text.replace("rules:\n", "dnsbl:\n  - { name: bench, zone: bl.bench.test }\nrules:\n" + rule, 1)
            dnsbl_policy.write_text(text)
            postern = Postern(binary, workdir, "dnsbl", sink.port, policy=dnsbl_policy,
                              extra=[f'dns: {{ servers: ["127.0.0.1:{dns_port}"], timeout: 2s, cache_size: 0 }}'])
            processes.append(postern)
            for size, sessions in dnsbl_plan:
                cells.append(throughput_cell(sink, postern, f"default + {DNSBL_POLICY}", sessions, size, rounds, seconds))
            postern.stop()
            processes.remove(postern)
        finally:
            stub.terminate()
            stub.wait()

        checks_plan = [(KB100, 10)] if quick else [(KB100, 1), (KB100, 10), (KB100, 100)]
        log("throughput, Postfix's 40 header and body checks:")
        postern = Postern(binary, workdir, "checks", sink.port, policy=ROOT / "Benchmarks" / "postfix_checks.yaml")
        processes.append(postern)
        for size, sessions in checks_plan:
            cells.append(throughput_cell(sink, postern, CHECKS_POLICY, sessions, size, rounds, seconds))
        postern.stop()
        processes.remove(postern)

        log("memory:")
        idle = idle_connections(binary, workdir, sink, idle_count)
        big = big_message(binary, workdir, sink, BIG)
        log("replay:")
        replay = replay_bench(binary, workdir, 100_000 if quick else 1_000_000)
        log("policy engine (postern-policy-bench):")
        policy = policy_bench(quick)
    except (BenchError, OSError) as error:
        for process in processes:
            if isinstance(process, Postern):
                tail = process.stderr_tail()
                if tail:
                    log(f"--- postern ({process.name}) stderr ---\n{tail}")
        log(f"bench: FAILED: {error}")
        return 1
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    env["load_average_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    env["duration_seconds"] = round(time.monotonic() - started)
    rows = targets(cells, idle, big, replay)
    report = markdown(env, cells, latencies, idle, big, policy, rows, settings, pipelining, replay)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps({
        "environment": env, "settings": settings, "targets": [dict(zip(("target", "measured", "threshold", "result"), r)) for r in rows],
        "throughput": cells, "pipelining": pipelining, "latency": latencies, "idle_connections": idle, "big_message": big,
        "replay": replay, "policy_bench": policy}, indent=2) + "\n")
    drew = chart(cells, out / "throughput.png")
    log("")
    log(report.replace("![throughput](throughput.png)", ""))
    log(f"written: {out / 'results.md'}, {out / 'results.json'}" + (f", {out / 'throughput.png'}" if drew else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
