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
    p.add_argument("--config", metavar="PATH", help="TOML config (default /etc/edge-defender/config.toml when present)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-defender", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-defender {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each command module registers its parsers here.
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
