"""The MQTT 5 publisher (awscrt): drains the outbound spool to the broker and counts
the Device Defender replies on the metrics topic's /accepted and /rejected.

Threading: awscrt runs its callbacks on its own event-loop thread. They touch nothing
but a queue of events and a wake-up flag. The owner thread (the daemon's main loop)
applies those events and uses the spool in `pump()`, so the spool's SQLite connection
stays on the thread that opened it. The owner calls `pump()` whenever `wait()`
returns, and after spooling something (`submit_*` do that themselves).

Delivery is at least once. A message is spooled before it is sent and deleted when
its PUBACK arrives; at most MAX_IN_FLIGHT are unacknowledged at a time, sent in id
order. The session starts clean and the client's own offline queue is off
(FAIL_ALL_ON_DISCONNECT): on a disconnect everything in flight is forgotten and sent
again from the spool, in id order, after the reconnect. A message whose PUBACK was
lost in the outage thus arrives twice, which QoS 1 allows; the report id tells a
consumer. A rejected report was PUBACKed and deleted before the rejection came: it
is counted and logged, never sent again.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from awscrt import io, mqtt5
from awscrt.exceptions import AwsCrtError

from agent.config import Config, ConfigError
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
from agent.store.spool import Kind, Spool

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 10
MIN_RECONNECT_DELAY_MS = 1_000
MAX_RECONNECT_DELAY_MS = 60_000
STOP_TIMEOUT_S = 5.0
AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn")
# The client refused the packet once connected (larger than the broker allows, say):
# sending it again can never work.
_UNSENDABLE = frozenset(
    {
        "AWS_ERROR_MQTT5_PUBLISH_OPTIONS_VALIDATION",
        "AWS_ERROR_MQTT5_PACKET_VALIDATION",
        "AWS_ERROR_MQTT5_INVALID_UTF8_STRING",
    }
)


def is_aws_endpoint(endpoint: str) -> bool:
    return endpoint.lower().rstrip(".").endswith(AWS_DOMAINS)


def flow_control_for(endpoint: str) -> mqtt5.ExtendedValidationAndFlowControlOptions:
    """AWS IoT Core's limits (topic depth, 100 publishes/s, 512 KB/s) bind only there."""
    if is_aws_endpoint(endpoint):
        return mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS
    return mqtt5.ExtendedValidationAndFlowControlOptions.NONE


# Events handed from awscrt's thread to the owner thread.
@dataclass(frozen=True, slots=True)
class _Connected:
    pass


@dataclass(frozen=True, slots=True)
class _ConnectFailed:
    error: str


@dataclass(frozen=True, slots=True)
class _Disconnected:
    error: str


@dataclass(frozen=True, slots=True)
class _PublishDone:
    item_id: int
    epoch: int  # connection the message was sent on
    puback: mqtt5.PubackReasonCode | None  # None: no PUBACK, the client failed it
    error: str | None


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes


_Event = _Connected | _ConnectFailed | _Disconnected | _PublishDone | _Received


def _error_name(error: BaseException | None) -> str:
    if isinstance(error, AwsCrtError):
        return error.name
    return repr(error)


