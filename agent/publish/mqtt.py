"""The MQTT 5 transport (awscrt): one client with mutual TLS, publishes and their
PUBACKs, the Device Defender reply topics. It decides nothing: what to send and when
to reconnect is agent.publish.delivery's, driven by agent.service.outbox.

awscrt directly rather than awsiotsdk's mqtt5_client_builder: the builder makes the
TLS options itself and gives no way to set their minimum version, and the agent
refuses anything older than TLS 1.2.

Threading: awscrt runs its callbacks on its own event-loop thread. They touch nothing
but a queue of news and a wake-up flag; the owner thread takes the news with `poll()`.
awscrt's own reconnecting is not used (its retries settled exactly `max` apart): on a
failure or a loss the owner stops the client and starts it again when
`delivery.Backoff` says.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from awscrt import io, mqtt5
from awscrt.exceptions import AwsCrtError

from agent.config import Config, ConfigError
from agent.logs import kv
from agent.publish.delivery import is_aws_endpoint

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0
# The client's own retries are far apart: the outbox restarts it before they matter.
_CLIENT_RECONNECT_MS = 3_600_000


def flow_control_for(endpoint: str) -> mqtt5.ExtendedValidationAndFlowControlOptions:
    """AWS IoT Core's limits (topic depth, 100 publishes/s, 512 KB/s) bind only there."""
    if is_aws_endpoint(endpoint):
        return mqtt5.ExtendedValidationAndFlowControlOptions.AWS_IOT_CORE_DEFAULTS
    return mqtt5.ExtendedValidationAndFlowControlOptions.NONE


# News handed from awscrt's thread to the owner thread.
@dataclass(frozen=True, slots=True)
class Connected:
    pass


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    error: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    error: str


@dataclass(frozen=True, slots=True)
class Stopped:
    pass


@dataclass(frozen=True, slots=True)
class PublishDone:
    item_id: int
    epoch: int  # connection the message was sent on
    puback: int | None  # reason code; None: no PUBACK, the client failed it
    error: str | None


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    response_topic: str | None = None  # MQTT 5 request/response
    correlation: bytes | None = None


News = Connected | ConnectFailed | Disconnected | Stopped | PublishDone | Received
USER_STOP = "AWS_ERROR_MQTT5_USER_REQUESTED_STOP"


def _error_name(error: BaseException | None) -> str:
    if isinstance(error, AwsCrtError):
        return error.name
    return repr(error)


