"""Start-up and RSS of `edge-defender run` on its embedded defaults with no broker.

    python bench/local.py [--runs 5] [--source DIR]

Runs the agent with a throwaway state dir and no config (the built-in defaults and,
when a version has it, the built-in default profile), and measures per run: the time
from exec to the first status file (the first sample is judged and stored by then),
RSS after three cycles, and whether the MQTT library (awscrt) was loaded at all.
`--source` runs another checkout of the project (e.g. a `git worktree` of an older
commit) with this interpreter, for a before/after table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(source: Path, interval_s: float) -> tuple[float, float, bool]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        config = Path(tmp) / "config.toml"
        config.write_text(f'state_dir = "{state}"\n[sampling]\ninterval_s = {interval_s}\n')
        env = {**os.environ, "PYTHONPATH": str(source)}
        began = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            env=env,
            cwd=tmp,  # `-m` puts the working directory first on sys.path
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            status = state / "status.json"
            while not status.exists():
                if proc.poll() is not None:
                    raise SystemExit(f"the agent exited with {proc.returncode}")
                time.sleep(0.002)
            first = time.monotonic() - began
            time.sleep(3 * interval_s)
            rss_kib = next(
                int(line.split()[1])
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
            mqtt = "awscrt" in Path(f"/proc/{proc.pid}/maps").read_text()
        finally:
            proc.terminate()
            proc.wait(10)
    return first, rss_kib / 1024, mqtt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to run")
    args = parser.parse_args()
    results = [one_run(args.source.resolve(), args.interval) for _ in range(args.runs)]
    firsts = [r[0] for r in results]
    rss = [r[1] for r in results]
    print(f"source: {args.source}")
    print(f"first sample stored: median {statistics.median(firsts) * 1000:.0f} ms")
    print(f"RSS after 3 cycles: median {statistics.median(rss):.1f} MiB")
    print(f"MQTT library loaded: {any(r[2] for r in results)}")


if __name__ == "__main__":
    main()
