#!/usr/bin/env python3
"""The heavy policy for `make bench`: 1,000 rules, 500 of them regexes, GeoIP and 3 rate limits.

    python3 Benchmarks/heavy_policy.py DIR      # writes DIR/heavy.yaml and prints its path

The shape follows Benchmarks/PolicyBench (the same stages, patterns and counts), with 11 of its
client_ip rules replaced by 10 GeoIP rules (country, continent, ASN against the test fixtures in
Tests/PosternNativeTests/Fixtures) and the connection-limit rule, and one plain sender and one
plain recipient rule replaced by the message- and recipient-limit rules. The 3 limits are so high
that they never refuse. No rule matches the benchmark's mail (smtp-source from 127.0.0.1, HELO
bench.client.example, sender@bench.example to rcpt@sink.example, Subject "benchmark message", a
body of X lines), so every rule is evaluated for every transaction and every message is relayed:
the benchmark checks that each one was accepted.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "Tests" / "PosternNativeTests" / "Fixtures"

# Rule counts by kind. The totals are checked below: 1,000 rules, 500 regexes.
CONNECT_CIDR = 89
CONNECT_COUNTRY, CONNECT_CONTINENT, CONNECT_ASN = 5, 2, 3
HELO_REGEX, HELO_PLAIN = 25, 25
SENDER_REGEX, SENDER_PLAIN = 100, 99
RCPT_REGEX, RCPT_PLAIN = 100, 99
SUBJECT_REGEX, BODY_REGEX, HEADER_REGEX, ATTACHMENT_NAME_REGEX, RAW_REGEX = 75, 100, 50, 25, 25
DATA_PLAIN = 175
LIMIT_RULES = 3  # one per limit: connect, mail, rcpt

RULES = (CONNECT_CIDR + CONNECT_COUNTRY + CONNECT_CONTINENT + CONNECT_ASN + HELO_REGEX + HELO_PLAIN
         + SENDER_REGEX + SENDER_PLAIN + RCPT_REGEX + RCPT_PLAIN + SUBJECT_REGEX + BODY_REGEX
         + HEADER_REGEX + ATTACHMENT_NAME_REGEX + RAW_REGEX + DATA_PLAIN + LIMIT_RULES)
REGEXES = (HELO_REGEX + SENDER_REGEX + RCPT_REGEX + SUBJECT_REGEX + BODY_REGEX + HEADER_REGEX
           + ATTACHMENT_NAME_REGEX + RAW_REGEX)
assert RULES == 1000 and REGEXES == 500, (RULES, REGEXES)

# Country codes that the fixtures do not give 127.0.0.1 (nothing does: it is "unknown").
COUNTRY_SETS = [["KP", "IR"], ["SY", "CU"], ["RU", "BY"], ["CN", "HK", "MO"], ["NG", "GH", "BJ"]]
CONTINENT_SETS = [["AN"], ["AF", "OC"]]
ASN_SETS = [[64496], [64497, 64498], [64511, 4200000000]]


def policy_yaml() -> str:
    rules = []

    def rule(rule_id, stage, condition, then="reject"):
        rules.append(f"  - {{ id: {rule_id}, stage: {stage}, if: {condition}, then: {then} }}")

    # connect: CIDR blocks, GeoIP, the connection limit.
    for i in range(CONNECT_CIDR):
        rule(f"net-{i}", "connect", f'{{ client_ip: ["100.{64 + i // 200}.{i % 200}.0/24", "2001:db8:ff{i % 256:02x}::/48"] }}')
    for i in range(CONNECT_COUNTRY):
        rule(f"country-{i}", "connect", f"{{ country: [{', '.join(COUNTRY_SETS[i])}] }}")
    for i in range(CONNECT_CONTINENT):
        rule(f"continent-{i}", "connect", f"{{ continent: [{', '.join(CONTINENT_SETS[i])}] }}")
    for i in range(CONNECT_ASN):
        rule(f"asn-{i}", "connect", f"{{ asn: [{', '.join(str(a) for a in ASN_SETS[i])}] }}")
    rule("limit-connections", "connect", "{ limit: conn_per_ip }", then="tempfail")

    # helo
    for i in range(HELO_REGEX):
        rule(f"helo-re-{i}", "helo", f"{{ helo: {{ regex: '^(pc|dsl|dyn|host)-?{i}[0-9]*\\.(isp|cable){i}\\.' }} }}")
    for i in range(HELO_PLAIN):
        rule(f"helo-eq-{i}", "helo", f"{{ helo: {{ equals: 'bad-host-{i}.example' }} }}")

    # mail
    for i in range(SENDER_REGEX):
        pattern = f"^[a-z]{{12,}}{i}@" if i % 2 == 0 else f"@(mail|smtp|mx)\\d*\\.spam-{i}\\.(biz|top|xyz)$"
        rule(f"sender-re-{i}", "mail", f"{{ sender: {{ regex: '{pattern}' }} }}")
    for i in range(SENDER_PLAIN):
        if i % 3 == 0:
            rule(f"sender-eq-{i}", "mail", f"{{ sender: spammer{i}@bulk.example }}")
        elif i % 3 == 1:
            rule(f"sender-dom-{i}", "mail", f'{{ sender: {{ domain: "*.blocked-{i}.example" }} }}')
        else:
            rule(f"sender-wild-{i}", "mail", f'{{ sender: "*@*.offers-{i}.example" }}')
    rule("limit-messages", "mail", "{ limit: msgs_per_net }", then="tempfail")

    # rcpt
    for i in range(RCPT_REGEX):
        rule(f"rcpt-re-{i}", "rcpt", f"{{ recipient: {{ regex: '^(old|former|test)-?user{i}(\\+[^@]*)?@' }} }}")
    for i in range(RCPT_PLAIN):
        rule(f"rcpt-dom-{i}", "rcpt", f"{{ recipient: {{ domain: retired-{i}.example }} }}")
    rule("limit-recipients", "rcpt", "{ limit: rcpts_per_sender_domain }", then="tempfail")

    # data: content
    for i in range(SUBJECT_REGEX):
        rule(f"subject-{i}", "data", f"{{ subject: {{ regex: '(free|cheap|win)\\s+prize\\s*#?{i}\\b|act\\s+now\\s+offer{i}' }} }}")
    for i in range(BODY_REGEX):
        pattern = (f"\\bpromo-?code[:\\s]+X{i}[A-Z0-9]{{4}}\\b" if i % 2 == 0
                   else f"(wire|transfer)\\s+(usd|eur)\\s*\\d{{3,}}\\s+to\\s+account\\s+{i}")
        rule(f"body-{i}", "data", f"{{ body: {{ regex: '{pattern}' }} }}")
    headers = ["X-Mailer", "User-Agent", "X-Campaign-ID", "Reply-To", "Message-ID"]
    for i in range(HEADER_REGEX):
        rule(f"header-{i}", "data",
             f"{{ header.{headers[i % len(headers)]}: {{ regex: '^(mass|bulk)\\s*mailer\\s+v?{i}\\b|campaign-{i}-[0-9a-f]{{8}}' }} }}")
    for i in range(ATTACHMENT_NAME_REGEX):
        rule(f"attach-{i}", "data", f"{{ attachment_name: {{ regex: '\\.(x{i}exe|scr{i}|pif{i})\\s*$' }} }}")
    for i in range(RAW_REGEX):
        rule(f"raw-{i}", "data", f"{{ raw: {{ regex: '(?m)^X-Bulk-Tracking-{i}:\\s*[0-9a-f]{{16}}' }} }}")
    for i in range(DATA_PLAIN):
        if i % 3 == 0:
            rule(f"type-{i}", "data", f"{{ attachment_type: [application/x-bad-{i}, application/x-worse-{i}] }}")
        elif i % 3 == 1:
            rule(f"size-{i}", "data", f"{{ size: {{ over: {50 + i}MB }} }}")  # the 50 MB test uses the default policy
        else:
            rule(f"tls-{i}", "data", "{ tls: true }")

    assert len(rules) == RULES
    header = [
        f"# Generated by Benchmarks/heavy_policy.py: {RULES} rules, {REGEXES} regexes, GeoIP, 3 rate limits.",
        "version: 1",
        "geoip:",
        f"  country: {FIXTURES / 'postern-country.mmdb'}",
        f"  asn: {FIXTURES / 'postern-asn.mmdb'}",
        "limits:",
        # Counted for every transaction, never exceeded: a billion a second with as much burst.
        "  conn_per_ip: { key: client_ip, count: connections, rate: 1000000000/1s, burst: 1000000000 }",
        "  msgs_per_net: { key: client_net, ipv4_prefix: 24, count: messages, rate: 1000000000/1s, burst: 1000000000 }",
        "  rcpts_per_sender_domain: { key: sender_domain, count: recipients, rate: 1000000000/1s, burst: 1000000000 }",
        "rules:",
    ]
    return "\n".join(header + rules) + "\n"


def write(directory) -> Path:
    path = Path(directory) / "heavy.yaml"
    path.write_text(policy_yaml())
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: heavy_policy.py DIR")
    print(write(sys.argv[1]))
