"""The rig's report: DIR/report.json (schema in hw/README.md) and DIR/report.html, one
self-contained page with a timeline plot per scenario (PNG as data URIs).

A plot has a panel per behavior: for an attack scenario its expected behaviors and any
behavior that alarmed, for the benign scenario every judged behavior. A panel shows the
behavior's metric as the agent judges it (per sample, or per window of durationSeconds
at the window's end; for a list metric, how many entries break the criteria), its
threshold, the alarm spans (in-alarm to alarm-cleared or -invalidated, or the end),
the attack start, the goal (and the lead it includes), the detection latency and the
false alarms: alarms no expected entry matches, among them those of an expected
behavior for another thing than the one the entries name. A scenario that blocks has
one more panel: its connect-probe's attempts (1 connected, 0 failed) and the block's
start. Times are the rig's clock, in
seconds from the attack start (benign: from the first sample)."""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.core.criteria import PREPARE, static_check
from agent.core.metrics import NUMERIC_KINDS, Kind, is_finite_number, metrics_from_report
from agent.core.profile import Behavior, ProfileError
from agent.core.report import ReportError, parse_envelope
from hw.scoring import (
    IN_ALARM,
    TABLE_HEADER,
    ScenarioResult,
    behaviors,
    event_key,
    matches,
    table_rows,
    window_end,
)

TOP_KEYS = ("scenarios", "false_alarms", "benign_s")


def scenario_document(r: ScenarioResult) -> dict[str, Any]:
    """One entry of report.json's "scenarios"."""
    return {
        "name": r.name,
        "expected": r.expected,
        "detected": r.detected,
        "latency_s": r.latency_s,
        "events": r.events,
        "latencies_s": r.latencies_s,
        "goal_s": r.goal_s,
        "lead_s": r.lead_s,
        "met": r.met,
        "false_alarms": r.false_alarms,
        "benign": r.benign,
        "attack_start": r.attack_start,
        "end": r.end,
        "clock_offset_s": r.clock_offset_s,
        "samples": len(r.metrics),
        **({"block": block_document(r)} if r.blocking else {}),
    }


def block_document(r: ScenarioResult) -> dict[str, Any]:
    """The "block" of a scenario whose automatic response blocks (hw/README.md)."""
    return {
        "block_s": r.block_s,
        "goal_s": r.block_goal_s,
        "blocked_at": r.blocked_at,
        "attempts": [{"t": t, "connected": ok} for t, ok in r.attempts],
        "executions": r.executions,
        "blocked_left": r.blocked_left,
    }


def report_document(
    results: Sequence[ScenarioResult], *, benign_s: float, meta: Mapping[str, Any]
) -> dict[str, Any]:
    """report.json: the issue's keys, then `meta` (what the run was: dut, quick, ...).
    "false_alarms" counts the benign scenarios' alarms, over benign_s of benign load."""
    clash = sorted(set(meta) & set(TOP_KEYS))
    if clash:
        raise ValueError(f"report meta: keys {clash} are the report's own; rename them")
    return {
        "scenarios": [scenario_document(r) for r in results],
        "false_alarms": sum(r.false_alarms for r in results if r.benign),
        "benign_s": benign_s,
        **meta,
    }


@dataclass
class Panel:
    """One behavior's timeline, in seconds from the plot's origin."""

    title: str
    ylabel: str
    expected: bool
    points: list[tuple[float, float]] = field(default_factory=list)
    threshold: float | None = None
    window_s: int | None = None  # durationSeconds: each point is a window's, at its end
    spans: list[tuple[float, float]] = field(default_factory=list)  # alarm spans
    # For an expected behavior: the largest first-alarm latency of its entries (one per
    # thing), None when one of them was missed.
    detection: float | None = None
    false_alarms: list[float] = field(default_factory=list)
    probe: bool = False  # the connect-probe's attempts, not a behavior


def _samples(r: ScenarioResult) -> tuple[list[tuple[float, dict[str, object]]], int]:
    """(device time, metrics) of each readable envelope, and how many were unreadable."""
    out = []
    bad = 0
    for envelope in r.metrics:
        try:
            ts, report = parse_envelope(envelope)
            out.append((ts, metrics_from_report(report)))
        except ReportError:
            bad += 1
    return out, bad


