#!/usr/bin/env bash
# Set up edge-defender on a fresh Debian machine, then either run the agent or test it.
#   bash scripts/setup.sh run    install, then run the agent on its embedded defaults
#   bash scripts/setup.sh test   install with the test tools, then run the whole suite
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
case "$mode" in run | test) ;; *) echo "usage: $0 run|test" >&2; exit 2 ;; esac

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(python3 python3-venv python3-dev gcc iproute2)
# The suite needs a real broker, `ss`, systemd-analyze and libfaketime (clock jumps);
# the service tests and the rig (hw/) boot a Debian rootfs with systemd-nspawn, the
# firewall tests use nftables, and the rig's benign load has SSH sessions. tests/package:
# qemu-user-static runs the arm64 .deb; dosfstools, mtools, fdisk make the image's disk.
[ "$mode" = test ] && packages+=(mosquitto systemd openssl libfaketime systemd-container
    debootstrap openssh-server openssh-client nftables qemu-user-static dosfstools mtools fdisk)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
# A broker started by the package would hold port 1883; the tests start their own.
if [ "$mode" = test ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
    as_root systemctl disable --now ssh >/dev/null 2>&1 || true # the rig starts its own
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$mode" = test ]; then
    .venv/bin/python -m pip install -q -e ".[dev]"
    .venv/bin/ruff check agent tests bench hw
    .venv/bin/ruff format --check agent tests bench hw
    .venv/bin/mypy  # settings in pyproject.toml: strict parts for agent/core
    # Namespace and broker tests need root; elsewhere they skip and say why.
    as_root .venv/bin/python -m pytest -ra
    # The rig: every detection scenario against the installed agent, short benign load.
    as_root .venv/bin/python -m hw run --quick --out "${HW_REPORT:-/tmp/edge-defender-hw}"
else
    .venv/bin/python -m pip install -q .
    as_root .venv/bin/edge-defender run
fi
