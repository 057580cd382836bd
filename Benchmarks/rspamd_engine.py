"""rspamd for the benchmark's milter cells: one rspamd_proxy worker in milter mode that scans by
itself (self_scan), with the stock rules and the modules that need the network, Redis or
maps.rspamd.com turned off (as in the integration tests), on a free loopback port.

    engine = rspamd_engine.start(workdir)      # None when rspamd is not installed
    engine.milter_address                      # inet:127.0.0.1:PORT, for Postern's milters:
    engine.cpu_seconds()                       # user+system time of the main process and its workers
    engine.stop()

Hyperscan is off (`disable_hyperscan`): compiling the stock rules' database takes minutes at
start, and the regexes then run through PCRE, as on a machine without Hyperscan.
"""
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

DISABLED_MODULES = [
    "arc", "asn", "bimi", "dkim", "dkim_signing", "dmarc", "fuzzy_check", "greylist", "hfilter",
    "history_redis", "mid", "mime_types", "multimap", "mx_check", "neural", "phishing", "ratelimit",
    "rbl", "replies", "reputation", "spf", "url_redirector", "whitelist",
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Rspamd:
    def __init__(self, workdir):
        self.dir = Path(workdir) / "rspamd"
        local = self.dir / "local.d"
        for d in (local, self.dir / "db", self.dir / "run"):
            d.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        dead_dns = _free_port()
        tld = self.dir / "tld.dat"
        tld.write_text("".join(f"{t}\n" for t in ("com", "net", "org", "test", "example", "invalid", "localhost")))
        (self.dir / "rspamd.conf").write_text(f""".include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{ type = "file"; filename = "{self.dir}/rspamd.log"; level = "warning"; }}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{self.port}";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" {{ default = yes; self_scan = yes; }}
}}
""")
        (local / "options.inc").write_text(f"""disable_hyperscan = true;
url_tld = "{tld}";
dns {{ nameserver = ["127.0.0.1:{dead_dns}"]; timeout = 0.2s; retransmits = 1; }}
""")
        for module in DISABLED_MODULES:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        args = [shutil.which("rspamd") or "/usr/bin/rspamd", "-f", "-c", str(self.dir / "rspamd.conf"),
                f"--var=LOCAL_CONFDIR={self.dir}", f"--var=DBDIR={self.dir / 'db'}",
                f"--var=RUNDIR={self.dir / 'run'}", f"--var=LOGDIR={self.dir}"] + (["-i"] if os.getuid() == 0 else [])
        self._out = open(self.dir / "stdout", "wb")
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        deadline = time.monotonic() + 120
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"rspamd did not start: {(self.dir / 'stdout').read_text()[-800:]}")
            time.sleep(0.1)

    @property
    def milter_address(self):
        return f"inet:127.0.0.1:{self.port}"

    def _children(self):
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.pid:
                    pids.append(int(entry.name))
        return pids

    def cpu_seconds(self):
        total = 0
        for pid in [self.pid] + self._children():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def stop(self):
        children = self._children() if self.process.poll() is None else []
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in children:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        self._out.close()


def start(workdir):
    if not shutil.which("rspamd"):
        return None
    return Rspamd(workdir)
