#!/usr/bin/env bash
# One entry point that does its own set-up on a fresh Debian machine (run as root):
#   ./dev.sh demo   - the built-in lab and the main job through the userland stack
#   ./dev.sh test   - the whole test suite
#   ./dev.sh setup  - only the set-up (apt packages, .venv, package installed)
# Anything after the sub-command goes to the program (e.g. ./dev.sh test -k arp).
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES="iptables iproute2 ethtool tcpdump tshark nginx-light dnsmasq-base curl procps gcc python3-dev openssl wrk p0f"

setup_apt() {
    local missing=()
    for p in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "dev.sh: missing Debian packages (${missing[*]}); run as root to install them" >&2
            return 0
        fi
        echo "dev.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

setup_venv() {
    local py=${PYTHON:-python3}
    if [ ! -x .venv/bin/python ]; then
        "$py" -m venv .venv
    fi
    local stamp=.venv/.usocket-installed
    local want
    want=$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e '.[test,lint]'
        echo "$want" > "$stamp"
    fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
    setup) setup_apt; setup_venv ;;
    demo) setup_apt; setup_venv; exec .venv/bin/python -m usocket demo "$@" ;;
    test) setup_apt; setup_venv; exec .venv/bin/python -m pytest -p no:cacheprovider "$@" ;;
    *) sed -n 2,7p "$0"; exit 2 ;;
esac
