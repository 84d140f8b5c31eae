"""The query verbs on the local store, named and shaped as the AWS CLI's:
list-violation-events, list-active-violations, put-verification-state-on-violation
and export-metrics. They open the daemon's store beside it (WAL: readers never block
the writer) and print JSON with epoch-second times, or a table with ISO times."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import Config
from agent.service.text import iso_time, metric_value_text
from agent.service.verbs import add_output, add_paging, parse_time, print_page, verb_adder
from agent.store.history import (
    CRITERIA_TYPES,
    MAX_RESULTS,
    VERIFICATION_STATES,
    History,
    InvalidRequest,
    StoreError,
    history_path,
    open_history,
)

Verb = Callable[[History, argparse.Namespace], None]


def _behavior_text(record: Mapping[str, Any]) -> str:
    behavior = record["behavior"]
    suffix = " (suppressed)" if behavior.get("suppressAlerts", False) else ""
    return behavior["name"] + suffix


# The store checked the keys read with [] when it recorded them.
def _event_row(event: Mapping[str, Any]) -> list[str]:
    return [
        iso_time(event["violationEventTime"]),
        event["violationEventType"],
        event["thingName"],
        event["securityProfileName"],
        _behavior_text(event),
        metric_value_text(event.get("metricValue")),
        event["verificationState"],
        event["violationId"],
    ]


def _active_row(active: Mapping[str, Any]) -> list[str]:
    return [
        iso_time(active["violationStartTime"]),
        iso_time(active.get("lastViolationTime")),
        active["thingName"],
        active["securityProfileName"],
        _behavior_text(active),
        metric_value_text(active.get("lastViolationValue")),
        active["verificationState"],
        active["violationId"],
    ]


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "thing_name": args.thing_name,
        "security_profile_name": args.security_profile_name,
        "behavior_criteria_type": args.behavior_criteria_type,
        "list_suppressed_alerts": args.list_suppressed_alerts,
        "verification_state": args.verification_state,
        "max_results": args.max_results,
        "next_token": args.next_token,
    }


def _list_violation_events(store: History, args: argparse.Namespace) -> None:
    answer = store.list_violation_events(args.start_time, args.end_time, **_filters(args))
    headers = ("TIME", "TYPE", "THING", "PROFILE", "BEHAVIOR", "VALUE", "VERIFICATION", "ID")
    print_page(args, answer, "violationEvents", headers, _event_row)


def _list_active_violations(store: History, args: argparse.Namespace) -> None:
    answer = store.list_active_violations(**_filters(args))
    headers = ("STARTED", "LAST", "THING", "PROFILE", "BEHAVIOR", "VALUE", "VERIFICATION", "ID")
    print_page(args, answer, "activeViolations", headers, _active_row)


def _put_verification_state(store: History, args: argparse.Namespace) -> None:
    store.put_verification_state(
        args.violation_id, args.verification_state, args.verification_state_description
    )
    # The AWS answer is empty; its table rendering prints nothing.
    if args.output == "json":
        print("{}")


def _export_metrics(store: History, args: argparse.Namespace) -> None:
    for envelope in store.export_metrics(args.start_time, args.end_time):
        sys.stdout.write(json.dumps(envelope, separators=(",", ":")) + "\n")


def _flag(param: str) -> str:
    """The CLI flag of an AWS parameter name: maxResults -> --max-results."""
    return "--" + re.sub(r"[A-Z]", lambda m: "-" + m.group().lower(), param)


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Run the verb the parser chose on the store of `cfg`. Exit status: 0 done,
    1 store missing, unreadable or violation unknown, 2 a bad parameter."""
    path = history_path(cfg.state_dir)
    try:
        with open_history(path, create=False) as store:
            args.verb(store, args)
    except InvalidRequest as e:
        print(f"edge-defender: {args.command}: {_flag(e.param)}: {e.message}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"edge-defender: {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


def _add_time_range(p: argparse.ArgumentParser) -> None:
    form = "ISO 8601 (UTC when it has no offset) or epoch seconds"
    for flag, bound in (("--start-time", "included"), ("--end-time", "excluded")):
        p.add_argument(flag, type=parse_time, required=True, metavar="T", help=f"{bound}; {form}")


def _add_list_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--thing-name", metavar="NAME")
    p.add_argument("--security-profile-name", metavar="NAME")
    p.add_argument("--behavior-criteria-type", choices=CRITERIA_TYPES)
    p.add_argument(
        "--list-suppressed-alerts",
        action=argparse.BooleanOptionalAction,
        help="only suppressed (--list-...) or only unsuppressed (--no-...); default both",
    )
    p.add_argument("--verification-state", choices=VERIFICATION_STATES)
    add_paging(p, MAX_RESULTS, MAX_RESULTS)
    add_output(p)


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_arg: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    """Register the query verbs; `handler` loads the config and calls run()."""
    verb_parser: Callable[[str, str, Verb], argparse.ArgumentParser] = verb_adder(
        sub, add_config_arg, handler
    )
    p = verb_parser(
        "list-violation-events",
        "violation events in a time range, oldest first (ties in recording order)",
        _list_violation_events,
    )
    _add_time_range(p)
    _add_list_filters(p)

    p = verb_parser(
        "list-active-violations",
        "the violations in alarm now, by start time",
        _list_active_violations,
    )
    _add_list_filters(p)

    p = verb_parser(
        "put-verification-state-on-violation",
        "mark a violation (its events and its active entry) as verified",
        _put_verification_state,
    )
    p.add_argument("--violation-id", required=True, metavar="ID")
    p.add_argument("--verification-state", required=True, choices=VERIFICATION_STATES)
    p.add_argument("--verification-state-description", metavar="TEXT")
    add_output(p)

    p = verb_parser(
        "export-metrics",
        "metrics history as replay input: one JSON envelope per line",
        _export_metrics,
    )
    _add_time_range(p)
