#!/usr/bin/env bash
# Makes sure the Debian packages Postern needs are installed.
# Usage: ensure-packages.sh CHECK=PACKAGE...
#   CHECK is "lib:NAME" (a pkg-config module), "cmd:NAME" (a command on PATH or in /usr/sbin)
#   "perl:MODULE" (a Perl module, e.g. Net::SSLeay for swaks --tls) or "file:PATH" (a file a
#   package installs, e.g. a header).
# Missing packages are installed with apt-get when running as root; otherwise the script
# says which ones to install and exits 1.
set -euo pipefail

missing=()
for spec in "$@"; do
    check=${spec%%=*}
    package=${spec#*=}
    case "$check" in
        lib:*) pkg-config --exists "${check#lib:}" 2>/dev/null || missing+=("$package") ;;
        cmd:*) name=${check#cmd:}
               command -v "$name" >/dev/null 2>&1 || [ -x "/usr/sbin/$name" ] || missing+=("$package") ;;
        perl:*) perl -M"${check#perl:}" -e 1 >/dev/null 2>&1 || missing+=("$package") ;;
        file:*) [ -e "${check#file:}" ] || missing+=("$package") ;;
        *) echo "ensure-packages: bad check '$spec'" >&2; exit 2 ;;
    esac
done
[ ${#missing[@]} -eq 0 ] && exit 0

# pkg-config itself is needed for the lib: checks.
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -ne 0 ]; then
    echo "Postern needs these Debian packages: ${missing[*]}" >&2
    echo "Install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
fi
echo "Installing: ${missing[*]}"
# The tests start every daemon themselves, on their own ports and configurations: keep the
# packages' init scripts from starting theirs (rspamd, clamd, freshclam, opendkim…).
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
# Postfix asks how to configure itself; the tests run their own configuration.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "Installed: ${missing[*]}"