class Publisher:
    """Sends what the spool holds to `cfg.mqtt`; see the module docstring for threads."""

    def __init__(self, cfg: Config, spool: Spool, wake: threading.Event | None = None) -> None:
        """`wake` is set whenever awscrt has news; a caller that waits on more than the
        publisher (signals, timers) passes its own event."""
        m = cfg.mqtt
        if not m.endpoint:
            raise ConfigError(f"{cfg.config_file}: mqtt.endpoint: required to publish")
        if m.tls and not (m.cert_file and m.key_file):
            raise ConfigError(
                f"{cfg.config_file}: mqtt.cert_file and mqtt.key_file: required when mqtt.tls"
                " is true (set tls = false only for a plain local broker)"
            )
        self._cfg = cfg
        self._endpoint: str = m.endpoint
        self._port = m.port
        self._spool = spool
        self._format = m.format
        self._metrics_topic = metrics_topic(cfg.thing_name, m.format)
        self._accepted_topic = metrics_accepted_topic(cfg.thing_name, m.format)
        self._rejected_topic = metrics_rejected_topic(cfg.thing_name, m.format)
        self._violations_topic = violations_topic(cfg.detect.violations_topic, cfg.thing_name)
        self._client: mqtt5.Client | None = None
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._wake = wake or threading.Event()
        self._stopped = threading.Event()
        # Bumped on every disconnect: a failure from an older connection is stale.
        self._epoch = 0
        self._in_flight: set[int] = set()
        self.connected = False
        self.sent = 0  # PUBACKed
        self.accepted = 0
        self.rejected = 0

    # -- owner thread ---------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; awscrt reconnects with backoff until `stop`."""
        self._stopped.clear()
        self._client = mqtt5.Client(self._client_options())
        self._client.start()

    def stop(self, flush_timeout_s: float) -> None:
        """Send what is spooled for up to `flush_timeout_s` while connected, then
        disconnect. What is left stays in the spool for the next run."""
        if self._client is None:
            return
        self.flush(flush_timeout_s)
        self._client.stop()
        if not self._stopped.wait(STOP_TIMEOUT_S):
            log.warning(kv("mqtt_stop_timeout", timeout_s=STOP_TIMEOUT_S))
        self._client = None
        self._apply_events()  # PUBACKs that came in while stopping
        self.connected = False

    def submit_report(self, report: Mapping[str, Any], now: float) -> int | None:
        """Spool a metrics report (already built, in the configured key names) and send it
        when possible. Returns its spool id, or None when the spool dropped it. Raises
        CodecError for what cannot be encoded (NaN)."""
        return self._submit("metrics", self._metrics_topic, encode(report, self._format), now)

    def submit_event(self, event: Mapping[str, Any], now: float) -> int | None:
        """Spool a ViolationEvent document for `detect.violations_topic`."""
        return self._submit("violation", self._violations_topic, encode(event, self._format), now)

    def _submit(self, kind: Kind, topic: str, payload: bytes, now: float) -> int | None:
        item_id = self._spool.put(kind, topic, payload, now)
        self.pump()
        return item_id

    def wait(self, timeout_s: float) -> bool:
        """Block until awscrt has news for `pump` (True) or `timeout_s` passes (False)."""
        woken = self._wake.wait(timeout_s)
        self._wake.clear()
        return woken

    def pump(self) -> None:
        """Apply what awscrt reported, then send spooled messages while there is room."""
        self._apply_events()
        self._send()

    def flush(self, timeout_s: float) -> bool:
        """Pump until the spool is empty (True), the connection is gone or time is up."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.pump()
            if self._spool.depth()[0] == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.connected:
                return False
            self.wait(remaining)

    def status(self) -> dict[str, object]:
        """Counters for the daemon's status file."""
        messages, size = self._spool.depth()
        return {
            "connected": self.connected,
            "sent": self.sent,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "spool_messages": messages,
            "spool_bytes": size,
            "drops": self._spool.drops(),
        }

    def _apply_events(self) -> None:
        acked: list[int] = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            match event:
                case _Connected():
                    self.connected = True
                    log.info(kv("mqtt_connected", endpoint=self._endpoint, port=self._port))
                    self._subscribe()
                case _ConnectFailed(error):
                    log.warning(
                        kv(
                            "mqtt_connect_failed",
                            endpoint=self._endpoint,
                            port=self._port,
                            error=error,
                        )
                    )
                case _Disconnected(error):
                    self.connected = False
                    self._epoch += 1
                    self._in_flight.clear()
                    stopping = error == "AWS_ERROR_MQTT5_USER_REQUESTED_STOP"
                    level = logging.INFO if stopping else logging.WARNING
                    log.log(level, kv("mqtt_disconnected", error=error))
                case _PublishDone():
                    self._publish_done(event, acked)
                case _Received(topic, payload):
                    self._reply(topic, payload)
        if acked:
            self._spool.ack(*acked)

    def _publish_done(self, done: _PublishDone, acked: list[int]) -> None:
        if done.puback is not None:
            if done.epoch == self._epoch:
                self._in_flight.discard(done.item_id)
            if done.puback < 0x80:  # MQTT 5 success codes, "no matching subscribers" too
                acked.append(done.item_id)
                self.sent += 1
            else:
                self._spool.discard(done.item_id, f"broker refused it: {done.puback.name}")
            return
        if done.epoch != self._epoch:
            return  # failed by the disconnect; already due to be sent again
        self._in_flight.discard(done.item_id)
        if done.error in _UNSENDABLE:
            self._spool.discard(done.item_id, f"client refused it: {done.error}")
        else:
            log.info(kv("mqtt_publish_retry", id=done.item_id, error=done.error))

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

    def _subscribe(self) -> None:
        if self._client is None:
            return  # connected just as `stop` ran
        # Sent before any publish on this connection, so no reply is missed.
        packet = mqtt5.SubscribePacket(
            subscriptions=[
                mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)
                for topic in (self._accepted_topic, self._rejected_topic)
            ]
        )
        self._client.subscribe(packet).add_done_callback(_on_suback)

    def _send(self) -> None:
        if not self.connected or self._client is None:
            return
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return
        candidates = self._spool.pending(MAX_IN_FLIGHT + len(self._in_flight))
        for item in [c for c in candidates if c.id not in self._in_flight][:room]:
            packet = mqtt5.PublishPacket(
                topic=item.topic, payload=item.payload, qos=mqtt5.QoS.AT_LEAST_ONCE
            )
            try:
                future = self._client.publish(packet)
            except RuntimeError as e:  # awscrt validates the packet here: bad topic, say
                self._spool.discard(item.id, f"client refused it: {e}")
                continue
            self._in_flight.add(item.id)
            future.add_done_callback(functools.partial(self._on_publish_done, item.id, self._epoch))

    def _client_options(self) -> mqtt5.ClientOptions:
        m = self._cfg.mqtt
        return mqtt5.ClientOptions(
            host_name=self._endpoint,
            port=self._port,
            tls_ctx=self._tls_context() if m.tls else None,
            connect_options=mqtt5.ConnectPacket(
                client_id=m.client_id or self._cfg.thing_name,
                keep_alive_interval_sec=m.keep_alive_s,
            ),
            session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
            extended_validation_and_flow_control_options=flow_control_for(self._endpoint),
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.FULL,
            min_reconnect_delay_ms=MIN_RECONNECT_DELAY_MS,
            max_reconnect_delay_ms=MAX_RECONNECT_DELAY_MS,
            on_publish_callback_fn=self._on_publish_received,
            on_lifecycle_event_stopped_fn=self._on_stopped,
            on_lifecycle_event_connection_success_fn=self._on_connection_success,
            on_lifecycle_event_connection_failure_fn=self._on_connection_failure,
            on_lifecycle_event_disconnection_fn=self._on_disconnection,
            # No "?SDK=...&Version=..." tag in the CONNECT username.
            disable_metrics=True,
        )

    def _tls_context(self) -> io.ClientTlsContext:
        m = self._cfg.mqtt
        try:
            options = io.TlsContextOptions.create_client_with_mtls_from_path(
                str(m.cert_file), str(m.key_file)
            )
            if m.ca_file:
                options.override_default_trust_store_from_path(None, m.ca_file)
            if self._port == 443 and is_aws_endpoint(self._endpoint) and io.is_alpn_available():
                # AWS IoT Core serves MQTT on 443 only to clients that ask for it by ALPN.
                options.alpn_list = ["x-amzn-mqtt-ca"]
            return io.ClientTlsContext(options)
        # Unreadable files raise OSError; unusable PEM, RuntimeError from awscrt.
        except (OSError, RuntimeError, AwsCrtError) as e:
            raise ConfigError(
                f"{self._cfg.config_file}: mqtt.cert_file, mqtt.key_file, mqtt.ca_file:"
                f" cannot use them: {e}"
            ) from None

    # -- awscrt's thread: only the event queue and the wake-up flag -------------------

    def _post(self, event: _Event) -> None:
        self._events.put(event)
        self._wake.set()

    def _on_connection_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        self._post(_Connected())

    def _on_connection_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        error = _error_name(data.exception)
        if data.connack_packet is not None and data.connack_packet.reason_code is not None:
            error += f"/{data.connack_packet.reason_code.name}"
        self._post(_ConnectFailed(error))

    def _on_disconnection(self, data: mqtt5.LifecycleDisconnectData) -> None:
        self._post(_Disconnected(_error_name(data.exception)))

    def _on_stopped(self, data: mqtt5.LifecycleStoppedData) -> None:
        self._stopped.set()

    def _on_publish_received(self, data: mqtt5.PublishReceivedData) -> None:
        packet = data.publish_packet
        self._post(_Received(packet.topic, bytes(packet.payload)))

    def _on_publish_done(self, item_id: int, epoch: int, future: Future[Any]) -> None:
        error = future.exception()
        if error is not None:
            self._post(_PublishDone(item_id, epoch, None, _error_name(error)))
            return
        # awscrt gives None for a code it does not know: not a success either.
        code = future.result().puback.reason_code
        puback = mqtt5.PubackReasonCode.UNSPECIFIED_ERROR if code is None else code
        self._post(_PublishDone(item_id, epoch, puback, None))


def _on_suback(future: Future[Any]) -> None:
    error = future.exception()
    if error is not None:
        log.warning(kv("mqtt_subscribe_failed", error=_error_name(error)))
        return
    refused = [code.name for code in future.result().reason_codes if code >= 0x80]
    if refused:
        log.warning(kv("mqtt_subscribe_refused", reasons=",".join(refused)))
