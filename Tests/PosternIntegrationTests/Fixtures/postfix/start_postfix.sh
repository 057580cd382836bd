#!/bin/sh
# Start a private Postfix instance for Postern's integration tests.
#
#   start_postfix.sh DIR PORT [DOMAIN]
#
# Everything lives under DIR:
#   DIR/etc        config_directory (main.cf, master.cf, vmailbox)
#   DIR/spool      queue_directory
#   DIR/data       data_directory
#   DIR/mail/<user>/   Maildirs (virtual(8) delivery for DOMAIN, default postfix.test)
#   DIR/maillog    the log (postlogd, maillog_file)
# smtpd listens on 127.0.0.1:PORT. alice|bob|carol|dave|test|postmaster @DOMAIN are
# delivered to DIR/mail/<localpart>/ (a Maildir); other local parts get 550 5.1.1 at RCPT.
# XCLIENT and XFORWARD are allowed from 127.0.0.0/8. Stop with stop_postfix.sh DIR.
# Prints "READY <port>" when smtpd answers.
set -eu

DIR=${1:?usage: start_postfix.sh DIR PORT [DOMAIN]}
PORT=${2:?usage: start_postfix.sh DIR PORT [DOMAIN]}
DOMAIN=${3:-postfix.test}

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
ETC=$DIR/etc
SPOOL=$DIR/spool
DATA=$DIR/data
MAIL=$DIR/mail

# Postfix daemons run as the postfix user and must be able to reach DIR.
chmod 755 "$DIR"
p=$(dirname "$DIR")
while [ "$p" != "/" ]; do
    chmod o+x "$p" 2>/dev/null || true
    p=$(dirname "$p")
done

mkdir -p "$ETC" "$SPOOL" "$DATA" "$MAIL"
chown postfix:postfix "$DATA"
VUID=$(id -u nobody)
VGID=$(id -g nobody)
chown "$VUID:$VGID" "$MAIL"

cat > "$ETC/main.cf" <<MAINCF
compatibility_level = 3.6
myhostname = upstream.$DOMAIN
mydomain = $DOMAIN
myorigin = \$myhostname
mydestination = localhost, \$myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
queue_directory = $SPOOL
data_directory = $DATA
mail_owner = postfix
setgid_group = postdrop
maillog_file = $DIR/maillog
maillog_file_prefixes = $DIR
alias_maps =
alias_database =
biff = no
smtputf8_enable = yes
smtpd_banner = \$myhostname ESMTP Postfix (postern integration upstream)
smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_authorized_xforward_hosts = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = $DOMAIN
virtual_mailbox_base = $MAIL
virtual_mailbox_maps = texthash:$ETC/vmailbox
virtual_uid_maps = static:$VUID
virtual_gid_maps = static:$VGID
virtual_minimum_uid = 1
message_size_limit = 52428800
virtual_mailbox_limit = 0
mailbox_size_limit = 0
# keep failures visible quickly instead of queueing for ages
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
# nothing leaves this instance (bounces to outside domains fail at once)
default_transport = error:outbound mail disabled in tests
relay_transport = error:outbound mail disabled in tests
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
MAINCF

# Known users get their own Maildir (trailing slash = Maildir format); anyone else
# is refused at RCPT with 550 5.1.1.
: > "$ETC/vmailbox"
for u in alice bob carol dave test postmaster; do
    printf '%s@%s %s/\n' "$u" "$DOMAIN" "$u" >> "$ETC/vmailbox"
done

cat > "$ETC/master.cf" <<MASTERCF
127.0.0.1:$PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
MASTERCF

# Without syslog and without a tty, postfix reports fatal errors nowhere; under
# script(1) it has a tty and writes them to stderr, so failures are explained.
pf() {
    if command -v script >/dev/null 2>&1; then
        script -qec "postfix -c '$ETC' $*" /dev/null
    else
        postfix -c "$ETC" "$@"
    fi
}
pf check >"$DIR/postfix-check.log" 2>&1 || { cat "$DIR/postfix-check.log" >&2; exit 1; }
pf start >"$DIR/postfix-start.log" 2>&1 || { cat "$DIR/postfix-start.log" >&2; exit 1; }

# Wait for smtpd to answer (up to ~15s).
i=0
while [ $i -lt 150 ]; do
    if python3 - "$PORT" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.settimeout(2)
ok = s.recv(512).startswith(b"220")
s.sendall(b"QUIT\r\n")
s.close()
sys.exit(0 if ok else 1)
PY
    then
        echo "READY $PORT"
        exit 0
    fi
    i=$((i + 1))
    sleep 0.1
done
echo "postfix did not answer on 127.0.0.1:$PORT" >&2
cat "$DIR/maillog" >&2 2>/dev/null || true
exit 1
