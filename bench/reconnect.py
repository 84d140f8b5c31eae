"""How often the agent gets through to a flapping broker.

    python bench/reconnect.py [--up 30] [--down 30] [--flaps 19] [--before DIR]

Starts mosquitto with mutual TLS on loopback and takes it down and up again
`--flaps` times (`--down` seconds down, `--up` seconds up), while `edge-defender run`
publishes to it. Counts, per agent, the up phases in which it connected (from its
`mqtt_connected` log lines). `--before DIR` runs a second agent from another checkout
(e.g. a `git worktree` of an older commit) against the same broker, side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import broker_conf, free_port, make_pki, mqtt_section, wait_port

ROOT = Path(__file__).resolve().parent.parent


def start_agent(d: Path, name: str, source: Path, port: int) -> subprocess.Popen[bytes]:
    (d / name).mkdir()
    config = d / name / "config.toml"
    config.write_text(
        f"""thing_name = "{name}"
state_dir = "{d / name / "state"}"
[sampling]
interval_s = 10
report_interval_s = 10
{mqtt_section(d, port)}"""
    )
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=d,
        env={**os.environ, "PYTHONPATH": str(source)},
        stdout=subprocess.DEVNULL,
        stderr=(d / name / "agent.log").open("wb"),
    )


def connections(log: Path) -> int:
    return sum("mqtt_connected" in line for line in log.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--up", type=float, default=30.0)
    parser.add_argument("--down", type=float, default=30.0)
    parser.add_argument("--flaps", type=int, default=19)
    parser.add_argument("--before", type=Path, help="an older checkout to run alongside")
    args = parser.parse_args()
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if mosquitto is None:
        raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
    sources = {"after": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    with tempfile.TemporaryDirectory(prefix="bench-reconnect-") as tmp:
        d = Path(tmp)
        make_pki(d)
        port = free_port()
        conf = broker_conf(d, port)
        broker = subprocess.Popen([mosquitto, "-c", str(conf)])
        wait_port(port)
        agents = {name: start_agent(d, name, src, port) for name, src in sources.items()}
        reached = dict.fromkeys(sources, 0)
        try:
            time.sleep(args.up)  # the first up phase: everyone connects
            seen = {name: connections(d / name / "agent.log") for name in sources}
            for _ in range(args.flaps):
                broker.terminate()
                broker.wait(10)
                time.sleep(args.down)
                broker = subprocess.Popen([mosquitto, "-c", str(conf)])
                time.sleep(args.up)
                for name in sources:
                    now = connections(d / name / "agent.log")
                    reached[name] += now > seen[name]
                    seen[name] = now
        finally:
            for agent in agents.values():
                agent.terminate()
                agent.wait(30)
            broker.terminate()
            broker.wait(10)
    print(f"broker {args.down:g} s down / {args.up:g} s up, {args.flaps} flaps")
    for name in sources:
        print(f"  {name:6}  connected in {reached[name]} of {args.flaps} up phases")


if __name__ == "__main__":
    main()
