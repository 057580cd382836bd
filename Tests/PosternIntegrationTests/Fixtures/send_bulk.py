#!/usr/bin/env python3
"""Send N messages with random 8-bit content through SMTP with smtplib.

    send_bulk.py --port P --count N --out DIR [--connections K] [--seed S]
                 [--from ADDR] [--to ADDR[,ADDR...]] [--smtputf8]

Each message carries "X-Test-Seq: <i>" and has many lines beginning with "." (so dot-stuffing
is exercised), random bytes 0x01-0xFF except CR and LF, CRLF line endings, lines < 1000 octets.
The exact bytes handed to smtplib are written to DIR/sent-<i>.eml. Prints a JSON summary:
{"sent": n, "refused": {...}, "errors": [...]}. Exit 0 if every message got 250.
"""

import argparse
import json
import os
import random
import smtplib
import sys
import threading

BYTES = [b for b in range(1, 256) if b not in (10, 13)]


def make_message(rng, seq, mail_from, rcpts):
    lines = [
        b"From: <" + mail_from.encode() + b">",
        b"To: " + b", ".join(b"<" + r.encode() + b">" for r in rcpts),
        b"Subject: bulk message " + str(seq).encode(),
        b"X-Test-Seq: " + str(seq).encode(),
        b"MIME-Version: 1.0",
        b"Content-Type: application/octet-stream",
        b"Content-Transfer-Encoding: 8bit",
        b"",
    ]
    for _ in range(rng.randrange(5, 80)):
        c = rng.random()
        if c < 0.30:
            lines.append(rng.choice([b".", b"..", b"...", b". ", b".\t.", b".From x", b".\xff\xfe"]))
        elif c < 0.40:
            lines.append(b"." + bytes(rng.choice(BYTES) for _ in range(rng.randrange(0, 120))))
        elif c < 0.45:
            lines.append(b"")
        else:
            lines.append(bytes(rng.choice(BYTES) for _ in range(rng.randrange(0, 300))))
    # sometimes end with a lone dot line right before the terminator
    if rng.random() < 0.3:
        lines.append(b".")
    return b"\r\n".join(lines) + b"\r\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--first", type=int, default=1, help="first sequence number")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=5321)
    ap.add_argument("--from", dest="mail_from", default="bulk-sender@client.test")
    ap.add_argument("--to", default="bulk-rcpt@example.test")
    ap.add_argument("--smtputf8", action="store_true")
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()

    os.makedirs(args.out, exist_ok=True)
    rcpts = args.to.split(",")
    seqs = list(range(args.first, args.first + args.count))
    shards = [seqs[i :: args.connections] for i in range(args.connections)]
    lock = threading.Lock()
    summary = {"sent": 0, "refused": {}, "errors": []}

    def worker(shard):
        rng = random.Random(args.seed * 7919 + (shard[0] if shard else 0))
        try:
            client = smtplib.SMTP(args.host, args.port, local_hostname="bulk.client.test", timeout=args.timeout)
            client.ehlo("bulk.client.test")
            opts = ["BODY=8BITMIME"] + (["SMTPUTF8"] if args.smtputf8 else [])
            for seq in shard:
                msg = make_message(rng, seq, args.mail_from, rcpts)
                with open(os.path.join(args.out, "sent-%d.eml" % seq), "wb") as f:
                    f.write(msg)
                try:
                    refused = client.sendmail(args.mail_from, rcpts, msg, mail_options=opts)
                    with lock:
                        summary["sent"] += 1
                        if refused:
                            summary["refused"][str(seq)] = {k: [v[0], v[1].decode("utf-8", "replace")] for k, v in refused.items()}
                except smtplib.SMTPException as e:
                    with lock:
                        summary["errors"].append("seq %d: %r" % (seq, e))
                    try:
                        client.rset()
                    except smtplib.SMTPException:
                        client = smtplib.SMTP(args.host, args.port, local_hostname="bulk.client.test", timeout=args.timeout)
                        client.ehlo("bulk.client.test")
            client.quit()
        except Exception as e:  # noqa: BLE001 - report everything
            with lock:
                summary["errors"].append("worker: %r" % (e,))

    threads = [threading.Thread(target=worker, args=(s,)) for s in shards if s]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(0 if summary["sent"] == args.count and not summary["errors"] else 1)


if __name__ == "__main__":
    main()