class Transport:
    """One awscrt MQTT 5 client for `cfg.mqtt`; `subscriptions` are (re)subscribed on
    every connection, before anything is published on it."""

    def __init__(self, cfg: Config, subscriptions: list[str], wake: threading.Event) -> None:
        m = cfg.mqtt
        if not m.endpoint:
            raise ConfigError(f"{cfg.config_file}: mqtt.endpoint: required to publish")
        if m.tls and not (m.cert_file and m.key_file):
            raise ConfigError(
                f"{cfg.config_file}: mqtt.cert_file and mqtt.key_file: required when mqtt.tls"
                " is true (set tls = false only for a plain local broker)"
            )
        self._cfg = cfg
        self.endpoint: str = m.endpoint
        self.port = m.port
        self._subscriptions = subscriptions
        self._news: queue.SimpleQueue[News] = queue.SimpleQueue()
        self._wake = wake
        self._client = mqtt5.Client(self._client_options())
        self.running = False

    # -- owner thread ---------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self._client.start()

    def stop(self) -> None:
        """Disconnect; `Stopped` news follows."""
        self.running = False
        self._client.stop()

    def poll(self) -> list[News]:
        news = []
        while True:
            try:
                news.append(self._news.get_nowait())
            except queue.Empty:
                return news

    def subscribe(self) -> None:
        packet = mqtt5.SubscribePacket(
            subscriptions=[
                mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)
                for topic in self._subscriptions
            ]
        )
        self._client.subscribe(packet).add_done_callback(_on_suback)

    def publish(self, item_id: int, epoch: int, topic: str, payload: bytes) -> None:
        """Send with QoS 1; `PublishDone` news follows. Raises RuntimeError when the
        client refuses the packet outright (a bad topic, say)."""
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
        future = self._client.publish(packet)
        future.add_done_callback(lambda f: self._on_publish_done(item_id, epoch, f))

    def respond(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        """Send an answer to a request with QoS 1, its correlation data as the request's;
        not spooled: an answer is worth nothing to a requester that gave up. Raises
        RuntimeError when the client refuses the packet."""
        packet = mqtt5.PublishPacket(
            topic=topic,
            payload=payload,
            qos=mqtt5.QoS.AT_LEAST_ONCE,
            correlation_data_bytes=correlation,
            payload_format_indicator=mqtt5.PayloadFormatIndicator.AWS_MQTT5_PFI_UTF8,
            content_type="application/json",
        )
        self._client.publish(packet).add_done_callback(_on_answer_sent)

    @property
    def client(self) -> mqtt5.Client:
        """The awscrt client, for the shadow client that rides on this connection."""
        return self._client

    def _client_options(self) -> mqtt5.ClientOptions:
        m = self._cfg.mqtt
        return mqtt5.ClientOptions(
            host_name=self.endpoint,
            port=self.port,
            tls_ctx=self._tls_context() if m.tls else None,
            connect_options=mqtt5.ConnectPacket(
                client_id=m.client_id or self._cfg.thing_name,
                keep_alive_interval_sec=m.keep_alive_s,
            ),
            session_behavior=mqtt5.ClientSessionBehaviorType.CLEAN,
            extended_validation_and_flow_control_options=flow_control_for(self.endpoint),
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            min_reconnect_delay_ms=_CLIENT_RECONNECT_MS,
            max_reconnect_delay_ms=_CLIENT_RECONNECT_MS,
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
            options.min_tls_ver = io.TlsVersion.TLSv1_2
            if m.ca_file:
                options.override_default_trust_store_from_path(None, m.ca_file)
            if self.port == 443 and is_aws_endpoint(self.endpoint) and io.is_alpn_available():
                # AWS IoT Core serves MQTT on 443 only to clients that ask for it by ALPN.
                options.alpn_list = ["x-amzn-mqtt-ca"]
            return io.ClientTlsContext(options)
        # Unreadable files raise OSError; unusable PEM, RuntimeError from awscrt.
        except (OSError, RuntimeError, AwsCrtError) as e:
            raise ConfigError(
                f"{self._cfg.config_file}: mqtt.cert_file, mqtt.key_file, mqtt.ca_file:"
                f" cannot use them: {e}"
            ) from None

    # -- awscrt's thread: only the news queue and the wake-up flag --------------------

    def _post(self, news: News) -> None:
        self._news.put(news)
        self._wake.set()

    def _on_connection_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        self._post(Connected())

    def _on_connection_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        error = _error_name(data.exception)
        if data.connack_packet is not None and data.connack_packet.reason_code is not None:
            error += f"/{data.connack_packet.reason_code.name}"
        self._post(ConnectFailed(error))

    def _on_disconnection(self, data: mqtt5.LifecycleDisconnectData) -> None:
        self._post(Disconnected(_error_name(data.exception)))

    def _on_stopped(self, data: mqtt5.LifecycleStoppedData) -> None:
        self._post(Stopped())

    def _on_publish_received(self, data: mqtt5.PublishReceivedData) -> None:
        packet = data.publish_packet
        correlation = packet.correlation_data_bytes
        self._post(
            Received(
                packet.topic,
                bytes(packet.payload),
                packet.response_topic,
                None if correlation is None else bytes(correlation),
            )
        )

    def _on_publish_done(self, item_id: int, epoch: int, future: Future[Any]) -> None:
        error = future.exception()
        if error is not None:
            self._post(PublishDone(item_id, epoch, None, _error_name(error)))
            return
        # awscrt gives None for a code it does not know: not a success either.
        code = future.result().puback.reason_code
        puback = mqtt5.PubackReasonCode.UNSPECIFIED_ERROR if code is None else code
        self._post(PublishDone(item_id, epoch, int(puback), None))


def _on_answer_sent(future: Future[Any]) -> None:
    error = future.exception()
    if error is not None:
        log.warning(kv("control_answer_not_sent", error=_error_name(error)))


def _on_suback(future: Future[Any]) -> None:
    error = future.exception()
    if error is not None:
        log.warning(kv("mqtt_subscribe_failed", error=_error_name(error)))
        return
    refused = [code.name for code in future.result().reason_codes if code >= 0x80]
    if refused:
        log.warning(kv("mqtt_subscribe_refused", reasons=",".join(refused)))
