"""Remote control (docs/control.md): requests over MQTT 5 and the named shadow, run on a
thread of their own so that sampling never waits for them.

A request runs the CLI's own verb in this process, parsed by the CLI's own parser:
what the command line refuses, a request is refused the same way, with the same
message. Profile and dimension changes go to Config.remote_dir, and the agent reloads
through its own SIGHUP path, so a change the agent refuses is rolled back exactly as
for `edge-defender update-security-profile` on the device.

The shadow (awsiotsdk's IotShadowClientV2 on the outbox's MQTT 5 client): its desired
state holds profiles, dimensions and settings (agent.core.control.plan); the device
applies the difference with the same verbs and reports what is applied, with versions
and errors. Every message, done or refused, is journaled in control.db."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from agent import __version__
from agent.config import Config, ConfigError, load_config, with_settings
from agent.core.control import (
    Arg,
    Change,
    ControlError,
    option_members,
    parse_json,
    parse_request,
    plan,
    reply,
    reported,
    response_topic,
    shadow_patch,
    to_argv,
)
from agent.logs import kv
from agent.publish.delivery import is_aws_endpoint
from agent.service import manage, ml, query
from agent.service.reload import ReloadError, reload
from agent.service.status import ControlStatus
from agent.store.control import ControlStore
from agent.store.db import StoreError, make_private_dir
from agent.store.paths import control_path

if TYPE_CHECKING:
    from agent.publish.mqtt import Received

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 131_072 - 1024  # AWS IoT's message limit, less the topic and properties
MAX_SHADOW_BYTES = 8192  # AWS IoT's limit on a shadow's state document
MAX_PENDING = 64  # requests waiting; beyond, each is refused at once as busy
SHADOW_TIMEOUT_S = 30
SHADOW_POLL_S = 600.0  # a missed update/documents is caught this late at worst
# Verbs not for a remote: a whole history export; training reads a file of the device's
# and takes seconds of CPU (the daemon trains daily by itself).
NOT_REMOTE = frozenset({"export-metrics", "train"})
_SKIPPED_OPTIONS = frozenset({"--help", "--output", "--no-reload"})


@dataclass(frozen=True)
class Answer:
    topic: str
    payload: bytes
    correlation: bytes | None


class _ParseError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting the daemon."""

    def error(self, message: str) -> NoReturn:
        raise _ParseError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise _ParseError(message or f"exit {status}")


class _ThreadStreams(io.TextIOBase):
    """sys.stdout / sys.stderr that write to a buffer of the current thread while it
    runs a verb, and through to the real stream otherwise."""

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self._local = threading.local()

    def write(self, text: str) -> int:
        buffer: io.StringIO | None = getattr(self._local, "buffer", None)
        return (buffer or self.real).write(text)

    def flush(self) -> None:
        if getattr(self._local, "buffer", None) is None:
            self.real.flush()

    @contextlib.contextmanager
    def capture(self) -> Iterator[io.StringIO]:
        self._local.buffer = buffer = io.StringIO()
        try:
            yield buffer
        finally:
            self._local.buffer = None


def _streams() -> tuple[_ThreadStreams, _ThreadStreams]:
    """The switches on sys.stdout and sys.stderr, installed once."""
    for name in ("stdout", "stderr"):
        if not isinstance(getattr(sys, name), _ThreadStreams):
            setattr(sys, name, _ThreadStreams(getattr(sys, name)))
    return sys.stdout, sys.stderr  # type: ignore[return-value]


def _kind(action: argparse.Action) -> Arg:
    if isinstance(action, argparse._StoreTrueAction):
        return Arg.FLAG
    return Arg.VALUES if action.nargs in ("+", "*") else Arg.VALUE


