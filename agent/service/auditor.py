"""The daemon's scheduled audits: a thread of their own, since a full audit costs about
half a second of CPU and must never delay a sample. It runs what
create-scheduled-audit set up when it falls due and hands each finished task's
findings to the daemon, which publishes them."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.config import Config
from agent.logs import kv
from agent.store.db import StoreError
from agent.store.paths import audit_path

log = logging.getLogger(__name__)

FIRST_CHECK_S = 30.0  # at most, after the start: a restart's first samples come first
CHECK_EVERY_S = 60.0  # scheduled audits are daily at the finest; a minute is on time
Finished = tuple[str, list[dict[str, Any]]]  # (task id, its findings as AWS JSON)


class Auditor:
    def __init__(
        self,
        config: Callable[[], Config],
        *,
        first_check_s: float = FIRST_CHECK_S,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        self._config = config  # read at each run: a reload takes effect at the next
        self._first_check_s, self._check_every_s = first_check_s, check_every_s
        self._stop = threading.Event()
        self._finished: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit", daemon=True)
        self._thread.start()

    def take(self) -> list[Finished]:
        """The tasks finished since the last call."""
        out = []
        while True:
            try:
                out.append(self._finished.get_nowait())
            except queue.Empty:
                return out

    def _run(self) -> None:
        wait = self._first_check_s
        while not self._stop.wait(wait):
            wait = self._check_every_s
            cfg = self._config()
            # No audit store: nothing was ever scheduled, and the audit code stays out
            # of the daemon's memory.
            if not cfg.audit.scheduled or not audit_path(cfg.state_dir).exists():
                continue
            try:
                self._run_due(cfg)
            except StoreError as e:
                log.error(kv("audit_unavailable", error=e))
            except Exception:  # a bug here must not end scheduled audits for good
                log.exception(kv("audit_failed"))

    def _run_due(self, cfg: Config) -> None:
        from agent.service.audit import due_scheduled_audits, run_audit_task, task_findings
        from agent.store.audit import open_audit

        # A store stays on the thread that opened it: one per round, closed after.
        store = open_audit(cfg.state_dir)
        try:
            for due in due_scheduled_audits(store, time.time()):
                if self._stop.is_set():
                    return
                task_id = run_audit_task(
                    store,
                    cfg,
                    due.target_check_names,
                    "SCHEDULED_AUDIT_TASK",
                    due.name,
                    time.time(),
                )
                self._finished.put((task_id, task_findings(store, task_id)))
        finally:
            store.close()

    def close(self) -> None:
        """Stop after the check running now (an audit task between checks stops too:
        the task ends as it is, its findings kept)."""
        self._stop.set()
        self._thread.join(timeout=10.0)
