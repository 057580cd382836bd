#!/usr/bin/env python3
"""systemd's part in a restart under load, played by a script.

    socket_activation.py --mode activate|bind --port P --maildir DIR [--restarts N]
                         [--uptime S] [--connections K] [--reload] -- postern serve --config FILE

`activate`: the script holds the listening socket, as systemd does for postern.socket, and
starts each generation of Postern with it as fd 3 (LISTEN_FDS=1, LISTEN_FDNAMES=smtp,
LISTEN_PID the child's pid), as sd_listen_fds(3) expects. `bind`: Postern binds the port
itself (the configuration must listen on it), as without socket activation.

Either way the script gives each generation a NOTIFY_SOCKET, waits for its READY=1, lets it
serve for --uptime seconds (sending SIGHUP once halfway with --reload), then SIGTERM and
waits for it to exit before starting the next: --restarts restarts in all. Meanwhile K
clients send mail continuously with smtplib, each message with a unique X-Load-ID; a refused
connection is counted and retried. At the end it reads the Maildir and prints one JSON
object: connections refused, messages acknowledged (250), acknowledged but not delivered
(lost), delivered without a 250 (unacknowledged, legitimate for an interrupted session), and
every notification with the generation that sent it.
"""

import argparse
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ap = argparse.ArgumentParser()
ap.add_argument("--mode", choices=["activate", "bind"], required=True)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--maildir", required=True)
ap.add_argument("--restarts", type=int, default=5)
ap.add_argument("--uptime", type=float, default=2.0)
ap.add_argument("--connections", type=int, default=4)
ap.add_argument("--reload", action="store_true")
ap.add_argument("--log", default=os.devnull, help="where Postern's standard error goes")
ap.add_argument("command", nargs=argparse.REMAINDER)
args = ap.parse_args()
command = args.command[1:] if args.command[:1] == ["--"] else args.command

# The notification socket, read in the background.
notify_dir = tempfile.mkdtemp(prefix="notify-")
notify_path = os.path.join(notify_dir, "notify")
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.bind(notify_path)
notifications = []  # (generation, message)
generation = 0
ready = threading.Event()
lock = threading.Lock()


def read_notifications():
    while True:
        try:
            data = notify.recv(4096)
        except OSError:
            return
        text = data.decode("utf-8", "replace")
        with lock:
            notifications.append((generation, text))
        if "READY=1" in text.split("\n"):
            ready.set()


threading.Thread(target=read_notifications, daemon=True).start()

listener = None
if args.mode == "activate":
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(512)


log = open(args.log, "ab")


os.environ["NOTIFY_SOCKET"] = notify_path
for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
    os.environ.pop(name, None)


def start():
    if listener is None:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    source = listener.fileno()

    def hand_over():
        # In the child, before exec: the socket becomes fd 3, and LISTEN_PID names the child.
        # (No env= for Popen: the child then execs with the environment putenv changed.)
        os.dup2(source, 3)
        os.putenv("LISTEN_PID", str(os.getpid()))
        os.putenv("LISTEN_FDS", "1")
        os.putenv("LISTEN_FDNAMES", "smtp")

    return subprocess.Popen(command, preexec_fn=hand_over, pass_fds=(3,), stdout=subprocess.DEVNULL, stderr=log)


# The load.
stop = threading.Event()
counts = {"refused": 0, "tempfailed": 0, "errors": 0, "attempts": 0}
acknowledged = set()
last_errors = []


def client(index):
    while not stop.is_set():
        load_id = uuid.uuid4().hex
        with lock:
            counts["attempts"] += 1
        try:
            smtp = smtplib.SMTP("127.0.0.1", args.port, timeout=30)
            try:
                smtp.ehlo("load.test")
                smtp.sendmail("load@client.test", ["r@example.test"],
                              f"Subject: load\r\nX-Load-ID: {load_id}\r\n\r\nbody\r\n".encode())
                # 250 to the end of the message: acknowledged, whatever QUIT then gets (a
                # draining server may already have said 421 and closed).
                with lock:
                    acknowledged.add(load_id)
                smtp.quit()
            finally:
                smtp.close()
        except ConnectionRefusedError:
            with lock:
                counts["refused"] += 1
            time.sleep(0.01)
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as error:
            with lock:
                counts["tempfailed"] += 1
                last_errors[-5:] = [repr(error)]
            time.sleep(0.01)
        except (smtplib.SMTPException, OSError) as error:
            with lock:
                counts["errors"] += 1
                last_errors[-5:] = [repr(error)]
            time.sleep(0.01)


threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.connections)]
problems = []
process = start()
if not ready.wait(20):
    problems.append("generation 0 never sent READY=1")
for thread in threads:
    thread.start()
for restart in range(args.restarts + 1):
    if args.reload:
        time.sleep(args.uptime / 2)
        process.send_signal(signal.SIGHUP)
        time.sleep(args.uptime / 2)
    else:
        time.sleep(args.uptime)
    if restart == args.restarts:
        break
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(60)
    except subprocess.TimeoutExpired:
        problems.append(f"generation {generation} did not stop")
        process.kill()
        status = process.wait()
    if status != 0:
        problems.append(f"generation {generation} exited with {status}")
    with lock:
        generation += 1
        ready.clear()
    process = start()
    if not ready.wait(20):
        problems.append(f"generation {generation} never sent READY=1")
stop.set()
for thread in threads:
    thread.join(60)
process.send_signal(signal.SIGTERM)
try:
    process.wait(60)
except subprocess.TimeoutExpired:
    process.kill()
time.sleep(0.2)
notify.close()

delivered = set()
for folder in ("new", "cur"):
    path = os.path.join(args.maildir, folder)
    for name in os.listdir(path) if os.path.isdir(path) else []:
        with open(os.path.join(path, name), "rb") as message:
            for line in message.read().splitlines():
                if line.startswith(b"X-Load-ID: "):
                    delivered.add(line[len(b"X-Load-ID: "):].decode().strip())
print(json.dumps({
    "mode": args.mode,
    "restarts": args.restarts,
    "attempts": counts["attempts"],
    "refused": counts["refused"],
    "tempfailed": counts["tempfailed"],
    "errors": counts["errors"],
    "last_errors": last_errors,
    "acknowledged": len(acknowledged),
    "lost": len(acknowledged - delivered),
    "unacknowledged_delivered": len(delivered - acknowledged),
    "notifications": [[g, text] for g, text in notifications],
    "problems": problems,
}))