class RemoteVerbs:
    """The verbs a remote may run, parsed by the CLI's parsers, run in this process."""

    def __init__(self, cfg: Callable[[], Config], ask_reload: Callable[[], None] | None) -> None:
        self._cfg = cfg
        self._ask_reload = ask_reload
        self.parser = _Parser(prog="edge-defender", add_help=False)
        sub: argparse._SubParsersAction[argparse.ArgumentParser] = self.parser.add_subparsers(
            dest="command", required=True, parser_class=_Parser
        )
        query.add_parsers(sub, lambda p: None, lambda a: query.run(a, self._cfg()))
        manage.add_parsers(sub, lambda p: None, self._manage)
        ml.add_parsers(sub, lambda p: None, lambda a: ml.run(a, self._cfg()))
        p = sub.add_parser("describe-agent-status", add_help=False)
        p.set_defaults(handler=self._status)
        self.options: dict[str, dict[str, Arg]] = {}
        for verb, p in sub.choices.items():
            if verb in NOT_REMOTE:
                continue
            flags = {
                a.option_strings[-1]: _kind(a)
                for a in p._actions
                if a.option_strings and a.option_strings[-1] not in _SKIPPED_OPTIONS
            }
            self.options[verb] = option_members(flags)

    def _manage(self, args: argparse.Namespace) -> int:
        cfg = self._cfg()
        make_private_dir(cfg.remote_dir)
        return manage.run(args, cfg, cfg.remote_dir, self._ask_reload)

    def _status(self, args: argparse.Namespace) -> int:
        from agent.service.status import run_status

        return run_status(self._cfg(), "json")

    def run(self, argv: list[str]) -> tuple[int, Any, str | None]:
        """(exit status, what the verb printed, as JSON when it is, what it said was
        wrong) for the CLI's argv."""
        out, err = _streams()
        with out.capture() as printed, err.capture() as said:
            try:
                args = self.parser.parse_args(argv)  # --output is json by default
                status = args.handler(args)
            except _ParseError as e:
                return 2, None, f"{argv[0]}: {e}"
            except ConfigError as e:
                return 1, None, f"config: {e}"
        text = printed.getvalue()
        try:
            output: Any = json.loads(text) if text.strip() else None
        except ValueError:
            output = text
        error = said.getvalue().strip() or None
        return status, output, error


