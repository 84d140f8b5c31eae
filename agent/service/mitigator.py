"""The daemon's mitigation, in a thread of its own (nft, hooks and the store must not
delay a sample): it runs the executions the mitigation verbs record (only the daemon
drives the firewall, with the config's allowlist; at its start it puts back the blocks
still due, which a reboot took out of the kernel), the automatic response of
[[mitigation.auto]] (actions on in-alarm; undone when the alarm ends with
undo_on_clear, else at their own timeout in the kernel), and hands the
messages of PUBLISH_TO_TOPIC executions to the daemon to publish."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.collect.firewall import Allowlist, Firewall
from agent.config import Config
from agent.core.mitigation_model import check_task_request
from agent.logs import kv
from agent.service.mitigation import (
    publications,
    published,
    reapply,
    record_task,
    run_pending,
    undo_task,
)
from agent.store.db import StoreError
from agent.store.mitigation import (
    MitigationStore,
    Publication,
    ResourceNotFound,
    open_mitigation,
)

log = logging.getLogger(__name__)

POLL_S = 1.0  # tasks recorded by the verbs are picked up this soon
BROKER_ADDRESSES_S = 300.0  # the broker's addresses (the allowlist) are looked up again
ENDED = ("alarm-cleared", "alarm-invalidated")


def auto_task_id(violation_id: str) -> str:
    """One automatic task per violation: a repeat of its in-alarm event (a restart)
    finds the same task and makes no second one."""
    return f"auto-{violation_id}"


class Mitigator:
    def __init__(self, config: Callable[[], Config], *, poll_s: float = POLL_S) -> None:
        self._config = config  # read each round: a reload takes effect at the next
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[Publication] = queue.SimpleQueue()
        self._sent: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._handed: set[int] = set()  # publications handed over, not yet marked
        self._auto_times: deque[float] = deque()  # automatic tasks of the last minute
        self.rate_limited = 0  # automatic responses not made: over the rate limit
        self._broker: tuple[float, list[str]] = (-BROKER_ADDRESSES_S, [])
        self._thread = threading.Thread(target=self._run, name="mitigation", daemon=True)
        self._thread.start()

    # --- the daemon's side -----------------------------------------------------------

    def respond(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Violation events just recorded: those of behaviors with an automatic response
        start or undo it (in the thread)."""
        rules = {(r.profile, r.behavior) for r in self._config().mitigation.auto}
        for event in events:
            if (event["securityProfileName"], event["behavior"]["name"]) in rules:
                self._events.put(dict(event))
                self._wake.set()

    def take_publications(self) -> list[Publication]:
        out = []
        while True:
            try:
                out.append(self._outbox.get_nowait())
            except queue.Empty:
                return out

    def mark_published(self, ids: Sequence[int]) -> None:
        for i in ids:
            self._sent.put(i)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=15.0)

    # --- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        store: MitigationStore | None = None
        while not self._stop.is_set():
            self._wake.wait(self._poll_s)
            self._wake.clear()
            cfg = self._config()
            if not cfg.mitigation.enabled:
                continue
            try:
                if store is None:
                    store = open_mitigation(cfg.state_dir)  # this thread's connection
                    for line in reapply(store, self._firewall(cfg)(False), time.time()):
                        log.info(kv("mitigation_reapplied", what=line))
                self._round(store, cfg)
            except StoreError as e:
                log.error(kv("mitigation_unavailable", error=e))
                if store is not None:
                    store.close()
                    store = None
                self._stop.wait(30.0)
            except Exception:  # a bug here must not end mitigation for good
                log.exception(kv("mitigation_failed"))
        if store is not None:
            store.close()

    def _round(self, store: MitigationStore, cfg: Config) -> None:
        sent = _drain(self._sent)
        if sent:
            published(store, sent)
            self._handed.difference_update(sent)
        for event in _drain(self._events):
            self._respond(store, cfg, event)
        run_pending(store, cfg, self._firewall(cfg), should_stop=self._stop.is_set)
        for p in publications(store):
            if p.id not in self._handed:
                self._handed.add(p.id)
                self._outbox.put(p)

    def _respond(self, store: MitigationStore, cfg: Config, event: Mapping[str, Any]) -> None:
        violation_id = event["violationId"]
        task_id = auto_task_id(violation_id)
        key = (event["securityProfileName"], event["behavior"]["name"])
        rule = next((r for r in cfg.mitigation.auto if (r.profile, r.behavior) == key), None)
        if rule is None:
            return  # a reload took the rule away meanwhile
        if event["violationEventType"] in ENDED:
            if not rule.undo_on_clear or store.task_for_token(task_id) is None:
                return  # kept until its timeout, or none was made (rate limit...)
            for line in undo_task(store, task_id, self._firewall(cfg)(False)):
                log.info(kv("mitigation_undone", task_id=task_id, what=line))
            return
        now = time.time()
        while self._auto_times and self._auto_times[0] < now - 60:
            self._auto_times.popleft()
        if len(self._auto_times) >= cfg.mitigation.max_auto_tasks_per_minute:
            self.rate_limited += 1
            log.warning(kv("mitigation_rate_limited", violation_id=violation_id))
            return
        request = check_task_request(  # cannot fail: the config checked the names
            task_id=task_id,
            target={"violationIds": [violation_id]},
            actions=list(rule.actions),
            client_request_token=task_id,
            dry_run=cfg.mitigation.dry_run,
        )
        try:
            if record_task(store, request, [event], now):
                self._auto_times.append(now)
        except ResourceNotFound as e:  # an action the rule names does not exist
            log.error(kv("mitigation_auto_refused", task_id=task_id, error=e))

    def _firewall(self, cfg: Config) -> Callable[[bool], Firewall]:
        allow = Allowlist(tuple(cfg.mitigation.allow_cidrs) + tuple(self._broker_addresses(cfg)))
        return lambda dry_run: Firewall(dry_run=dry_run, allow=allow)

    def _broker_addresses(self, cfg: Config) -> list[str]:
        """The broker's addresses, looked up every few minutes (AWS IoT endpoints move);
        the last ones known while the lookup fails."""
        at, addresses = self._broker
        if not cfg.mqtt.endpoint or time.monotonic() - at < BROKER_ADDRESSES_S:
            return addresses
        try:
            infos = socket.getaddrinfo(cfg.mqtt.endpoint, cfg.mqtt.port, type=socket.SOCK_STREAM)
            addresses = sorted({str(info[4][0]) for info in infos})
        except OSError as e:
            log.warning(kv("broker_unresolved", endpoint=cfg.mqtt.endpoint, error=e))
        self._broker = (time.monotonic(), addresses)
        return addresses


def _drain(q: queue.SimpleQueue[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out