def _values(
    b: Behavior, samples: list[tuple[float, dict[str, object]]]
) -> list[tuple[float, float]]:
    """(device time, value as the agent judges it) of one behavior. Windows end on the
    device's clock; the window still open at the last sample is left out (the agent may
    not have judged it). Values per MQTT topic (dimensions) are not drawn."""
    assert b.kind is not None and b.criteria is not None
    kind = b.kind
    if kind not in NUMERIC_KINDS:  # a list: how many of its entries break the criteria
        check = static_check(b.criteria, kind)
        prepare = PREPARE.get(kind, lambda v: v)
        return [
            (ts, float(sum(not check(prepare([x])) for x in v)))
            for ts, m in samples
            if isinstance(v := m.get(b.metric), list)
        ]
    numbers = [
        (ts, float(v))
        for ts, m in samples
        if isinstance(v := m.get(b.metric), int | float) and is_finite_number(v)
    ]
    duration = b.criteria.duration_s
    if duration is None:
        return numbers
    windows: dict[float, float] = {}
    for ts, v in numbers:
        end = window_end(ts, duration)
        windows[end] = windows.get(end, 0.0) + v if kind is Kind.COUNTER else v
    last = samples[-1][0] if samples else -math.inf
    return [(end, v) for end, v in windows.items() if end <= last]


def _describe(b: Behavior) -> tuple[str, str, float | None]:
    """(criteria in words, y label, numeric threshold or None)."""
    c = b.criteria
    assert c is not None and b.kind is not None
    window = f" over {c.duration_s} s windows" if c.duration_s else ""
    if c.ml_confidence is not None:  # judged by its model: no threshold to draw
        return f"ML detection at {c.ml_confidence} (over its model's window)", b.metric, None
    if c.statistic is not None:
        return f"{c.operator} {c.statistic} of its baseline{window}", b.metric, None
    value = c.value or {}
    if b.kind in NUMERIC_KINDS:
        threshold = value.get("count", value.get("number"))
        return f"{c.operator} {threshold}{window}", b.metric, float(threshold)
    listed: object = next(iter(value.values()), [])
    return f"{c.operator} {listed}", "entries breaking it", 0.5


def panels(r: ScenarioResult) -> tuple[list[Panel], float, int]:
    """The panels of a scenario's plot, the plot's origin (rig clock) and how many
    metrics records could not be read."""
    samples, bad = _samples(r)
    known = behaviors(r.profiles)
    for e in r.events:  # a behavior the profiles lack is drawn as its events carry it
        key = event_key(e)
        if key not in known:
            with contextlib.suppress(ProfileError):  # then it is only in the events table
                known |= behaviors([{"securityProfileName": key[0], "behaviors": [e["behavior"]]}])
    entries = [(e["profile"], e["behavior"], e.get("thing")) for e in r.expected]
    wanted = [w[:2] for w in entries]
    alarmed = [event_key(e) for e in r.events if e.get("violationEventType") == IN_ALARM]
    judged = [k for k, b in known.items() if b.kind is not None and b.criteria is not None]
    keys = list(dict.fromkeys([*wanted, *(judged if r.benign else []), *alarmed]))
    off = r.clock_offset_s
    first = [ts - off for ts, _ in samples] + [
        float(e["violationEventTime"]) - off for e in r.events
    ]
    origin = r.attack_start if r.attack_start is not None else min(first, default=r.end)
    out = []
    for key in keys:
        b = known.get(key)
        if b is None or b.kind is None or b.criteria is None:
            continue
        words, ylabel, threshold = _describe(b)
        own = [i for i, w in enumerate(wanted) if w == key]
        things = [thing for i in own if (thing := entries[i][2]) is not None]
        panel = Panel(
            title=f"{key[0]}/{key[1]}"
            + (f" for {', '.join(things)}" if things else "")
            + f": {b.metric} {words}",
            ylabel=ylabel,
            expected=key in wanted,
            points=[(ts - off - origin, v) for ts, v in _values(b, samples)],
            threshold=threshold,
            window_s=b.criteria.duration_s,
        )
        starts: dict[str, float] = {}
        for e in sorted(r.events, key=lambda e: float(e["violationEventTime"])):
            if event_key(e) != key:
                continue
            t = float(e["violationEventTime"]) - off - origin
            if e["violationEventType"] == IN_ALARM:
                starts[e["violationId"]] = t
                if not any(matches(w, e) for w in entries):
                    panel.false_alarms.append(t)
            elif e["violationId"] in starts:
                panel.spans.append((starts.pop(e["violationId"]), t))
        panel.spans += [(t, r.end - origin) for t in starts.values()]
        latencies = [r.latencies_s[i] for i in own]
        if panel.expected and None not in latencies:
            panel.detection = max(x for x in latencies if x is not None)
        out.append(panel)
    if r.blocking:
        out.append(
            Panel(
                title="connect-probe: connects to the forbidden address (1 connected, 0 failed)",
                ylabel="connected",
                expected=False,
                points=[(t - origin, float(ok)) for t, ok in r.attempts],
                probe=True,
            )
        )
    return out, origin, bad


