"""`validate-security-profile-behaviors` and `replay`: check a profile, then try it on
recorded metrics (the metrics-history JSON lines) before rolling it out."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import BinaryIO, TextIO

from agent.config import Config, load_config
from agent.core.events import EventType, ViolationEvent
from agent.core.judge import Judge
from agent.core.metrics import CLOUD_METRICS, clients_from_envelope, metrics_from_report
from agent.core.profile import (
    MAX_DOCUMENT_BYTES,
    ProfileError,
    SecurityProfile,
    check_behaviors,
    parse_json_document,
)
from agent.core.report import ReportError, parse_envelope
from agent.service.detect import detector_from_config
from agent.service.profiles import load_detect_files
from agent.service.text import (
    LATEST_S,
    TIME_RANGE,
    VALUE_CHARS,
    iso_time,
    metric_value_text,
    printable,
    table_row,
    time_problem,
)

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
        description="Prints AWS IoT's verdict. Exit 0 when valid, 1 when not, 2 when FILE "
        "cannot be read. On-device extensions (e.g. windows shorter than 300 s) are not "
        "valid in AWS; when they are all that is wrong, stderr says the device loads it.",
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
        metavar="FILE",
        help="security profile file (describe-security-profile output; may also hold "
        "dimensions); repeat for several, globs allowed (default: [detect] profiles "
        "of the config)",
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
    # The config's [detect] settings shape the judging as in the daemon.
    cfg = load_config(args.config)
    if args.thing:
        cfg = dataclasses.replace(cfg, thing_name=args.thing)
    return replay_command(cfg, args.profile, args.metrics, args.output, sys.stdout, sys.stderr)


def _open(path: str) -> contextlib.AbstractContextManager[BinaryIO]:
    """The file, or stdin for '-' (left open). Bytes: a line that is not UTF-8 is
    reported with its number like any other bad line."""
    if path == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    return open(path, "rb")


def validate_command(path: str, out: TextIO, err: TextIO) -> int:
    """Print the ValidateSecurityProfileBehaviors response for the file at `path`."""
    name = "<stdin>" if path == "-" else path
    try:
        with _open(path) as f:
            doc = parse_json_document(f.read(MAX_DOCUMENT_BYTES + 1), name)
    except OSError as e:
        print(f"edge-defender {VALIDATE}: {name}: cannot read: {e.strerror}", file=err)
        return 2
    except ProfileError as e:
        print(f"edge-defender {VALIDATE}: {e}", file=err)
        return 2
    errors, extensions = check_behaviors(doc)
    said = [*errors, *extensions]  # AWS's verdict: the extensions are errors there
    response = {"valid": not said, "validationErrors": [{"errorMessage": m} for m in said]}
    print(json.dumps(response, indent=2), file=out)
    if extensions and not errors:
        print(
            f"edge-defender {VALIDATE}: not valid in AWS IoT, but the device loads it: "
            f"{len(extensions)} on-device extension(s) AWS refuses (listed above)",
            file=err,
        )
    return 0 if not said else 1


_INT64 = range(-(2**63), 2**63)  # metric values are 64-bit (AWS's long)
_MESSAGE_CHARS = 300  # an error quotes the bad value, never a whole huge line


class _NotJSON(ValueError):
    pass


def _no_constant(name: str) -> float:
    raise _NotJSON(f"{name} is not a finite number (JSON has none)")


_JSON = json.JSONDecoder(parse_constant=_no_constant)


def _lone_surrogate(doc: object) -> str | None:
    """The first lone surrogate in the strings of `doc`, escaped, or None."""
    try:
        json.dumps(doc, ensure_ascii=False).encode()
    except UnicodeEncodeError as e:
        return e.object[e.start : e.end].encode("unicode_escape").decode()
    return None


def _beyond_int64(metrics: Mapping[str, object]) -> str | None:
    """A metric holding an integer a 64-bit value cannot (it would overflow the baseline
    statistics and the sums of windows), or None."""
    for name, value in metrics.items():
        for x in value if type(value) is list else (value,):
            if type(x) is int and x not in _INT64:
                return name
    return None


def _decode(line: bytes | str) -> object:
    """The JSON document on a line: strict JSON, in UTF-8, no lone surrogate."""
    text = line.decode() if isinstance(line, bytes) else line
    try:
        doc = _JSON.decode(text)
    except (json.JSONDecodeError, _NotJSON):
        raise
    except ValueError:  # the only other one: Python reads at most 4,300 digits
        raise _NotJSON("an integer has more than 4300 digits") from None
    # A lone surrogate is a \ud800-\udfff escape: a cheap test before the thorough one.
    if ("\\ud" in text or "\\uD" in text) and (bad := _lone_surrogate(doc)):
        raise _NotJSON(f"a string holds the lone surrogate {bad}: not Unicode text")
    return doc


Record = tuple[float, dict[str, object], dict[str, dict[str, object]] | None]


def _record(line: bytes | str, where: str) -> Record:
    """(timestamp, metrics, per-client broker metrics) of one metrics-history line, or
    ReplayError naming it."""
    try:
        envelope = _decode(line)
        timestamp, report = parse_envelope(envelope)
        metrics = metrics_from_report(report)
        clients = clients_from_envelope(envelope) if isinstance(envelope, dict) else None
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text (byte {e.start + 1} of the line)"
    except json.JSONDecodeError as e:
        problem = f"not JSON: {e.msg} at column {e.colno}"
    except _NotJSON as e:
        problem = f"not JSON: {e}"
    except RecursionError:
        problem = "not a metrics-history record: nested too deeply"
    except OverflowError:  # an integer timestamp beyond any float
        problem = f"timestamp: an integer too large for a time; a time is {TIME_RANGE}"
    except ReportError as e:
        problem = str(e)
    else:
        if (why := time_problem(timestamp)) is not None:
            problem = f"timestamp {why}"
        elif (name := _beyond_int64(metrics)) is not None:
            problem = f"{name}: an integer beyond 64 bits (-2^63 to 2^63-1)"
        else:
            return timestamp, metrics, clients
    if len(problem) > _MESSAGE_CHARS:
        problem = problem[: _MESSAGE_CHARS - 1] + "…"
    raise ReplayError(f"{where}: {problem}")


def read_samples(lines: Iterable[bytes | str], name: str) -> Iterator[Record]:
    """(timestamp, metrics, per-client metrics) per metrics-history line, read as they
    come. Blank lines hold nothing and are passed over; anything else that is not a
    valid record raises ReplayError naming the line, as does a timestamp earlier than
    the one before."""
    last = -math.inf
    last_line = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        record = _record(line, where)
        timestamp = record[0]
        if timestamp < last:
            raise ReplayError(
                f"{where}: timestamp {timestamp} goes back in time from {last} on line "
                f"{last_line}; samples must be in time order"
            )
        last, last_line = timestamp, number
        yield record


def replay(
    judge: Judge,
    samples: Iterable[Record],
    emit: Callable[[ViolationEvent], None],
    seen: set[str],
) -> int:
    """Feed `samples` through `judge`, emitting each event; returns the sample count and
    adds the metrics the recording held to `seen`. Windows still open at the end are not
    judged (spec)."""
    count = 0
    for timestamp, metrics, clients in samples:
        for event in judge.observe(timestamp, metrics, clients):
            emit(event)
        seen.update(metrics)
        for values in (clients or {}).values():
            seen.update(values)
        count += 1
    return count


def _unrecorded(metric: str) -> str:
    why = f"the recording holds no {metric}"
    if metric in CLOUD_METRICS:
        return why + " (a gateway records it per client with [capture.broker] on)"
    return why


TABLE_HEADERS = ("TIME", "PROFILE", "BEHAVIOR", "TYPE", "VALUE", "VIOLATION")
_ID_CHARS = 8  # the violation id is cut to its first 8 characters


def table_widths(profiles: Iterable[SecurityProfile]) -> list[int]:
    """Column widths that fit every event these profiles can raise, known before the
    first one: the table is printed as events come, never held."""
    profiles = list(profiles)
    kinds = [t.value + " (suppressed)" for t in EventType]
    fits = (
        [iso_time(LATEST_S + 0.5, "milliseconds")],
        [p.name for p in profiles],
        [b.name for p in profiles for b in p.behaviors],
        kinds,
        ["x" * VALUE_CHARS],
        ["x" * _ID_CHARS],
    )
    return [
        max([len(h), *(len(printable(cell)) for cell in cells)])
        for h, cells in zip(TABLE_HEADERS, fits, strict=True)
    ]


def table_cells(e: ViolationEvent) -> list[str]:
    """An event's row for people."""
    return [
        iso_time(e.violation_event_time, "milliseconds"),
        e.security_profile_name,
        str(e.behavior.get("name", "")),
        e.violation_event_type.value + (" (suppressed)" if e.suppressed else ""),
        metric_value_text(dict(e.metric_value)),
        e.violation_id[:_ID_CHARS],
    ]


