"""The outbox: the spool drained to the broker. A thin loop on the owner thread that
carries out what agent.publish.delivery decides; the spool's SQLite connection stays
on the thread that opened it. Loaded only when a broker is configured (awscrt costs
~6 MiB and ~60 ms to import)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.config import Config
from agent.logs import kv
from agent.publish.codec import (
    CodecError,
    decode,
    encode,
    metrics_accepted_topic,
    metrics_rejected_topic,
    metrics_topic,
    violations_topic,
)
from agent.publish.delivery import Backoff, Delivery, Outcome, Verdict
from agent.publish.mqtt import (
    USER_STOP,
    Connected,
    ConnectFailed,
    Disconnected,
    PublishDone,
    Received,
    Stopped,
    Transport,
)
from agent.store.spool import Kind, Spool

log = logging.getLogger(__name__)

# A metrics report sent while connected is held in memory (see Spool.put) and written
# only if its PUBACK has not come this long after.
HOLD_MAX_S = 60.0


class Outbox:
    """Spools what the daemon submits and sends it; see agent.publish.delivery for the
    rules. `clock` is monotonic seconds, `rand` uniform in [0, 1) for the backoff."""

    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        wake: threading.Event,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        fmt = cfg.mqtt.format
        self._format = fmt
        self._metrics_topic = metrics_topic(cfg.thing_name, fmt)
        self._accepted_topic = metrics_accepted_topic(cfg.thing_name, fmt)
        self._rejected_topic = metrics_rejected_topic(cfg.thing_name, fmt)
        self._violations_topic = violations_topic(cfg.detect.violations_topic, cfg.thing_name)
        self._findings_topic = violations_topic(cfg.audit.findings_topic, cfg.thing_name)
        # Remote control's requests, taken by the daemon (take_requests).
        self._request_topic = cfg.control_prefix + "/request" if cfg.control.enabled else None
        self._requests: list[Received] = []
        self._spool = spool
        self._clock = clock
        self._delivery = Delivery()
        self._backoff = Backoff(rand)
        self._restart_at: float | None = None
        self._stopped = threading.Event()
        topics = [self._accepted_topic, self._rejected_topic]
        if self._request_topic:
            topics.append(self._request_topic)
        self._transport = Transport(cfg, topics, wake)
        self.accepted = 0
        self.rejected = 0

    @property
    def connected(self) -> bool:
        return self._delivery.connected

    def start(self) -> None:
        self._transport.start()

    def stop(self, flush_timeout_s: float) -> None:
        """Send what is spooled for up to `flush_timeout_s` while connected, then
        disconnect. What is left stays in the spool for the next run."""
        self.flush(flush_timeout_s)
        self._spool.persist_held()  # what the broker did not take goes to the next run
        self._restart_at = None
        if self._transport.running:
            self._stopped.clear()
            self._transport.stop()
            deadline = self._clock() + 5.0
            while not self._stopped.is_set() and self._clock() < deadline:
                self.pump()
                time.sleep(0.01)
        self.pump()  # PUBACKs that came in while stopping

    def close(self) -> None:
        self._spool.close()

    def submit_report(self, report: Mapping[str, Any], now: float) -> bool:
        """Spool a metrics report (built, in the configured key names) and send it when
        possible. False when it cannot be encoded (it is logged and counted). While
        connected it is only held in memory: a report is expendable, an SD card is not."""
        self._spool.persist_held(older_than=now - HOLD_MAX_S)
        return self._submit("metrics", self._metrics_topic, report, now, durable=not self.connected)

    def submit_event(self, event: Mapping[str, Any], now: float) -> bool:
        """Spool a ViolationEvent document for `detect.violations_topic`, durably."""
        return self._submit("violation", self._violations_topic, event, now, durable=True)

    def submit_finding(self, finding: Mapping[str, Any], now: float) -> bool:
        """Spool an AuditFinding document for `audit.findings_topic`, durably and kept as
        a violation is when the spool is full."""
        return self._submit("violation", self._findings_topic, finding, now, durable=True)

    def submit_message(self, topic: str, doc: Mapping[str, Any], now: float) -> bool:
        """Spool a mitigation action's message (PUBLISH_TO_TOPIC) for its own topic,
        durably and kept as a violation is."""
        return self._submit("violation", topic, doc, now, durable=True)

    def _submit(
        self, kind: Kind, topic: str, doc: Mapping[str, Any], now: float, *, durable: bool
    ) -> bool:
        try:
            payload = encode(doc, self._format)
        except CodecError as e:
            log.error(kv("unencodable", kind=kind, error=e))
            return False
        self._spool.put(kind, topic, payload, now, durable=durable)
        self.pump()
        return True

    def take_requests(self) -> list[Received]:
        """The control requests received since the last call."""
        taken, self._requests = self._requests, []
        return taken

    def respond(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        """Answer a control request now; while disconnected the answer is dropped (the
        requester asks again)."""
        if not self.connected:
            log.info(kv("control_answer_dropped", topic=topic, reason="not connected"))
            return
        try:
            self._transport.respond(topic, payload, correlation)
        except RuntimeError as e:
            log.warning(kv("control_answer_not_sent", topic=topic, error=e))

    @property
    def mqtt_client(self) -> Any:
        """The connection's awscrt client (the shadow client rides on it)."""
        return self._transport.client

    def next_wake(self) -> float | None:
        """Monotonic time the outbox needs `pump` next without news (a reconnect)."""
        return self._restart_at

    def pump(self) -> None:
        """Apply the transport's news, reconnect when due, send while there is room."""
        for news in self._transport.poll():
            self._apply(news)
        due = self._restart_at is not None and self._clock() >= self._restart_at
        if due and not self._transport.running and self._stopped.is_set():
            self._restart_at = None
            self._transport.start()
        self._send()

    def flush(self, timeout_s: float) -> bool:
        """Pump until the spool is empty (True), the connection is gone or time is up."""
        deadline = self._clock() + timeout_s
        while True:
            self.pump()
            if self._spool.depth()[0] == 0:
                return True
            if self._clock() >= deadline or not self.connected:
                return False
            time.sleep(0.01)

    def status(self) -> dict[str, Any]:
        messages, size = self._spool.depth()
        return {
            "connected": self.connected,
            "sent": self._delivery.delivered,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "spool_messages": messages,
            "spool_bytes": size,
            "drops": self._spool.drops(),
            "quarantined": self._spool.quarantined(),
        }

    def _apply(self, news: object) -> None:
        t = self._transport
        match news:
            case Connected():
                self._delivery.on_connected()
                self._backoff.connected(self._clock())
                log.info(kv("mqtt_connected", endpoint=t.endpoint, port=t.port))
                t.subscribe()  # before any publish on this connection: no reply missed
            case ConnectFailed(error):
                log.warning(
                    kv("mqtt_connect_failed", endpoint=t.endpoint, port=t.port, error=error)
                )
                self._lost()
            case Disconnected(error):
                self._delivery.on_disconnected()
                stopping = error == USER_STOP
                log.log(
                    logging.INFO if stopping else logging.WARNING,
                    kv("mqtt_disconnected", error=error),
                )
                if not stopping:
                    self._lost()
            case Stopped():
                self._stopped.set()
            case PublishDone(item_id, epoch, puback, error):
                self._settle(item_id, self._delivery.on_done(item_id, epoch, puback, error))
            case Received(topic, payload) if topic == self._request_topic:
                self._requests.append(news)
            case Received(topic, payload):
                self._reply(topic, payload)

    def _lost(self) -> None:
        """The connection failed or dropped: write what was held, stop the client,
        restart it at the backoff's time."""
        self._spool.persist_held()
        if self._restart_at is None:
            self._restart_at = self._backoff.next_attempt(self._clock())
            log.info(kv("mqtt_reconnect", in_s=round(self._restart_at - self._clock(), 2)))
        if self._transport.running:
            self._stopped.clear()
            self._transport.stop()

    def _settle(self, item_id: int, outcome: Outcome) -> None:
        match outcome.verdict:
            case Verdict.ACK:
                self._spool.ack(item_id)
            case Verdict.QUARANTINE:
                self._spool.quarantine(item_id, outcome.reason)
            case Verdict.RETRY:
                log.info(kv("mqtt_publish_retry", id=item_id, error=outcome.reason))

    def _send(self) -> None:
        if not self._delivery.connected:
            return
        pending = {item.id: item for item in self._spool.pending(self._delivery.wanted())}
        for item_id in self._delivery.choose(list(pending)):
            item = pending[item_id]
            try:
                self._transport.publish(item_id, self._delivery.epoch, item.topic, item.payload)
            except RuntimeError as e:  # awscrt validates the packet here: bad topic, say
                self._settle(item_id, self._delivery.refused(item_id, str(e)))

    def _reply(self, topic: str, payload: bytes) -> None:
        if topic == self._accepted_topic:
            self.accepted += 1
        elif topic == self._rejected_topic:
            self.rejected += 1
            try:
                doc = decode(payload, self._format)
            except CodecError as e:
                log.warning(kv("report_rejected", error_code="unreadable", error_message=e))
                return
            details = doc.get("statusDetails") if isinstance(doc, dict) else None
            if not isinstance(details, dict):
                details = {}
            log.warning(
                kv(
                    "report_rejected",
                    error_code=details.get("ErrorCode", "none"),
                    error_message=details.get("ErrorMessage", ""),
                )
            )
