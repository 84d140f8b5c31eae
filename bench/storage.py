"""Issue 9's storage figures for two checkouts side by side, in one run (as root).

    python bench/storage.py [--quick] [--before /tmp/before-main] [--after .]

The busy device: a network namespace of the bench's own (created with unshare, gone
when the bench and its children exit, even after kill -9: every child dies with the
bench) holding 150 established TCP sockets on loopback with random traffic,
mosquitto with mutual TLS on 127.0.0.1, and an agent config with 5 statistical and 20
static behaviors, a custom number metric and 10 s sampling, loopback counted. The
agents get RUNTIME_DIRECTORY on tmpfs, as under their systemd unit.

Per checkout (`PYTHONPATH=<checkout> python -m agent ...`, working directory outside
both checkouts), in this order:
1. Fill: days of samples through the checkout's own daemon code on a stepped clock
   (bench/storage_fill.py; 14 days, --quick 2.5: past the old 20,000-datapoint cap),
   state on tmpfs, then copied to a block-device file system. Not libfaketime on
   `agent run`: at 10 s a sample, 14 days are 120,960 cycles, and the old code's
   whole-state saves alone (0.1-0.4 s each, 4,000 of them) would take longer than the
   run may; stepping the daemon's own jobs takes a few ms a sample, with no timing quirks.
2. Save cost: that daemon restores the filled state, takes 30 samples (one 300 s save
   period) and saves; median of 3 of the save's time and write_bytes.
3. Restart: `agent run` on the filled state, broker configured: seconds from spawn to
   the first sample in its status file, median of 3 starts (one agent at a time, so
   they do not share CPU; the full run's 14 days of state are more than the goal's week).
4. Steady: both agents running with the broker connected; `/proc/PID/io` write_bytes
   over the window (600 s, --quick 300 s: whole 300 s save periods), scaled to a day,
   and the median VmRSS, sampled every second.
History on disk is the metrics tables and indexes (SQLite dbstat) after the fill,
scaled to 14 days when fewer were filled. Baseline state per statistical behavior is
the payload of the store's remaining tables (not metrics, events, violations, spool)
after the fill, over 5 (an upper bound: it includes the static behaviors' state).
On Ctrl-C, SIGTERM or failure everything stops and the temporary directories go; on
kill -9 only /var/tmp/bench-storage-* and /dev/shm/bench-storage-* stay behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import broker_conf, free_port, make_pki, rss_kib, wait_port
from storage_setup import Traffic, die_with_parent, enter_new_netns, write_config

ROOT = Path(__file__).resolve().parent.parent
FILL = Path(__file__).resolve().parent / "storage_fill.py"
BEFORE_COMMIT = "280aa7c"
DAY_S = 86400.0
INTERVAL_S = 10.0
STATISTICAL = 5
SOCKETS = 150
# Tables that are not the alarm state / baselines (history, events, delivery).
NOT_STATE = ("metric", "event", "violation", "verification", "unpublished", "spool", "quarantin",
             "sqlite_")  # fmt: skip
MiB = 1024 * 1024
FILLS: list[subprocess.Popen[str]] = []
RESTARTS = 3  # the median of 3: one start alone varies by a tenth of a second


@dataclass
class Agent:
    name: str
    checkout: Path
    dir: Path
    runtime: Path  # RUNTIME_DIRECTORY, a tmpfs as systemd's RuntimeDirectory= makes it
    fill: dict[str, float] = field(default_factory=dict)
    save: dict[str, float] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def state(self) -> Path:
        return self.dir / "state"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(self.checkout),
            "RUNTIME_DIRECTORY": str(self.runtime),
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args, "--config", str(self.dir / "config.toml")],
            cwd=self.dir, env=self.env(), capture_output=True, text=True, timeout=60,
            preexec_fn=die_with_parent,
        )  # fmt: skip


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"no write_bytes in /proc/{pid}/io")


def sqlite_files(state: Path) -> Iterator[Path]:
    for path in sorted(state.iterdir()):
        if path.is_file() and path.open("rb").read(16) == b"SQLite format 3\x00":
            yield path


def table_bytes(state: Path) -> tuple[dict[str, int], dict[str, int]]:
    """Per table (indexes under their table): pages on disk and payload bytes."""
    pages: dict[str, int] = {}
    payload: dict[str, int] = {}
    for path in sqlite_files(state):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            owner = dict(conn.execute("SELECT name, tbl_name FROM sqlite_schema").fetchall())
            rows = conn.execute("SELECT name, sum(pgsize), sum(payload) FROM dbstat GROUP BY name")
            for name, size, used in rows:
                table = f"{path.name}:{owner.get(name, name)}"
                pages[table] = pages.get(table, 0) + size
                payload[table] = payload.get(table, 0) + used
        finally:
            conn.close()
    return pages, payload


def run_fill(agent: Agent, mode: str, config: Path, start: float, samples: int) -> dict:
    proc = subprocess.Popen(
        [sys.executable, str(FILL), mode, str(config), str(start), str(samples),
         str(agent.dir / "number")],
        cwd=agent.dir, env=agent.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=die_with_parent,
    )  # fmt: skip
    FILLS.append(proc)  # to stop on the way out: a fill runs in a thread of the bench
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{agent.name}: storage_fill {mode} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.splitlines()[-1])


def status(agent: Agent) -> dict:
    try:
        return json.loads((agent.state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def restart(agent: Agent) -> float:
    """Seconds from spawning `agent run` to its first sample on the filled state."""
    for old in (agent.state, agent.runtime):  # newer agents keep it in the runtime dir
        (old / "status.json").unlink(missing_ok=True)
    began = time.monotonic()
    agent.proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(agent.dir / "config.toml")],
        cwd=agent.dir, env=agent.env(), stdout=subprocess.DEVNULL,
        stderr=(agent.dir / "agent.log").open("ab"), preexec_fn=die_with_parent,
    )  # fmt: skip
    while status(agent).get("samples", 0) < 1:
        if agent.proc.poll() is not None or time.monotonic() - began > 60:
            raise SystemExit(
                f"{agent.name}: no first sample:\n{(agent.dir / 'agent.log').read_text()[-3000:]}"
            )
        time.sleep(0.002)
    return time.monotonic() - began


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def random_numbers(agents: list[Agent], stop_event: threading.Event) -> None:
    """The custom metric's source files get a fresh value every second (live runs)."""
    rng = random.Random(1)
    while not stop_event.wait(1.0):
        for agent in agents:
            (agent.dir / "number").write_text(f"{rng.lognormvariate(3.0, 0.5):.3f}\n")


