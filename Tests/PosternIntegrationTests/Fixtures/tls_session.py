#!/usr/bin/env python3
"""A STARTTLS session held open across a certificate reload.

Connects, upgrades with STARTTLS, prints the server certificate's SHA-256 fingerprint
(`fingerprint=HEX`), waits until the file GO exists, then sends one message in the same
session and prints `sent=CODE` and the fingerprint again (`after=HEX`).
"""
import argparse
import hashlib
import os
import smtplib
import ssl
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--go", required=True)
parser.add_argument("--timeout", type=float, default=30)
args = parser.parse_args()

context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
client = smtplib.SMTP("127.0.0.1", args.port, timeout=args.timeout)
client.ehlo("held.test")
client.starttls(context=context)
client.ehlo("held.test")


def fingerprint():
    return hashlib.sha256(client.sock.getpeercert(binary_form=True)).hexdigest().upper()


print(f"fingerprint={fingerprint()}", flush=True)
deadline = time.monotonic() + args.timeout
while not os.path.exists(args.go):
    if time.monotonic() > deadline:
        print("no go file", file=sys.stderr)
        sys.exit(2)
    time.sleep(0.05)
client.mail("held@client.test")
client.rcpt("r@example.test")
code, _ = client.data(b"Subject: held across the reload\r\n\r\nbody\r\n")
print(f"sent={code}", flush=True)
print(f"after={fingerprint()}", flush=True)
client.quit()
