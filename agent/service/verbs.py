"""The pieces the AWS-shaped verb groups share (query, audit, mitigation): times and JSON
parameters as the AWS CLI takes them, flags named from AWS parameter paths, JSON or
table output, paging flags, and the exit status from errors."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.core.audit_model import InvalidRequest
from agent.service.text import table, time_problem
from agent.store.db import StoreError

JSON_FORM = "JSON, file://PATH or - (stdin)"

AddVerb = Callable[[str, str, Callable[..., None]], argparse.ArgumentParser]


def parse_time(text: str) -> float:
    """Epoch seconds from epoch seconds or ISO 8601; a time without offset is UTC, as the
    AWS CLI reads it. Only years 1970 to 9999 are times here."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is neither ISO 8601 nor epoch seconds"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    problem = time_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def json_param(param: str, text: str) -> Any:
    """A JSON parameter as the AWS CLI takes it: inline, file://PATH, or - for stdin."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("file://"):
        path = text.removeprefix("file://")
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidRequest(
                param, f"cannot read {path}: {getattr(e, 'strerror', e)}"
            ) from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidRequest(param, f"not JSON: {e}") from None


def word_list(param: str, values: list[str]) -> list[Any]:
    """A list parameter as the AWS CLI takes it: words, or one JSON list."""
    if len(values) == 1 and values[0].lstrip().startswith("["):
        parsed = json_param(param, values[0])
        return parsed if isinstance(parsed, list) else [parsed]
    return values


def check_times(args: argparse.Namespace) -> tuple[float, float]:
    if args.end_time < args.start_time:
        raise InvalidRequest("endTime", "is before startTime")
    return args.start_time, args.end_time


def check_task_or_times(args: argparse.Namespace) -> None:
    """--task-id, or --start-time with --end-time: one or the other, as AWS."""
    times = (args.start_time, args.end_time)
    if args.task_id is not None and times != (None, None):
        raise InvalidRequest(
            "taskId", "give --task-id or --start-time with --end-time, not both (as AWS)"
        )
    if args.task_id is None:
        if None in times:
            missing = "startTime" if args.start_time is None else "endTime"
            raise InvalidRequest(
                missing, "is required: give --task-id, or --start-time with --end-time"
            )
        check_times(args)


def flag(param: str) -> str:
    """The flag of an AWS parameter path: auditCheckConfigurations.X.enabled ->
    --audit-check-configurations: X.enabled."""
    head = param.split(".", 1)[0].split("[", 1)[0]
    rest = param[len(head) :].removeprefix(".")
    name = "--" + re.sub(r"[A-Z]", lambda m: "-" + m.group().lower(), head)
    return f"{name}: {rest}" if rest else name


def exit_status(command: str, work: Callable[[], None]) -> int:
    """Run `work`: 0 done, 2 a bad parameter (one line naming its flag), 1 the store
    refused (StoreError: unknown or existing resources among them)."""
    try:
        work()
    except InvalidRequest as e:
        print(f"edge-defender: {command}: {flag(e.param)}: {e.message}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"edge-defender: {command}: {e}", file=sys.stderr)
        return 1
    return 0


def print_answer(answer: Mapping[str, Any]) -> None:
    print(json.dumps(answer, indent=4, ensure_ascii=False))


def print_page(
    args: argparse.Namespace,
    answer: Mapping[str, Any],
    key: str,
    headers: Sequence[str],
    row: Callable[[Mapping[str, Any]], list[str]],
) -> None:
    """A listing's page as --output asks: the JSON answer, or a table of answer[key]."""
    if args.output == "json":
        print_answer(answer)
        return
    print(table(headers, [row(item) for item in answer[key]]))
    if "nextToken" in answer:
        print(f"nextToken: {answer['nextToken']}")


def verb_adder(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_arg: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> AddVerb:
    """What registers one verb: its parser, with the config flag, calling `handler` with
    the verb's function as args.verb."""

    def add(name: str, help_text: str, fn: Callable[..., None]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_config_arg(p)
        p.set_defaults(handler=handler, verb=fn)
        return p

    return add


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        choices=("json", "table"),
        default="json",
        help="json (default; times as epoch seconds) or table (times as ISO 8601 UTC)",
    )


def add_paging(p: argparse.ArgumentParser, default: int, maximum: int, note: str = "") -> None:
    """--max-results (help: `note` after the default) and --next-token."""
    p.add_argument(
        "--max-results",
        type=int,
        default=default,
        metavar="N",
        help=f"results per page, 1-{maximum} (default {default}{note})",
    )
    p.add_argument("--next-token", metavar="TOKEN", help="the nextToken of the previous page")


def add_times(p: argparse.ArgumentParser, required: bool) -> None:
    """--start-time and --end-time, the end included."""
    form = "ISO 8601 (UTC when it has no offset) or epoch seconds"
    for name, bound in (("--start-time", "from"), ("--end-time", "to, included")):
        p.add_argument(
            name, type=parse_time, required=required, metavar="T", help=f"{bound}; {form}"
        )


def runner_gone(pid: int | None) -> bool:
    """Whether the process that took a task (an audit task, a mitigation execution) is
    gone, so that the task can be failed: killed, or a power cut."""
    if pid is None:
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process
    return False
