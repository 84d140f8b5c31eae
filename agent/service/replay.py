"""`validate-security-profile-behaviors` and `replay`: check a profile, then try it on
recorded metrics (the metrics-history JSON lines) before rolling it out."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, TextIO

from agent.config import load_config
from agent.core.evaluator import Detector
from agent.core.events import ViolationEvent
from agent.core.metrics import metrics_from_report
from agent.core.profile import ProfileError, validate_behaviors
from agent.core.report import ReportError, parse_envelope
from agent.service.profiles import load_detect_files
from agent.service.text import iso_time, metric_value_text, table

VALIDATE = "validate-security-profile-behaviors"
REPLAY = "replay"


class ReplayError(ValueError):
    """Input replay cannot use; the message names the file and line."""


def add_parsers(
    sub: argparse._SubParsersAction,
    add_config_arg: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    p = sub.add_parser(
        VALIDATE,
        help="check security profile behaviors as the AWS API does",
        description="Exit 0 when valid, 1 when not, 2 when FILE cannot be read.",
    )
    p.add_argument(
        "--behaviors",
        required=True,
        metavar="FILE",
        help="a whole security profile or a JSON list of behaviors ('-' for stdin)",
    )
    p.set_defaults(handler=handler)
    p = sub.add_parser(
        REPLAY,
        help="run security profiles over recorded metrics and print the violation events",
        description="Samples are metrics-history lines {timestamp, report} in time order; "
        "windows still open at the end are not judged.",
    )
    p.add_argument(
        "--profile",
        action="append",
        required=True,
        metavar="FILE",
        help="security profile file (describe-security-profile output; may also hold "
        "dimensions); repeat for several, globs allowed",
    )
    p.add_argument(
        "--metrics", required=True, metavar="FILE", help="metrics JSON lines ('-' for stdin)"
    )
    p.add_argument("--thing", metavar="NAME", help="thing name in events (default: config)")
    p.add_argument("--output", choices=("json", "table"), default="json")
    add_config_arg(p)
    p.set_defaults(handler=handler)


def run(args: argparse.Namespace) -> int:
    if args.command == VALIDATE:
        return validate_command(args.behaviors, sys.stdout, sys.stderr)
    thing = args.thing or load_config(args.config).thing_name
    return replay_command(args.profile, args.metrics, thing, args.output, sys.stdout, sys.stderr)


def _open(path: str) -> contextlib.AbstractContextManager[BinaryIO]:
    """The file, or stdin for '-' (left open). Bytes: a line that is not UTF-8 is
    reported with its number like any other bad line."""
    if path == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    return open(path, "rb")


def validate_command(path: str, out: TextIO, err: TextIO) -> int:
    """Print the ValidateSecurityProfileBehaviors response for the file at `path`."""
    try:
        with _open(path) as f:
            doc = json.load(f)
    except OSError as e:
        print(f"edge-defender {VALIDATE}: {path}: cannot read: {e.strerror}", file=err)
        return 2
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"edge-defender {VALIDATE}: {path}: not JSON: {e}", file=err)
        return 2
    errors = validate_behaviors(doc)
    response = {"valid": not errors, "validationErrors": [{"errorMessage": m} for m in errors]}
    print(json.dumps(response, indent=2), file=out)
    return 0 if not errors else 1


def read_samples(
    lines: Iterable[bytes | str], name: str
) -> Iterator[tuple[float, dict[str, object]]]:
    """(timestamp, metrics) per metrics-history line. Blank lines hold nothing and are
    passed over; anything else that is not a valid record raises ReplayError naming the
    line, as does a timestamp earlier than the one before."""
    last = -math.inf
    last_line = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            timestamp, report = parse_envelope(json.loads(line))
            metrics = metrics_from_report(report)
        except json.JSONDecodeError as e:
            raise ReplayError(f"{where}: not JSON: {e.msg} at column {e.colno}") from None
        except UnicodeDecodeError:
            raise ReplayError(f"{where}: not UTF-8 text") from None
        except ReportError as e:
            raise ReplayError(f"{where}: {e}") from None
        if not math.isfinite(timestamp):
            raise ReplayError(f"{where}: timestamp {timestamp} is not a finite number")
        if timestamp < last:
            raise ReplayError(
                f"{where}: timestamp {timestamp} goes back in time from {last} on line "
                f"{last_line}; samples must be in time order"
            )
        last, last_line = timestamp, number
        yield timestamp, metrics


def replay(
    detector: Detector,
    samples: Iterable[tuple[float, dict[str, object]]],
    emit: Callable[[ViolationEvent], None],
) -> int:
    """Feed `samples` through `detector`, emitting each event; returns the sample count.
    Windows still open at the end are not judged (spec)."""
    count = 0
    for timestamp, metrics in samples:
        for event in detector.observe(timestamp, metrics):
            emit(event)
        count += 1
    return count


def format_table(events: list[ViolationEvent]) -> list[str]:
    """Aligned columns for people; the id is cut to its first 8 characters."""
    rows = []
    for e in events:
        kind = e.violation_event_type.value + (" (suppressed)" if e.suppressed else "")
        rows.append(
            (
                iso_time(e.violation_event_time, "milliseconds"),
                e.security_profile_name,
                str(e.behavior.get("name", "")),
                kind,
                metric_value_text(dict(e.metric_value)),
                e.violation_id[:8],
            )
        )
    headers = ("TIME", "PROFILE", "BEHAVIOR", "TYPE", "VALUE", "VIOLATION")
    return table(headers, rows).splitlines()


def replay_command(
    profile_patterns: list[str],
    metrics_path: str,
    thing_name: str,
    output: str,
    out: TextIO,
    err: TextIO,
) -> int:
    """The `replay` command: 0 when the whole input was replayed, 2 on bad input."""
    prog = f"edge-defender {REPLAY}"
    try:
        files = load_detect_files(profile_patterns)
    except ProfileError as e:
        print(f"{prog}: {e}", file=err)
        return 2
    if not files.profiles:
        print(f"{prog}: no security profile in {' '.join(profile_patterns)}", file=err)
        return 2
    detector = Detector(files.profiles, thing_name, dimensions=files.dimensions)
    events: list[ViolationEvent] = []

    def emit(event: ViolationEvent) -> None:
        events.append(event)
        if output == "json":
            print(json.dumps(event.to_json()), file=out)

    name = "<stdin>" if metrics_path == "-" else metrics_path
    try:
        with _open(metrics_path) as f:
            samples = replay(detector, read_samples(f, name), emit)
    except OSError as e:
        print(f"{prog}: {name}: cannot read: {e.strerror}", file=err)
        return 2
    except ReplayError as e:
        print(f"{prog}: {e}", file=err)
        return 2
    if output == "table":
        for line in format_table(events):
            print(line, file=out)
    counts = Counter(e.violation_event_type.value for e in events)
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    print(
        f"{prog}: {samples} samples, {detector.datapoints} datapoints, {len(events)} events"
        + (f" ({detail})" if detail else ""),
        file=err,
    )
    for profile, behavior, reason in detector.inactive_behaviors():
        print(f"{prog}: {profile}/{behavior} not judged: {reason}", file=err)
    for profile, behavior, reason in detector.mismatches():
        print(f"{prog}: {profile}/{behavior} skipped values: {reason}", file=err)
    return 0
