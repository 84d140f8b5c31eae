"""The one entry point: `edge-defender <command>`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from agent import __version__
from agent.service.config import Config, ConfigError, load_config
from agent.service.logs import setup_logging

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def _config(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config (default /etc/edge-defender/config.toml when present)",
    )


def _run_collect(args: argparse.Namespace) -> int:
    from agent.service.collect import collect

    if args.jsonl and (args.format == "cbor" or args.short_names):
        raise SystemExit("edge-defender collect: --jsonl writes long-named JSON envelopes")
    return collect(
        _config(args),
        count=1 if args.once else args.count,
        interval_s=args.interval,
        fmt=args.format,
        short_names=args.short_names,
        jsonl=args.jsonl,
    )


def _register_collect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="sample the device and print metrics reports")
    _add_config_arg(p)
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--once", action="store_true", help="print one report")
    amount.add_argument(
        "--count", type=int, default=0, metavar="N", help="print N reports (default: until stopped)"
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between samples (default 1)",
    )
    p.add_argument("--format", choices=("json", "cbor"), default="json")
    p.add_argument("--short-names", action="store_true", help="use the short key names")
    p.add_argument(
        "--jsonl", action="store_true", help="one metrics-history envelope per line (replay input)"
    )
    p.set_defaults(handler=_run_collect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-defender", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-defender {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_collect(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as e:
        print(f"edge-defender: config: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