class Controller:
    """The control thread: requests and shadow syncs in order, answers handed back to
    the owner thread (take_answers), which sends them on the outbox's connection."""

    def __init__(
        self,
        config_path: str | None,
        cfg: Config,
        wake: threading.Event,
        ask_reload: Callable[[], None] | None = None,
    ) -> None:
        """`ask_reload` is the agent's reload request (None: no agent to reload). The
        thread runs from start(); without it the caller opens the controller and calls
        handle() and apply_desired() on its own thread (the tests do)."""
        self._config_path = config_path
        self.cfg = cfg  # replaced by the daemon at a reload
        self._wake = wake
        self._work: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._answers: queue.SimpleQueue[Answer] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._tokens = float(cfg.control.max_requests_per_minute)
        self._refill_at = time.monotonic()
        self.counts = {"done": 0, "refused": 0, "busy": 0, "shadow_syncs": 0, "shadow_errors": 0}
        self.shadow_error: str | None = None
        self._shadow: Any = None
        self._shadow_busy = False  # a get or update is in flight
        self._shadow_again = False  # a sync was asked for meanwhile
        self._ask_reload = ask_reload
        self._thread = threading.Thread(target=self._loop, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- the owner thread ------------------------------------------------------------

    def submit(self, request: Received) -> None:
        with self._lock:
            busy = self._pending >= MAX_PENDING
            if not busy:
                self._pending += 1
        if busy:
            self.counts["busy"] += 1
            topic, _ = response_topic(self.cfg.control_prefix, request.response_topic)
            doc = reply(None, 1, None, f"busy: {MAX_PENDING} requests are waiting; ask again")
            self._answers.put(Answer(topic, _encode(doc), request.correlation))
            return
        self._work.put(("request", request))

    def attach(self, mqtt_client: Any) -> None:
        """The outbox's client is new (started or restarted by a reload): follow the
        shadow on it."""
        self._work.put(("attach", mqtt_client))

    def resync(self) -> None:
        """Connected again: the desired state may have changed meanwhile."""
        self._work.put(("sync", None))

    def take_answers(self) -> list[Answer]:
        answers = []
        while True:
            try:
                answers.append(self._answers.get_nowait())
            except queue.Empty:
                return answers

    def status(self) -> ControlStatus:
        c = self.counts
        return {
            "done": c["done"],
            "refused": c["refused"],
            "busy": c["busy"],
            "pending": self._pending,
            "shadow_syncs": c["shadow_syncs"],
            "shadow_errors": c["shadow_errors"],
            "shadow_error": self.shadow_error,
        }

    def close(self) -> None:
        if self._thread.is_alive():
            self._work.put(("stop", None))
            self._thread.join(timeout=10)
        else:
            self._store.close()

    # -- the control thread ----------------------------------------------------------

    def open(self) -> None:
        """The journal and the verbs, on the thread that will use them."""
        self._store = ControlStore(control_path(self.cfg.state_dir))
        self._verbs = RemoteVerbs(lambda: self.cfg, self._ask_reload)

    def _loop(self) -> None:
        try:
            self.open()
        except (StoreError, OSError) as e:
            log.error(kv("control_unavailable", error=e))
            return
        next_poll = time.monotonic() + SHADOW_POLL_S
        while True:
            try:
                what, item = self._work.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                what, item = "sync", None
            if what == "sync":
                next_poll = time.monotonic() + SHADOW_POLL_S
            if what == "stop":
                self._store.close()
                return
            try:
                self._step(what, item)
            except Exception as e:  # the thread stays up for the next message
                log.exception(kv("control_failed", doing=what, error=e))

    def _step(self, what: str, item: Any) -> None:
        if what == "request":
            try:
                self._answer(item)
            finally:
                with self._lock:
                    self._pending -= 1
        elif what == "attach":
            self._follow_shadow(item)
        elif what == "sync" and self._shadow is not None:
            self._sync_shadow()
        elif what == "shadow_got":
            self._shadow_got(item)
        elif what == "shadow_reported":
            self._shadow_reported(item)
        self._store.prune(time.time() - self.cfg.control.journal_days * 86400)

    def handle(self, payload: bytes) -> dict[str, Any]:
        """Check one request, run it and journal it; the answer's document."""
        now = time.time()
        try:
            limit = self.cfg.control.max_request_bytes
            request = parse_request(payload, limit, self._verbs.options)
        except ControlError as e:
            self.counts["refused"] += 1
            self._store.journal(now, "request", None, None, None, 2, str(e))
            return reply(None, 2, None, str(e))
        if not self._take_token():
            self.counts["refused"] += 1
            refusal = f"rate: more than {self.cfg.control.max_requests_per_minute} a minute"
            self._store.journal(now, "request", request.verb, request.client_token,
                                request.input, 1, refusal)  # fmt: skip
            return reply(request, 1, None, refusal)
        status, output, error = self._verbs.run(to_argv(request, self._verbs.options[request.verb]))
        self.counts["done" if status == 0 else "refused"] += 1
        self._store.journal(
            now, "request", request.verb, request.client_token, request.input, status, error
        )
        log.info(kv("control_request", verb=request.verb, status=status, error=error))
        doc = reply(request, status, output, error)
        if len(_encode(doc)) > MAX_ANSWER_BYTES:
            doc = reply(request, status, None, f"the answer is over {MAX_ANSWER_BYTES} bytes;"
                        " ask for less (maxResults, a shorter time range)")  # fmt: skip
        return doc

    def _answer(self, request: Received) -> None:
        topic, misdirected = response_topic(self.cfg.control_prefix, request.response_topic)
        doc = self.handle(request.payload)
        if misdirected:
            doc["warning"] = misdirected
        self._answers.put(Answer(topic, _encode(doc), request.correlation))
        self._wake.set()

    def _take_token(self) -> bool:
        rate = self.cfg.control.max_requests_per_minute
        now = time.monotonic()
        self._tokens = min(float(rate), self._tokens + (now - self._refill_at) * rate / 60.0)
        self._refill_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    # -- the named shadow ------------------------------------------------------------

    def _follow_shadow(self, mqtt_client: Any) -> None:
        mode, endpoint = self.cfg.control.shadow, self.cfg.mqtt.endpoint or ""
        if mode == "off" or (mode == "auto" and not is_aws_endpoint(endpoint)):
            return
        from awscrt import mqtt_request_response
        from awsiot import ServiceStreamOptions, iotshadow

        self._shadow = iotshadow.IotShadowClientV2(
            mqtt_client,
            mqtt_request_response.ClientOptions(
                max_request_response_subscriptions=2,
                max_streaming_subscriptions=1,
                operation_timeout_in_seconds=SHADOW_TIMEOUT_S,
            ),
        )
        # update/documents, not update/delta: a delta lists only desired keys that differ
        # from reported, so a document removed from the desired state sends none.
        self._updates = self._shadow.create_named_shadow_updated_stream(
            iotshadow.NamedShadowUpdatedSubscriptionRequest(**self._shadow_names()),
            ServiceStreamOptions(incoming_event_listener=self._on_shadow_updated),
        )
        self._updates.open()
        self.resync()

    def _on_shadow_updated(self, event: Any) -> None:
        """awscrt's thread: an update of the shadow; a sync when its desired state changed
        (not for the agent's own reports)."""

        def desired(snapshot: Any) -> Any:
            state = getattr(snapshot, "state", None)
            return getattr(state, "desired", None)

        if desired(event.previous) != desired(event.current):
            self.resync()

    def _sync_shadow(self) -> None:
        """Ask for the shadow; its answer comes back as work ("shadow_got"), so requests
        never wait on the shadow service. One sync at a time: a sync asked for meanwhile
        runs after it."""
        from awsiot import iotshadow

        if self._shadow_busy:
            self._shadow_again = True
            return
        self._shadow_busy = True
        self.counts["shadow_syncs"] += 1
        request = iotshadow.GetNamedShadowRequest(**self._shadow_names())
        future = self._shadow.get_named_shadow(request)
        future.add_done_callback(lambda f: self._work.put(("shadow_got", f)))

    def _shadow_names(self) -> dict[str, str]:
        return {"thing_name": self.cfg.thing_name, "shadow_name": self.cfg.control.shadow_name}

    def _shadow_got(self, future: Future[Any]) -> None:
        """Apply the desired state, then report (its answer comes back as
        "shadow_reported")."""
        from awsiot import iotshadow

        try:
            got = future.result()
            desired = (got.state.desired if got.state else None) or {}
        except Exception as e:
            if _shadow_code(e) != 404:  # no shadow yet is an empty desired state
                self._shadow_done(f"get: {_shadow_error(e)}")
                return
            desired = {}
        state = self.apply_desired(desired)
        before = self._store.last_reported()
        if state == before:
            self._shadow_done(None)
            return
        patch = shadow_patch(before, state)
        size = len(json.dumps({"state": {"desired": desired, "reported": patch}}))
        if size > MAX_SHADOW_BYTES:
            state["errors"] = {"shadow": f"the shadow would hold {size} bytes; at most 8192"}
            patch = shadow_patch(before, state)
        request = iotshadow.UpdateNamedShadowRequest(
            **self._shadow_names(), state=iotshadow.ShadowState(reported=patch)
        )
        update = self._shadow.update_named_shadow(request)
        update.add_done_callback(lambda f: self._work.put(("shadow_reported", (f, state))))

    def _shadow_reported(self, item: tuple[Future[Any], dict[str, Any]]) -> None:
        future, state = item
        try:
            future.result()
        except Exception as e:
            self._shadow_done(f"update: {_shadow_error(e)}")
            return
        self._store.set_reported(state)
        self._shadow_done(None)

    def _shadow_done(self, error: str | None) -> None:
        self._shadow_busy = False
        self.shadow_error = error
        if error is not None:
            self.counts["shadow_errors"] += 1
            log.warning(kv("shadow_failed", error=error))
        if self._shadow_again:
            self._shadow_again = False
            self._sync_shadow()

    def apply_desired(self, desired: object) -> dict[str, Any]:
        """Bring the device to `desired` with the verbs (journaled, channel shadow) and
        return the reported state."""
        errors: dict[str, str] = {}
        applied = self._store.applied()
        try:
            changes = plan(desired, applied)
        except ControlError as e:
            errors["desired"] = str(e)
            changes = []
        for change in changes:
            error = self._apply(change)
            where = f"{change.kind}.{change.name}" if change.name else change.kind
            if error is None:
                self._store.set_applied(change.kind, change.name, change.digest)
            else:
                errors[where] = error
        applied = self._store.applied()
        versions = {}
        for name in applied.get("profiles", {}):
            status, output, _ = self._verbs.run(
                ["describe-security-profile", f"--security-profile-name={name}"]
            )
            if status == 0 and isinstance(output, dict):
                versions[name] = output.get("version", 1)
        return reported(applied, versions, self._settings(), errors, __version__)

    def _apply(self, change: Change) -> str | None:
        """Make one change; None when done, else why not (nothing changed then)."""
        now = time.time()
        if change.verb == "settings":
            error = self._apply_settings(change.input)
            status = 0 if error is None else 1
        else:
            # The same checks as a request's: the desired state is remote input too.
            payload = json.dumps({"verb": change.verb, "input": change.input}).encode()
            try:
                request = parse_request(payload, len(payload), self._verbs.options)
                options = self._verbs.options[change.verb]
                status, _, error = self._verbs.run(to_argv(request, options))
            except ControlError as e:
                status, error = 2, str(e)
            if status == 0:
                error = None
            elif error is None:
                error = f"{change.verb} failed (exit status {status})"
        self._store.journal(now, "shadow", change.verb, None, change.input, status, error)
        log.info(kv("shadow_change", verb=change.verb, name=change.name, error=error))
        return error

    def _settings(self) -> dict[str, Any]:
        path = self.cfg.remote_settings_path
        try:
            return dict(parse_json(path.read_bytes(), 65536, str(path)))
        except (OSError, ValueError):
            return {}

    def _apply_settings(self, settings: dict[str, Any]) -> str | None:
        """Check the settings against the config file, write them and have the agent
        reload; put the old ones back when it refuses."""
        try:
            with_settings(load_config(self._config_path), settings)
        except ConfigError as e:
            return f"settings: {e}"
        path = self.cfg.remote_settings_path
        before = path.read_bytes() if path.exists() else None
        manage.write_file(path, (json.dumps(settings, indent=2) + "\n").encode())
        try:
            if self._ask_reload is not None:
                reload(Path(self.cfg.state_dir), os.getpid(), manage.RELOAD_TIMEOUT_S,
                       self._ask_reload)  # fmt: skip
        except ReloadError as e:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                manage.write_file(path, before)
            return f"settings: the agent did not take them: {e}"
        return None


def _shadow_code(error: BaseException) -> int | None:
    """The shadow service's error code (404: no such shadow), when it gave one."""
    code = getattr(getattr(error, "modeled_error", None), "code", None)
    return code if isinstance(code, int) else None


def _shadow_error(error: BaseException) -> str:
    modeled = getattr(error, "modeled_error", None)
    if modeled is not None and getattr(modeled, "message", None):
        return f"{modeled.code}: {modeled.message}"
    return str(getattr(error, "message", None) or error) or type(error).__name__


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


# -- `edge-defender list-control-messages` (an extension: AWS has no such verb) -----------------

MAX_LISTED = 1000


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Print the journal, newest first. Exit status 1 when it cannot be read."""
    if not 1 <= args.max_results <= MAX_LISTED:
        print(f"edge-defender: {args.command}: --max-results: {args.max_results} is not"
              f" 1-{MAX_LISTED}", file=sys.stderr)  # fmt: skip
        return 2
    try:
        store = ControlStore(control_path(cfg.state_dir), create=False)
    except StoreError as e:
        print(f"edge-defender: {args.command}: {e}", file=sys.stderr)
        return 1
    try:
        entries = store.entries(args.max_results)
    finally:
        store.close()
    print(json.dumps({"controlMessages": entries}, indent=2, ensure_ascii=False))
    return 0


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_config_arg: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[argparse.Namespace], int],
) -> None:
    p = sub.add_parser(
        "list-control-messages",
        help="remote control's journal: every request and shadow change, newest first",
    )
    add_config_arg(p)
    p.add_argument("--max-results", type=int, default=100, metavar="N",
                   help=f"entries, 1-{MAX_LISTED} (default 100)")  # fmt: skip
    p.set_defaults(handler=handler)