def _plot(r: ScenarioResult, found: Sequence[Panel], origin: float, bad: int) -> bytes:
    """The scenario's timeline as PNG bytes (`panels` gives the other arguments)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = max(len(found), 1)
    fig, axes = plt.subplots(n, 1, sharex=True, figsize=(10, 1.9 * n + 1.0), squeeze=False)
    try:
        for ax, panel in zip(axes[:, 0], found, strict=False):
            _draw(ax, panel, r)
        if not found:
            axes[0, 0].text(0.5, 0.5, "no behavior to plot", ha="center", va="center")
        if not r.metrics or bad:
            note = "no metrics history" if not r.metrics else f"{bad} metrics records unreadable"
            fig.text(0.99, 0.005, note, ha="right", va="bottom", fontsize=8, color="tab:red")
        axes[-1, 0].set_xlabel(
            "seconds since the first sample"
            if r.attack_start is None
            else "seconds since the attack start"
        )
        handles = [
            Line2D([], [], color="tab:blue", marker=".", label="metric"),
            Line2D([], [], color="tab:red", ls="--", label="threshold"),
            Patch(color="tab:orange", alpha=0.3, label="alarm"),
            Line2D([], [], color="black", label="attack start"),
            Line2D([], [], color="tab:green", ls=":", label="goal"),
            Line2D([], [], color="tab:red", marker="v", ls="", label="false alarm"),
        ]
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8)
        fig.tight_layout(rect=(0, 0.02, 1, 1 - 0.45 / fig.get_figheight()))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()
    finally:
        plt.close(fig)


def _draw(ax: Any, panel: Panel, r: ScenarioResult) -> None:
    ax.set_title(panel.title, fontsize=9, loc="left")
    ax.set_ylabel(panel.ylabel, fontsize=8)
    ax.tick_params(labelsize=8)
    if panel.probe:
        _draw_probe(ax, panel, r)
        return
    if panel.points:
        xs, ys = zip(*panel.points, strict=True)
        dots = "." if len(xs) <= 300 else ""
        if panel.window_s is None:
            ax.plot(xs, ys, color="tab:blue", marker=dots, ms=3, lw=1.2)
        else:  # a window's value spans the window
            ax.hlines(ys, [x - panel.window_s for x in xs], xs, color="tab:blue", lw=1.5)
            ax.plot(xs, ys, color="tab:blue", marker=dots or ".", ms=4, ls="")
    else:
        ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", color="grey")
    if panel.threshold is not None:
        ax.axhline(panel.threshold, color="tab:red", ls="--", lw=1)
    if all(v >= 0 for _, v in panel.points):  # counts: from zero, not from their minimum
        ax.set_ylim(bottom=0)
    for a, b in panel.spans:
        ax.axvspan(a, b, color="tab:orange" if panel.expected else "tab:red", alpha=0.3, lw=0)
    for t in panel.false_alarms:
        ax.plot(
            [t],
            [1.0],
            marker="v",
            ms=8,
            color="tab:red",
            clip_on=False,
            transform=ax.get_xaxis_transform(),
        )
    if r.attack_start is None:
        return
    ax.axvline(0, color="black", lw=1.2)
    if r.goal_s is not None:
        ax.axvline(r.goal_s, color="tab:green", ls=":", lw=1.2)
        lead = f" (lead {r.lead_s:g} s)" if r.lead_s else ""
        ax.text(
            r.goal_s,
            0.03,
            f" goal {r.goal_s:.1f} s{lead}",
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            color="tab:green",
        )
    if not panel.expected:
        return
    top = ax.get_xaxis_transform()
    if panel.detection is None:
        ax.text(0.01, 0.85, "NOT DETECTED", transform=ax.transAxes, color="tab:red", fontsize=9)
        return
    ax.annotate(
        "",
        xy=(panel.detection, 0.9),
        xytext=(0, 0.9),
        xycoords=top,
        arrowprops={"arrowstyle": "->", "color": "black"},
    )
    ax.text(
        panel.detection,
        0.93,
        f" detected after {panel.detection:.1f} s",
        transform=top,
        fontsize=8,
        va="bottom",
    )


def _draw_probe(ax: Any, panel: Panel, r: ScenarioResult) -> None:
    """The connect-probe's attempts, the attack start and the block's start."""
    if panel.points:
        xs, ys = zip(*panel.points, strict=True)
        ax.plot(xs, ys, color="tab:blue", marker=".", ms=3, lw=0.8, drawstyle="steps-post")
    ax.set_ylim(-0.1, 1.1)
    if r.attack_start is not None:
        ax.axvline(0, color="black", lw=1.2)
        origin = r.attack_start
        if r.blocked_at is not None and r.block_s is not None:
            x = r.blocked_at - origin
            ax.axvline(x, color="tab:purple", ls="--", lw=1.2)
            if r.block_goal_s is not None:  # counted from the alarm
                ax.axvline(x - r.block_s + r.block_goal_s, color="tab:green", ls=":", lw=1.2)
            ax.text(
                x,
                0.5,
                f" blocked {r.block_s:.1f} s after the alarm (goal {r.block_goal_s or 0:.1f} s)",
                fontsize=8,
                color="tab:purple",
            )
        else:
            ax.text(0.01, 0.5, "NOT BLOCKED", transform=ax.transAxes, color="tab:red", fontsize=9)


def _cells(tag: str, cells: Sequence[str]) -> str:
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _executions_table(r: ScenarioResult, origin: float) -> str:
    """The agent's mitigation action executions: what the block did, or why it failed."""
    if not r.blocking:
        return ""
    if not r.executions:
        return "<p>No mitigation action execution.</p>"
    rows = [_cells("th", ("started (s)", "task", "action", "status", "message"))]
    for x in r.executions:
        start = x.get("executionStartDate")
        at = "-" if start is None else f"{float(start) - r.clock_offset_s - origin:.1f}"
        status = str(x.get("status", ""))
        if x.get("errorCode"):
            status += f" ({x['errorCode']})"
        rows.append(
            _cells(
                "td",
                (
                    at,
                    str(x.get("taskId", "")),
                    str(x.get("actionName", "")),
                    status,
                    str(x.get("message", ""))[:300],
                ),
            )
        )
    left = ", ".join(r.blocked_left) or "nothing"
    return (
        f"<p>Mitigation action executions:</p><table>{''.join(rows)}</table>"
        f"<p>Still blocked when the scenario ended: {html.escape(left)}</p>"
    )


