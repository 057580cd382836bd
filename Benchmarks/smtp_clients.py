"""Raw-socket SMTP clients for `make bench`: idle connections, per-transaction latency, one big message.

Plain sockets rather than smtplib where timing matters, so the client's own cost is small and the
same for both targets (smtp-sink directly and Postern). Every reply is checked: an unexpected one
raises BenchError with what the server said.
"""
import random
import socket
import threading
import time


class BenchError(Exception):
    pass


class Connection:
    """One SMTP client connection: send a line, read a (multi-line) reply."""

    def __init__(self, port, timeout=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def reply(self):
        """The next reply: (code, text of the last line)."""
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise BenchError("connection closed by the server")
                self.buffer += chunk
                continue
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), line.decode("latin-1")

    def expect(self, code, what):
        got, text = self.reply()
        if got != code:
            raise BenchError(f"{what}: expected {code}, got: {text}")
        return text

    def command(self, line, code):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.expect(code, line.split(" ")[0] if line else "line")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def message_body(size, subject="benchmark latency"):
    """A message of about `size` octets, CRLF lines of 78 characters, dot-terminated."""
    header = (f"From: <sender@bench.example>\r\nTo: <rcpt@sink.example>\r\nSubject: {subject}\r\n"
              "Message-ID: <latency@bench.client.example>\r\n\r\n").encode()
    line = b"X" * 76 + b"\r\n"
    count = max(1, (size - len(header)) // len(line))
    return header + line * count + b".\r\n"


def transaction(conn, body):
    """One MAIL/RCPT/DATA transaction, one command at a time (no pipelining)."""
    conn.command("MAIL FROM:<sender@bench.example>", 250)
    conn.command("RCPT TO:<rcpt@sink.example>", 250)
    conn.command("DATA", 354)
    conn.sock.sendall(body)
    conn.expect(250, "end of DATA")


def latency_samples(port, transactions, size=4096, clients=1, warmup=20):
    """Wall time of each transaction (seconds), `clients` connections in parallel, each doing
    `transactions` sequential transactions after `warmup` untimed ones on the same connection."""
    body = message_body(size)
    samples = [[] for _ in range(clients)]
    errors = []

    def run(index):
        try:
            conn = Connection(port)
            conn.expect(220, "greeting")
            conn.command("EHLO bench.client.example", 250)
            for _ in range(warmup):
                transaction(conn, body)
            out = samples[index]
            clock = time.perf_counter
            for _ in range(transactions):
                start = clock()
                transaction(conn, body)
                out.append(clock() - start)
            conn.command("QUIT", 221)
            conn.close()
        except (OSError, BenchError) as error:
            errors.append(f"client {index}: {error}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise BenchError("; ".join(errors[:3]))
    return [s for per_client in samples for s in per_client]


def open_idle(port, count, timeout=30.0):
    """Opens `count` connections, each greeted and past EHLO. Returns them (the caller closes)."""
    connections = []
    try:
        for i in range(count):
            conn = Connection(port, timeout=timeout)
            connections.append(conn)
            conn.expect(220, f"greeting of connection {i + 1}")
            conn.command("EHLO bench.client.example", 250)
    except (OSError, BenchError):
        close_all(connections)
        raise
    return connections


def close_all(connections):
    for conn in connections:
        conn.close()


def big_message(size):
    """A message of exactly `size` octets after the header: CRLF lines of at most 998 octets,
    varied text (not one repeated byte), no line starting with a dot. Returns the DATA stream
    including the final dot."""
    rng = random.Random(42)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(4096)]
    line_words = [b" ".join(rng.choice(words) for _ in range(12)) for _ in range(512)]
    header = (b"From: <sender@bench.example>\r\nTo: <rcpt@sink.example>\r\nSubject: a big message\r\n"
              b"Message-ID: <big@bench.client.example>\r\n\r\n")
    chunks = [header]
    total = len(header)
    i = 0
    while total < size:
        line = line_words[i % len(line_words)][:996] + b"\r\n"
        chunks.append(line)
        total += len(line)
        i += 1
    return b"".join(chunks) + b".\r\n"


def send_big(port, data, chunk=256 * 1024):
    """Sends one message (a DATA stream from big_message); returns the final reply text."""
    conn = Connection(port, timeout=300)
    try:
        conn.expect(220, "greeting")
        conn.command("EHLO bench.client.example", 250)
        conn.command(f"MAIL FROM:<sender@bench.example> SIZE={len(data)}", 250)
        conn.command("RCPT TO:<rcpt@sink.example>", 250)
        conn.command("DATA", 354)
        view = memoryview(data)
        for offset in range(0, len(data), chunk):
            conn.sock.sendall(view[offset:offset + chunk])
        text = conn.expect(250, "end of DATA")
        conn.command("QUIT", 221)
        return text
    finally:
        conn.close()


def pipelined_run(port, sessions, messages, size, per_connection=20):
    """`messages` transactions over `sessions` parallel connections, `per_connection` on each,
    pipelined as RFC 2920 allows (smtp-source does not): MAIL, RCPT and DATA in one write,
    their three replies read together, then the message. Returns the wall time in seconds."""
    body = message_body(size, subject="benchmark pipelining")
    group = b"MAIL FROM:<sender@bench.example>\r\nRCPT TO:<rcpt@sink.example>\r\nDATA\r\n"
    counts = [messages // sessions + (1 if i < messages % sessions else 0) for i in range(sessions)]
    errors = []

    def worker(count):
        try:
            while count > 0:
                conn = Connection(port)
                try:
                    conn.expect(220, "greeting")
                    conn.command("EHLO bench.client.example", 250)
                    for _ in range(min(count, per_connection)):
                        conn.sock.sendall(group)
                        conn.expect(250, "MAIL (pipelined)")
                        conn.expect(250, "RCPT (pipelined)")
                        conn.expect(354, "DATA (pipelined)")
                        conn.sock.sendall(body)
                        conn.expect(250, "end of DATA")
                        count -= 1
                    conn.command("QUIT", 221)
                finally:
                    conn.close()
        except (OSError, BenchError) as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(count,)) for count in counts if count > 0]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    if errors:
        raise BenchError(f"pipelining client: {errors[0]}")
    return elapsed
