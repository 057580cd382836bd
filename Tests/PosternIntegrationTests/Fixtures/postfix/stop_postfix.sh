#!/bin/sh
# Stop the private Postfix instance started by start_postfix.sh DIR PORT.
#   stop_postfix.sh DIR
set -u
DIR=${1:?usage: stop_postfix.sh DIR}
ETC=$DIR/etc
[ -f "$ETC/main.cf" ] || exit 0
postfix -c "$ETC" stop >/dev/null 2>&1 || true
# Make sure the master is gone even if "postfix stop" could not do it.
PIDFILE=$DIR/spool/pid/master.pid
i=0
while [ -f "$PIDFILE" ] && [ $i -lt 50 ]; do
    pid=$(tr -d ' ' < "$PIDFILE" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
    i=$((i + 1))
    sleep 0.1
done
if [ -f "$PIDFILE" ]; then
    pid=$(tr -d ' ' < "$PIDFILE" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        postfix -c "$ETC" abort >/dev/null 2>&1 || kill -9 "$pid" 2>/dev/null || true
    fi
fi
exit 0
