"""Crash safety: a writer process is SIGKILLed at random moments, again and again, on the
same store. Every record() that returned must survive, and what survives must be one
consistent state: the events, the active set and the alarm state of the same step."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.store.db import open_db
from agent.store.history import MIGRATIONS, history_path, open_history

REPO = Path(__file__).resolve().parents[2]
KILLS = 20
ACTIVE_SPAN = 3  # a violation stays in alarm for 3 steps, then clears

# Step n raises violation v-n and clears v-(n-3); the active set is v-(n-2) .. v-n.
# Each event carries a few KB so that one transaction spans several database pages.
WRITER = """
import sys
from agent.store.history import open_history

SPAN = int(sys.argv[2])
BEHAVIOR = {
    "name": "dest-ips",
    "metric": "aws:destination-ip-addresses",
    "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["10.0.0.0/8"]}},
}
VALUE = {"cidrs": [f"203.0.113.{i}" for i in range(200)]}


def violation(n):
    return {"violationId": f"v-{n}", "thingName": "pi", "securityProfileName": "crash",
            "behavior": BEHAVIOR}


def event(n, kind, at):
    return {**violation(n), "metricValue": VALUE, "violationEventType": kind,
            "verificationState": "UNKNOWN", "violationEventTime": float(at)}


with open_history(sys.argv[1]) as store:
    state = store.load_alarm_state() or {"step": -1}
    step = state["step"] + 1
    while True:
        events = [event(step, "in-alarm", step)]
        if step >= SPAN:
            events.append(event(step - SPAN, "alarm-cleared", step))
        active = [{**violation(n), "lastViolationValue": VALUE, "lastViolationTime": float(step),
                   "violationStartTime": float(n), "verificationState": "UNKNOWN"}
                  for n in range(max(0, step - SPAN + 1), step + 1)]
        store.record(events, active, {"step": step})
        print(step, flush=True)
        step += 1
"""


def _run_and_kill(script: Path, db: Path, rng: random.Random) -> list[int]:
    """Start the writer, SIGKILL it at a random moment; the steps it reported committed."""
    child = subprocess.Popen(
        [sys.executable, str(script), str(db), str(ACTIVE_SPAN)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    first = child.stdout.readline()  # wait until it is inside its write loop
    assert first, "the writer died before its first commit"
    time.sleep(rng.uniform(0, 0.05))
    child.send_signal(signal.SIGKILL)
    rest = child.stdout.read()
    child.wait()
    assert child.returncode == -signal.SIGKILL
    return [int(line) for line in [first, *rest.splitlines()] if line.strip()]


def test_records_survive_sigkill_at_random_moments(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    db = history_path(tmp_path)
    rng = random.Random()
    reported: list[int] = []
    for _ in range(KILLS):
        reported += _run_and_kill(script, db, rng)

        conn = open_db(db, MIGRATIONS)
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()
        with open_history(db) as store:
            state = store.load_alarm_state()
            assert state is not None
            last = state["step"]
            # Everything acknowledged is there; a commit the child had no time to report
            # may be there too, but nothing half-written.
            assert last >= max(reported)
            page = store.list_violation_events(0, math.inf)
            events = page["violationEvents"]
            while "nextToken" in page:
                page = store.list_violation_events(0, math.inf, next_token=page["nextToken"])
                events += page["violationEvents"]
            active = store.list_active_violations()["activeViolations"]
        raised = [e["violationId"] for e in events if e["violationEventType"] == "in-alarm"]
        cleared = [e["violationId"] for e in events if e["violationEventType"] == "alarm-cleared"]
        assert raised == [f"v-{n}" for n in range(last + 1)]
        assert cleared == [f"v-{n}" for n in range(last - ACTIVE_SPAN + 1)]
        assert [a["violationId"] for a in active] == [
            f"v-{n}" for n in range(max(0, last - ACTIVE_SPAN + 1), last + 1)
        ]
        assert {a["lastViolationTime"] for a in active} == {float(last)}
    # Each run resumed from the stored alarm state, so the steps form one sequence.
    assert reported == sorted(set(reported))