def _events_table(r: ScenarioResult, origin: float) -> str:
    if not r.events:
        return "<p>No events.</p>"
    rows = [_cells("th", ("t (s)", "event", "profile/behavior", "thing", "value"))]
    for e in r.events:
        t = float(e["violationEventTime"]) - r.clock_offset_s - origin
        rows.append(
            _cells(
                "td",
                (
                    f"{t:.1f}",
                    str(e["violationEventType"]),
                    f"{e['securityProfileName']}/{e['behavior']['name']}",
                    str(e.get("thingName", "")),
                    json.dumps(e.get("metricValue"))[:200],
                ),
            )
        )
    summary = f"<summary>{len(r.events)} events</summary>"
    return f"<details>{summary}<table>{''.join(rows)}</table></details>"


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1100px}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;
text-align:left;font-size:90%}img{max-width:100%}.no{color:#b00;font-weight:bold}"""


def report_html(results: Sequence[ScenarioResult], doc: Mapping[str, Any]) -> str:
    """The page: the summary table, then each scenario's plot and events."""
    meta = {k: v for k, v in doc.items() if k not in TOP_KEYS}
    started = meta.get("started")
    if isinstance(started, int | float):
        meta["started"] = datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")
    rows = [_cells("th", TABLE_HEADER)]
    for cells in table_rows(results):
        row = _cells("td", cells)
        rows.append(row.replace("<td>NO</td>", '<td class="no">NO</td>'))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>edge-defender rig report"
        f"</title><style>{STYLE}</style></head><body><h1>edge-defender rig report</h1>",
        "<p>" + html.escape(", ".join(f"{k}: {v}" for k, v in meta.items())) + "</p>",
        f"<table>{''.join(rows)}</table>",
        f"<p>False alarms over {doc['benign_s']:g} s of benign load: {doc['false_alarms']}</p>",
    ]
    for r in results:
        found, origin, bad = panels(r)
        png = base64.b64encode(_plot(r, found, origin, bad)).decode()
        parts.append(
            f"<h2>{html.escape(r.name)}</h2>"
            f'<img alt="timeline of {html.escape(r.name)}" src="data:image/png;base64,{png}">'
            + _executions_table(r, origin)
            + _events_table(r, origin)
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(
    out: Path, results: Sequence[ScenarioResult], *, benign_s: float, meta: Mapping[str, Any]
) -> None:
    """Write out/report.json and out/report.html (the directory is made if need be)."""
    doc = report_document(results, benign_s=benign_s, meta=meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "report.html").write_text(report_html(results, doc))
