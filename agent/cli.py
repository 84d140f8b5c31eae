"""The one entry point: `edge-defender <command>`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from agent import __version__
from agent.config import Config, ConfigError, load_config
from agent.logs import setup_logging

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


def _run_run(args: argparse.Namespace) -> int:
    import faulthandler

    from agent.service.daemon import run

    # systemd's watchdog ends a hung agent with SIGABRT: leave its Python stack in the journal.
    faulthandler.enable()
    return run(args.config)


def _register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the agent: sample, judge on the device, store, report")
    _add_config_arg(p)
    p.set_defaults(handler=_run_run)


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


def _run_query(args: argparse.Namespace) -> int:
    from agent.service.query import run

    return run(args, _config(args))


def _register_query(sub: argparse._SubParsersAction) -> None:
    from agent.service.query import add_parsers

    add_parsers(sub, _add_config_arg, _run_query)


def _run_audit(args: argparse.Namespace) -> int:
    from agent.service.audit import run

    return run(args, _config(args))


def _register_audit(sub: argparse._SubParsersAction) -> None:
    from agent.service.audit import add_parsers

    add_parsers(sub, _add_config_arg, _run_audit)


def _run_manage(args: argparse.Namespace) -> int:
    from agent.service.manage import run

    return run(args, _config(args))


def _register_manage(sub: argparse._SubParsersAction) -> None:
    from agent.service.manage import add_parsers

    add_parsers(sub, _add_config_arg, _run_manage)


def _run_mitigation(args: argparse.Namespace) -> int:
    from agent.service.mitigation import run

    return run(args, _config(args))


def _register_mitigation(sub: argparse._SubParsersAction) -> None:
    from agent.service.mitigation import add_parsers

    add_parsers(sub, _add_config_arg, _run_mitigation)


def _run_ml(args: argparse.Namespace) -> int:
    from agent.service.ml import run

    return run(args, _config(args))


def _register_ml(sub: argparse._SubParsersAction) -> None:
    from agent.service.ml import add_parsers

    add_parsers(sub, _add_config_arg, _run_ml)


def _run_control(args: argparse.Namespace) -> int:
    from agent.service.control import run

    return run(args, _config(args))


def _register_control(sub: argparse._SubParsersAction) -> None:
    from agent.service.control import add_parsers

    add_parsers(sub, _add_config_arg, _run_control)


def _run_check_config(args: argparse.Namespace) -> int:
    from agent.service.checks import run_check_config

    return run_check_config(args.config)


def _run_status(args: argparse.Namespace) -> int:
    from agent.service.status import run_status

    return run_status(_config(args), args.output)


def _run_install_service(args: argparse.Namespace) -> int:
    from agent.service.install import run_install_service

    return run_install_service(args.root, args.exec, net_admin=args.net_admin)


def _run_uninstall_service(args: argparse.Namespace) -> int:
    from agent.service.install import run_uninstall_service

    return run_uninstall_service(args.root, purge=args.purge)


def _run_reload(args: argparse.Namespace) -> int:
    from agent.service.reload import run_reload

    return run_reload(_config(args), args.pid, args.timeout)


def _register_reload(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reload",
        help="make the running agent reload; exit 1 when it refuses (the unit's ExecReload)",
    )
    _add_config_arg(p)
    p.add_argument("--pid", type=int, required=True, help="the agent's process id")
    # Within the unit's TimeoutStartSec=, which also bounds ExecReload=.
    p.add_argument(
        "--timeout", type=float, default=30.0, metavar="S", help="seconds to wait (default 30)"
    )
    p.set_defaults(handler=_run_reload)


def _register_operations(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-config",
        help="check the config, TLS files, profiles and state dir; exit 1 on any problem",
    )
    _add_config_arg(p)
    p.set_defaults(handler=_run_check_config)
    p = sub.add_parser("status", help="what the running agent is doing (from its status file)")
    _add_config_arg(p)
    p.add_argument("--output", choices=("table", "json"), default="table")
    p.set_defaults(handler=_run_status)
    root_help = "work on the tree under DIR (an image being built); run no systemd tool"
    p = sub.add_parser("install-service", help="install the systemd service on this device")
    p.add_argument("--root", metavar="DIR", help=root_help)
    p.add_argument(
        "--exec",
        metavar="PATH",
        help="program the unit runs, as on the device (default: this installation's)",
    )
    p.add_argument(
        "--net-admin", action="store_true", help="also install the CAP_NET_ADMIN drop-in"
    )
    p.set_defaults(handler=_run_install_service)
    p = sub.add_parser("uninstall-service", help="remove the systemd service; keeps config, state")
    p.add_argument("--root", metavar="DIR", help=root_help)
    p.add_argument("--purge", action="store_true", help="also remove config, keys and state")
    p.set_defaults(handler=_run_uninstall_service)


def _run_detect(args: argparse.Namespace) -> int:
    from agent.service.replay import run

    return run(args)


def _register_detect(sub: argparse._SubParsersAction) -> None:
    from agent.service.replay import add_parsers

    add_parsers(sub, _add_config_arg, _run_detect)


def build_parser(*, only_run: bool = False) -> argparse.ArgumentParser:
    """Every command; with `only_run`, `run` alone: registering the others imports their
    modules (audit, mitigation, ...), about a MiB the daemon would keep for nothing."""
    parser = argparse.ArgumentParser(prog="edge-defender", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-defender {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if only_run:
        _register_run(sub)
        return parser
    _register_detect(sub)
    _register_run(sub)
    _register_collect(sub)
    _register_query(sub)
    _register_audit(sub)
    _register_mitigation(sub)
    _register_manage(sub)
    _register_ml(sub)
    _register_control(sub)
    _register_operations(sub)
    _register_reload(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only_run=command == "run")
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
