#!/usr/bin/env bash
# Install what the multi-host test lab (tests/lab) needs on a fresh Debian bookworm machine.
# Idempotent: does nothing when every tool is already there; runs `apt-get update` at most once.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "lab-deps: not root; the lab tests will skip themselves" >&2
    exit 0
fi

# tool -> Debian package that provides it
declare -A needs=(
    [ip]=iproute2
    [nsenter]=util-linux
    [sshd]=openssh-server
    [ssh-keyscan]=openssh-client
    [dockerd]=docker.io
    [containerd]=containerd
    [runc]=runc
    [debootstrap]=debootstrap
    [tar]=tar
)
# /usr/sbin is not always on a CI user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for tool in "${!needs[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("${needs[$tool]}")
done
# The docker CLI from docker.io: `docker system dial-stdio` runs it on every lab host.
[ -x /usr/bin/docker ] || missing+=(docker.io)
# debootstrap checks release signatures with this keyring.
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)

if [ "${#missing[@]}" -eq 0 ]; then
    echo "lab-deps: all present"
    exit 0
fi

mapfile -t unique < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "lab-deps: installing ${unique[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# --no-install-recommends keeps docker.io from pulling in extras; policy-rc.d stops the
# packages from starting system daemons (the lab starts its own, one per host).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap '[ "$created_policy" -eq 1 ] && rm -f "$policy"' EXIT
apt-get install -y -q --no-install-recommends "${unique[@]}"
echo "lab-deps: done"