def replay_command(
    cfg: Config,
    profile_patterns: list[str] | None,
    metrics_path: str,
    output: str,
    out: TextIO,
    err: TextIO,
) -> int:
    """The `replay` command: judge as `run` with `cfg` would, printing each event as it
    comes. Without `profile_patterns`, the profiles are the daemon's: [detect] profiles,
    else the built-in one when the config allows it. 0 when the whole input was
    replayed, 2 on bad input."""
    prog = f"edge-defender {REPLAY}"
    if profile_patterns is None:
        profile_patterns, builtin = cfg.profile_patterns, cfg.detect.builtin_profile
    else:
        builtin = False
    try:
        files = load_detect_files(profile_patterns, builtin_default=builtin)
    except ProfileError as e:
        print(f"{prog}: {e}", file=err)
        return 2
    if not files.profiles:
        print(f"{prog}: no security profile in {' '.join(profile_patterns)}", file=err)
        return 2
    try:
        detector = detector_from_config(cfg, files.profiles, files.dimensions, recorded=True)
    except ValueError as e:  # a profile name given twice
        print(f"{prog}: {e}", file=err)
        return 2
    if ml_metrics := detector.ml_metrics():  # ML behaviors judge with the device's models
        from agent.service.trainer import in_force, stored_records
        from agent.store.db import StoreError

        try:
            records = stored_records(cfg.state_dir)
        except StoreError as e:
            print(f"{prog}: ML behaviors not judged: {e}", file=err)
            records = {}
        detector.set_models(*in_force(records, ml_metrics, time.time()))
    counts: Counter[str] = Counter()
    seen: set[str] = set()
    if output == "table":
        widths = table_widths(files.profiles)
        print(table_row(TABLE_HEADERS, widths), file=out)

    def emit(event: ViolationEvent) -> None:
        counts[event.violation_event_type.value] += 1
        if output == "json":
            print(json.dumps(event.to_json()), file=out)
        else:
            print(table_row(table_cells(event), widths), file=out)

    name = "<stdin>" if metrics_path == "-" else metrics_path
    try:
        with _open(metrics_path) as f:
            samples = replay(detector, read_samples(f, name), emit, seen)
    except BrokenPipeError:
        raise  # the reader of our output left (`| head`): not an input problem
    except OSError as e:
        print(f"{prog}: {name}: cannot read: {e.strerror}", file=err)
        return 2
    except ReplayError as e:
        print(f"{prog}: {e}", file=err)
        return 2
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    print(
        f"{prog}: {samples} samples, {detector.datapoints} datapoints,"
        f" {counts.total()} events" + (f" ({detail})" if detail else ""),
        file=err,
    )
    for profile, behavior, reason in detector.inactive_behaviors():
        print(f"{prog}: {profile}/{behavior} not judged: {reason}", file=err)
    for p in files.profiles:
        for b in p.behaviors:
            if b.criteria is not None and b.metric not in seen:
                print(f"{prog}: {p.name}/{b.name} not judged: {_unrecorded(b.metric)}", file=err)
    for profile, behavior, reason in detector.mismatches():
        print(f"{prog}: {profile}/{behavior} skipped values: {reason}", file=err)
    return 0