def connected(agent: Agent) -> bool:
    out = agent.cli("status", "--output", "json")
    try:
        doc = json.loads(out.stdout)
        return bool(doc.get("status", doc)["broker"]["connected"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def established_here() -> int:
    """Established TCP sockets in this network namespace (state 01 in /proc/net/tcp*)."""
    lines = [
        line
        for name in ("tcp", "tcp6")
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]
    ]
    return sum(line.split()[3] == "01" for line in lines)


def established(agent: Agent) -> str:
    """The established TCP connections in the agent's last exported sample (of the last
    15 minutes: the history may be written in batches)."""
    now = time.time()
    out = agent.cli("export-metrics", "--start-time", str(now - 900), "--end-time", str(now + 1))
    lines = out.stdout.splitlines()
    found: list[object] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(conn := node.get("established_connections"), dict):
                found.append(conn.get("total"))
            for value in node.values():
                walk(value)

    if lines:
        walk(json.loads(lines[-1]))
    return str(found[0]) if found else "?"


def ensure_before(path: Path) -> None:
    if not (path / "agent").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", str(path), BEFORE_COMMIT],
                       check=True)  # fmt: skip


def measure(args: argparse.Namespace, tmp: Path, shm: Path) -> list[Agent]:
    days, window_s, warm_s = args.days, args.window_s, args.warm_s
    enter_new_netns()
    traffic = Traffic(SOCKETS)
    agents = [
        Agent(name, checkout, tmp / name, shm / f"run-{name}")
        for name, checkout in (("before", args.before), ("after", args.after))
    ]
    broker = None
    numbers_stop = threading.Event()
    try:
        make_pki(tmp)
        port = free_port()
        mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
        if mosquitto is None:
            raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
        broker = subprocess.Popen([mosquitto, "-c", str(broker_conf(tmp, port))],
                                  preexec_fn=die_with_parent)  # fmt: skip
        wait_port(port)
        samples = int(days * DAY_S / INTERVAL_S)
        # The fill ends before now by more than the save step's 90 samples, so the live
        # agents continue the filled history without their clock going back.
        start = time.time() - samples * INTERVAL_S - 1000.0
        fills: dict[str, threading.Thread] = {}
        for agent in agents:
            agent.dir.mkdir()
            agent.runtime.mkdir(mode=0o700)
            (agent.dir / "number").write_text("20\n")
            kw = {"custom_file": agent.dir / "number", "pki": tmp}
            fill = write_config(
                agent.dir / "fill.toml", state_dir=shm / agent.name, port=None, **kw
            )
            write_config(agent.dir / "save.toml", state_dir=agent.state, port=None, **kw)
            write_config(agent.dir / "config.toml", state_dir=agent.state, port=port, **kw)

            def work(agent: Agent = agent, fill: Path = fill) -> None:
                try:
                    agent.fill = run_fill(agent, "fill", fill, start, samples)
                except SystemExit as e:  # a thread drops it silently: main says it
                    agent.figures["fill_error"] = str(e)

            fills[agent.name] = threading.Thread(target=work)
            fills[agent.name].start()
        print(f"filling {days:g} days ({samples} samples) per checkout ...", flush=True)
        for agent in agents:
            fills[agent.name].join()
            if not agent.fill:
                raise SystemExit(agent.figures.get("fill_error", f"{agent.name}: no fill"))
            shutil.copytree(shm / agent.name, agent.state)
            pages, payload = table_bytes(agent.state)
            history = sum(v for k, v in pages.items() if "metric" in k.split(":")[1])
            state = {
                k: v for k, v in payload.items() if not any(w in k.split(":")[1] for w in NOT_STATE)
            }
            agent.figures["history"] = f"{history * 14 / days / MiB:.1f} MiB"
            files = sum(f.stat().st_size for f in agent.state.iterdir() if f.is_file())
            agent.figures["files"] = f"{files / MiB:.1f} MiB"
            agent.figures["state"] = f"{sum(state.values()) / STATISTICAL / 1024:.1f} KiB"
            agent.figures["state_tables"] = ", ".join(sorted(state))
            agent.figures["tables"] = ", ".join(
                f"{name} {size / MiB:.1f}" for name, size in sorted(pages.items()) if size
            )
            agent.figures["fill"] = f"{agent.fill['took_s']:.0f} s"
        print("timing state saves ...", flush=True)
        for agent in agents:
            agent.save = run_fill(
                agent, "save", agent.dir / "save.toml", agent.fill["last_time"], 0
            )
            agent.figures["save_s"] = f"{agent.save['save_s'] * 1000:.1f} ms"
            agent.figures["save_bytes"] = f"{agent.save['save_bytes'] / 1024:.0f} KiB"
        # Each live agent's broker connection adds two established sockets (its end and
        # mosquitto's); the fill had none. Closing as many pairs of the traffic keeps the
        # count the statistical behaviors learned: otherwise it alarms at every start,
        # and the window would measure those events, not the steady state.
        traffic.drop(len(agents))
        print("restarting on the filled state ...", flush=True)
        threading.Thread(target=random_numbers, args=(agents, numbers_stop), daemon=True).start()
        for agent in agents:
            took = []
            for _ in range(RESTARTS):
                stop(agent.proc)  # the last start stays up for the steady window
                took.append(restart(agent))
            agent.figures["restart"] = f"{statistics.median(took):.2f} s"
        time.sleep(warm_s)
        print(f"steady window of {window_s:g} s ...", flush=True)
        for agent in agents:
            agent.figures["connected0"] = str(connected(agent))
        began = time.monotonic()
        w0 = {a.name: write_bytes(a.proc.pid) for a in agents if a.proc}
        rss: dict[str, list[int]] = {a.name: [] for a in agents}
        last = dict(w0)
        bursts: dict[str, list[str]] = {a.name: [] for a in agents}
        while (elapsed := time.monotonic() - began) < window_s:
            for a in agents:
                if a.proc is None or a.proc.poll() is not None:
                    raise SystemExit(
                        f"{a.name}: the agent exited:\n{(a.dir / 'agent.log').read_text()[-3000:]}"
                    )
                rss[a.name].append(rss_kib(a.proc.pid))
                now_bytes = write_bytes(a.proc.pid)
                if now_bytes != last[a.name]:  # when and how much: which job wrote it
                    bursts[a.name].append(f"{elapsed:.0f} s {(now_bytes - last[a.name]) >> 10}")
                    last[a.name] = now_bytes
            time.sleep(1.0)
        here = established_here()
        for a in agents:
            assert a.proc is not None
            per_day = (write_bytes(a.proc.pid) - w0[a.name]) / elapsed * DAY_S
            a.figures["write_day"] = f"{per_day / 1e6:.1f} MB"
            a.figures["rss"] = f"{statistics.median(rss[a.name]) / 1024:.1f} MiB"
            a.figures["connected"] = f"{a.figures['connected0']} / {connected(a)}"
            a.figures["bursts"] = ", ".join(bursts[a.name][:40]) or "none"
            log = (a.dir / "agent.log").read_text(errors="replace").splitlines()
            a.figures["log_lines"] = "\n    ".join(log[-8:])
            a.figures["established"] = f"{established(a)} / {here}"
        return agents
    finally:
        numbers_stop.set()
        for proc in FILLS:
            stop(proc)
        for agent in agents:
            stop(agent.proc)
        stop(broker)
        traffic.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2.5 days filled, 300 s window")
    before_help = f"the old checkout (a git worktree of {BEFORE_COMMIT} is made if missing)"
    parser.add_argument("--before", type=Path, default=Path("/tmp/before-main"), help=before_help)
    parser.add_argument("--after", type=Path, default=ROOT, help="the new checkout")
    args = parser.parse_args()
    # Days filled (2.5: past the old 20,000-datapoint cap), seconds measured, warm-up.
    args.days, args.window_s, args.warm_s = (
        (2.5, 300.0, 30.0) if args.quick else (14.0, 600.0, 60.0)
    )
    if os.geteuid() != 0:
        raise SystemExit("run as root: the bench makes a network namespace")
    args.before, args.after = args.before.resolve(), args.after.resolve()
    ensure_before(args.before)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    with (
        tempfile.TemporaryDirectory(prefix="bench-storage-", dir="/var/tmp") as tmp,
        tempfile.TemporaryDirectory(prefix="bench-storage-", dir="/dev/shm") as shm,
    ):
        agents = measure(args, Path(tmp), Path(shm))
    filled = f"{args.days:g} days"
    rows = [
        (f"bytes written per day (write_bytes, {args.window_s:g} s)", "<= 20 MB", "write_day"),
        (f"metrics history on disk after 14 days ({filled} filled)", "<= 100 MiB", "history"),
        (f"all store files after {filled} (not scaled)", "", "files"),
        (f"baseline state per statistical behavior ({filled})", "<= 64 KiB", "state"),
        ("state save: time (median of 3)", "<= 10 ms", "save_s"),
        ("state save: bytes written", "what changed", "save_bytes"),
        (f"restart to first sample ({filled} of state)", "<= 0.3 s", "restart"),
        ("steady RSS (median)", "<= 32 MiB", "rss"),
        ("established TCP sockets: agent / /proc/net/tcp", f"{SOCKETS}+", "established"),
        ("broker connected (window start / end)", "True / True", "connected"),
        ("fill time (real)", "", "fill"),
    ]
    table = [("figure", "goal", "before", "after")] + [
        (title, goal, agents[0].figures[key], agents[1].figures[key]) for title, goal, key in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for i, row in enumerate(table):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    for agent in agents:
        print(f"{agent.name}: {agent.checkout}")
        print(f"  tables after the fill (MiB on disk): {agent.figures['tables']}")
        print(f"  counted as baseline state: {agent.figures['state_tables']}")
        print(f"  writes in the window (seconds into it, KiB): {agent.figures['bursts']}")
        print(f"  the agent's last log lines:\n    {agent.figures['log_lines']}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
