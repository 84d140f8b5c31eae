"""Steady RSS and CPU of `edge-defender run` against a local mosquitto with mutual TLS.

    python bench/daemon.py [--duration 180] [--interval 10]

Makes a throwaway CA and certificates with openssl, starts mosquitto on a free
loopback port, runs the agent with the example profile and two custom metrics, lets
it warm up for two cycles, then reads its RSS and CPU time from /proc for the
duration. Goal: RSS <= 35 MiB, CPU <= 0.5 % of one core at a 10 s interval.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "agent" / "data" / "example-profile.json"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2",
            "-subj", "/CN=bench-ca")  # fmt: skip
    for name, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
                "-subj", f"/CN=bench-{name}")  # fmt: skip
        ext = d / f"{name}.ext"
        ext.write_text(extra + "\n" if extra else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                "-out", str(d / f"{name}.pem"), "-extfile", str(ext))  # fmt: skip
        (d / f"{name}.key").chmod(0o600)


def broker_conf(d: Path, port: int) -> Path:
    """mosquitto with mutual TLS on 127.0.0.1:`port`, certificates from `make_pki`."""
    conf = d / "mosquitto.conf"
    conf.write_text(
        f"""per_listener_settings true
persistence false
user {"root" if os.geteuid() == 0 else "mosquitto"}
log_dest none
listener {port} 127.0.0.1
cafile {d / "ca.pem"}
certfile {d / "server.pem"}
keyfile {d / "server.key"}
require_certificate true
use_identity_as_username true
allow_anonymous false
"""
    )
    return conf


def mqtt_section(pki: Path, port: int) -> str:
    """The agent config's [mqtt] table for the broker of `broker_conf`."""
    return f"""[mqtt]
endpoint = "127.0.0.1"
port = {port}
ca_file = "{pki / "ca.pem"}"
cert_file = "{pki / "client.pem"}"
key_file = "{pki / "client.key"}"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"mosquitto did not listen on {port}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="measured seconds")
    parser.add_argument("--interval", type=float, default=10.0, help="sampling interval")
    args = parser.parse_args()
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if mosquitto is None:
        raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        d = Path(tmp)
        make_pki(d)
        port = free_port()
        conf = broker_conf(d, port)
        (d / "config.toml").write_text(
            f"""thing_name = "bench"
state_dir = "{d / "state"}"
[sampling]
interval_s = {args.interval}
report_interval_s = {max(args.interval, 60.0)}
{mqtt_section(d, port)}[detect]
profiles = ["{PROFILE}"]
[[custom_metrics]]
name = "cpu_usage"
type = "number"
source = "cpu_percent"
[[custom_metrics]]
name = "memory_usage"
type = "number"
source = "memory_percent"
"""
        )
        broker = subprocess.Popen([mosquitto, "-c", str(conf)])
        agent = None
        try:
            wait_port(port)
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(d / "config.toml")],
                cwd=ROOT,
                stderr=(d / "agent.log").open("wb"),
            )
            status = d / "state" / "status.json"
            time.sleep(2 * args.interval + 2)  # two cycles: imports done, caches warm
            if agent.poll() is not None:
                raise SystemExit((d / "agent.log").read_text())
            connected = json.loads(status.read_text())["broker"]["connected"]
            cpu0, t0 = cpu_s(agent.pid), time.monotonic()
            rss: list[int] = []
            while time.monotonic() - t0 < args.duration:
                rss.append(rss_kib(agent.pid))
                time.sleep(1.0)
            cpu = (cpu_s(agent.pid) - cpu0) / (time.monotonic() - t0) * 100
            final = json.loads(status.read_text())
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(30)
            broker.terminate()
            broker.wait(10)
    print(f"edge-defender run, {args.interval:g} s interval, {args.duration:g} s measured")
    print(f"  broker connected      {connected and final['broker']['connected']}")
    print(f"  samples / reports     {final['samples']} / {final['reports']['sent']}")
    print(f"  RSS median / max      {statistics.median(rss) / 1024:.1f} / {max(rss) / 1024:.1f} MiB"
          "   (goal <= 35 MiB)")  # fmt: skip
    print(f"  CPU                   {cpu:.3f} % of one core   (goal <= 0.5 %)")


if __name__ == "__main__":
    main()
