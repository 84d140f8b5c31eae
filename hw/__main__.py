"""python -m hw run [--scenarios NAME,...|all] [--quick] [--dut nspawn|netns]
[--target ssh://user@host[:port]] --out DIR

Runs the scenarios of hw/scenarios against the real agent and writes DIR/report.json and
DIR/report.html (hw/README.md). Exit status 0 when every scenario met its goal and the
benign load raised no alarm, 1 when one did not, 2 for bad arguments or a rig failure."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

from hw.run import RunOptions, run


def _signalled(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds every `with`: the lab's namespaces and processes go.
    raise SystemExit(f"hw: stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run scenarios against the agent and write the report")
    p.add_argument(
        "--scenarios",
        default="all",
        metavar="NAME,...",
        help="scenario names (hw/scenarios/NAME.toml), comma-separated, or all (default)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a short benign phase: every scenario in minutes"
    )
    p.add_argument(
        "--dut",
        choices=("nspawn", "netns"),
        default="nspawn" if shutil.which("systemd-nspawn") else "netns",
        help="the device under test: the installed service in a booted container (default"
        " where systemd-nspawn exists) or the agent in a plain network namespace",
    )
    p.add_argument(
        "--target",
        metavar="ssh://USER@HOST[:PORT]",
        help="a real device over SSH, the agent already installed as its service",
    )
    p.add_argument(
        "--c2",
        metavar="ADDRESS",
        help="with --target: an address of this host that the device reaches, playing the"
        " C2 server (e.g. one added with `ip addr add 198.51.100.66/32 dev eth0` and routed"
        " on the device); the lab uses its own",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the report goes")
    sub.add_parser("list", help="the scenarios and what each expects")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _signalled)
    if args.command == "list":
        from hw.run import list_scenarios

        return list_scenarios()
    names = None if args.scenarios == "all" else [n for n in args.scenarios.split(",") if n]
    options = RunOptions(
        scenarios=names,
        quick=args.quick,
        dut=args.dut,
        target=args.target,
        out=args.out,
        c2=args.c2,
    )
    return run(options)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
