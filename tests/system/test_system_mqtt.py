"""The outbox and its transport against a real mosquitto with mutual TLS (see
conftest.py), and the transport against a TLS 1.1-only server."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from agent.config import Config, DetectConfig, MqttConfig
from agent.publish.codec import Format, decode, encode, metrics_topic
from agent.publish.delivery import MAX_IN_FLIGHT
from agent.publish.mqtt import Transport
from agent.service.outbox import Outbox
from agent.store.spool import Spool

if TYPE_CHECKING:
    from tests.system.conftest import Broker, MqttTestClient

pytestmark = pytest.mark.system

THING = "edge-test-thing"
VIOLATIONS = f"things/{THING}/defender/violations"
TIMEOUT_S = 10.0
# Long enough for a few reconnect attempts (1 s, 2 s, 4 s backoff, full jitter).
RECONNECT_TIMEOUT_S = 30.0

MakeClient = Callable[..., "MqttTestClient"]
MakePublisher = Callable[..., Outbox]


def report(report_id: int) -> dict[str, Any]:
    return {"hed": {"rid": report_id, "v": "1.0"}, "met": {"tp": {"pts": [{"pt": 22}], "t": 1}}}


def event(violation_id: str) -> dict[str, Any]:
    return {
        "violationId": violation_id,
        "thingName": THING,
        "securityProfileName": "baseline",
        "behavior": {"name": "ports", "metric": "aws:num-listening-tcp-ports"},
        "metricValue": {"count": 9},
        "violationEventType": "in-alarm",
        "verificationState": "UNKNOWN",
        "violationEventTime": 1730000000.5,
    }


def pump_until(publisher: Outbox, done: Callable[[], bool], timeout_s: float) -> bool:
    """Drive the outbox as the daemon's loop does, until `done()` or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        publisher.pump()
        if done():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(remaining, 0.05))


@pytest.fixture
def make_publisher(broker: Broker, tmp_path: Path) -> Iterator[MakePublisher]:
    """make(format="json", tls=True, ...) -> a started Outbox with its own spool."""
    made: list[Outbox] = []

    def make(
        fmt: Format = "json",
        *,
        tls: bool = True,
        cert: Path | None = None,
        key: Path | None = None,
        client_id: str = "edge-agent",
        violations_template: str = "things/{thing_name}/defender/violations",
    ) -> Outbox:
        pki = broker.pki
        cfg = Config(
            thing_name=THING,
            state_dir=str(tmp_path / "state"),
            mqtt=MqttConfig(
                endpoint=broker.host,
                port=broker.port if tls else broker.plain_port,
                client_id=client_id,
                tls=tls,
                ca_file=str(pki.ca_cert) if tls else None,
                cert_file=str(cert or pki.client_cert) if tls else None,
                key_file=str(key or pki.client_key) if tls else None,
                format=fmt,
            ),
            detect=DetectConfig(violations_topic=violations_template),
        )
        spool = Spool(tmp_path / "state" / f"spool-{len(made)}.db", 1 << 20)
        publisher = Outbox(cfg, spool, threading.Event())
        publisher.start()
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.stop(flush_timeout_s=0)
        publisher.close()


def connected(publisher: Outbox) -> Outbox:
    assert pump_until(publisher, lambda: publisher.connected, TIMEOUT_S), "never connected"
    return publisher


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_reports_and_violations_arrive_on_their_topics(
    fmt: Format, make_publisher: MakePublisher, mqtt_client: MakeClient
) -> None:
    watcher = mqtt_client("watcher")
    watcher.subscribe(metrics_topic(THING, fmt), VIOLATIONS)
    publisher = connected(make_publisher(fmt))

    assert publisher.submit_report(report(1001), now=1.0)
    assert publisher.submit_event(event("v-1"), now=2.0)
    publisher.stop(flush_timeout_s=TIMEOUT_S)  # sends what is spooled before it stops

    got = watcher.wait_for(2)
    assert [(topic, decode(payload, fmt)) for topic, payload in got] == [
        (f"$aws/things/{THING}/defender/metrics/{fmt}", report(1001)),
        (VIOLATIONS, event("v-1")),
    ]
    assert got[0][1] == encode(report(1001), fmt)
    status = publisher.status()
    assert status["sent"] == 2
    assert (status["spool_messages"], status["spool_bytes"]) == (0, 0)
    assert status["connected"] is False


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_replies_are_counted_and_a_rejected_report_is_not_resent(
    fmt: Format,
    make_publisher: MakePublisher,
    mqtt_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = metrics_topic(THING, fmt)
    responder = mqtt_client("responder")
    responder.subscribe(topic)
    publisher = connected(make_publisher(fmt))
    publisher.submit_report(report(1), now=1.0)
    publisher.submit_report(report(2), now=2.0)
    # The publisher subscribes to the replies before it publishes on a connection, so
    # once the reports are here its subscriptions are in place.
    assert len(responder.wait_for(2)) == 2

    responder.publish(
        topic + "/accepted",
        encode({"thingName": THING, "status": "ACCEPTED", "timestamp": 1}, fmt),
    )
    rejection = {
        "thingName": THING,
        "status": "REJECTED",
        "statusDetails": {"ErrorCode": "InvalidPayload", "ErrorMessage": "Malformed report"},
        "timestamp": 2,
    }
    with caplog.at_level(logging.WARNING, logger="agent.service.outbox"):
        responder.publish(topic + "/rejected", encode(rejection, fmt))
        assert pump_until(
            publisher, lambda: (publisher.accepted, publisher.rejected) == (1, 1), TIMEOUT_S
        )
        # Nothing comes again, however long the publisher runs.
        pump_until(publisher, lambda: False, 1.5)

    assert 'report_rejected error_code=InvalidPayload error_message="Malformed report"' in (
        caplog.text
    )
    assert [decode(p, fmt) for _, p in responder.messages] == [report(1), report(2)]
    assert publisher.status()["spool_messages"] == 0
    assert publisher.status()["sent"] == 2


def test_broker_outage_loses_nothing_and_drains_in_order(
    broker: Broker, make_publisher: MakePublisher, mqtt_client: MakeClient
) -> None:
    topic = metrics_topic(THING, "json")
    watcher = mqtt_client("watcher-before")
    watcher.subscribe(topic)
    publisher = connected(make_publisher("json"))
    publisher.submit_report(report(1), now=1.0)
    assert [decode(p, "json") for _, p in watcher.wait_for(1)] == [report(1)]
    # Its PUBACK may still be on the way: the outage starts once it is in.
    assert pump_until(publisher, lambda: publisher.status()["spool_messages"] == 0, TIMEOUT_S)

    # Sent but never acknowledged: the broker is frozen, then dies.
    broker.pause()
    publisher.submit_report(report(2), now=2.0)
    publisher.submit_event(event("v-3"), now=3.0)
    broker.kill()
    assert pump_until(publisher, lambda: not publisher.connected, TIMEOUT_S)
    # Spooled while the broker is down: more than the in-flight window.
    later = range(4, 4 + 3 * MAX_IN_FLIGHT)
    for rid in later:
        publisher.submit_report(report(rid), now=float(rid))
    pump_until(publisher, lambda: False, 3.0)  # a few seconds of outage
    assert not publisher.connected
    assert publisher.status()["spool_messages"] == 2 + len(later)

    broker.start()  # same ports, empty: no session survived
    watcher = mqtt_client("watcher-after")
    watcher.subscribe(topic, VIOLATIONS)
    assert pump_until(
        publisher, lambda: publisher.status()["spool_messages"] == 0, RECONNECT_TIMEOUT_S
    )
    got = [(t, decode(p, "json")) for t, p in watcher.wait_for(2 + len(later))]
    assert got == [
        (topic, report(2)),
        (VIOLATIONS, event("v-3")),
        *((topic, report(rid)) for rid in later),
    ]
    assert publisher.status()["sent"] == 3 + len(later)
    assert publisher.status()["drops"] == {"metrics": 0, "violation": 0}


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        # The broker's ACL denies it: a PUBACK with a failure code.
        ("{denied}/{thing_name}/violations", "broker refused it: reason code 0x87"),
        # awscrt refuses to send it: a wildcard in a topic name.
        ("things/{thing_name}/+/violations", "AWS_ERROR_MQTT5_PUBLISH_OPTIONS_VALIDATION"),
    ],
)
def test_a_refused_message_is_quarantined_counted_and_does_not_block_the_rest(
    template: str,
    reason: str,
    broker: Broker,
    make_publisher: MakePublisher,
    mqtt_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    watcher = mqtt_client("watcher")
    watcher.subscribe(metrics_topic(THING, "json"))
    template = template.replace("{denied}", broker.denied_prefix)
    publisher = connected(make_publisher(violations_template=template))
    with caplog.at_level(logging.WARNING):
        publisher.submit_event(event("v-1"), now=1.0)
        publisher.submit_report(report(2), now=2.0)
        assert pump_until(publisher, lambda: publisher.status()["spool_messages"] == 0, TIMEOUT_S)
    assert [decode(p, "json") for _, p in watcher.wait_for(1)] == [report(2)]
    assert publisher.status()["drops"] == {"metrics": 0, "violation": 0}
    assert publisher.status()["quarantined"] == 1
    assert reason in caplog.text


def test_client_certificate_from_another_ca_is_refused(
    broker: Broker, make_publisher: MakePublisher, caplog: pytest.LogCaptureFixture
) -> None:
    pki = broker.pki
    with caplog.at_level(logging.WARNING, logger="agent.service.outbox"):
        publisher = make_publisher(cert=pki.rogue_client_cert, key=pki.rogue_client_key)
        assert pump_until(publisher, lambda: "mqtt_connect_failed" in caplog.text, TIMEOUT_S)
        assert publisher.submit_report(report(1), now=1.0)
        pump_until(publisher, lambda: False, 1.0)
    assert not publisher.connected
    assert publisher.status()["spool_messages"] == 1  # kept for when the cert is fixed
    assert f"endpoint={broker.host} port={broker.port} error=AWS_IO_" in caplog.text
    publisher.stop(flush_timeout_s=1.0)  # returns at once: nothing can be sent


def test_plain_listener_with_tls_off(
    broker: Broker, make_publisher: MakePublisher, mqtt_client: MakeClient
) -> None:
    watcher = mqtt_client("plain-watcher", plain=True)
    watcher.subscribe(VIOLATIONS)
    publisher = connected(make_publisher("cbor", tls=False, client_id="plain-agent"))
    publisher.submit_event(event("v-9"), now=1.0)
    assert [decode(p, "cbor") for _, p in watcher.wait_for(1)] == [event("v-9")]
    # No username at all in CONNECT: the SDK's "?SDK=...&Version=..." tag is off.
    assert "as plain-agent (p5, c1, k60)." in broker.log_text()


def _tls_server(pki: Any, version: ssl.TLSVersion) -> tuple[socket.socket, list[str]]:
    """A TLS server on 127.0.0.1 speaking at most `version`, in a thread; the list
    collects "ok" or the error of each handshake it sees."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = version
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only here
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(pki.ca_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as the agent's brokers do
    listener = socket.create_server(("127.0.0.1", 0))
    handshakes: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    handshakes.append("ok")
            except (ssl.SSLError, OSError) as e:
                handshakes.append(str(e))

    threading.Thread(target=serve, daemon=True).start()
    return listener, handshakes


@pytest.mark.parametrize(
    ("version", "completes"), [(ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True)]
)
def test_tls_older_than_1_2_is_refused(
    version: ssl.TLSVersion, completes: bool, broker: Broker
) -> None:
    """A server that speaks at most TLS 1.1 gets no handshake from the agent; the same
    server allowed TLS 1.2 does, which shows the test can tell."""
    pki = broker.pki
    listener, handshakes = _tls_server(pki, version)
    cfg = Config(
        thing_name=THING,
        mqtt=MqttConfig(
            endpoint=broker.host,
            port=listener.getsockname()[1],
            ca_file=str(pki.ca_cert),
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key),
        ),
    )
    transport = Transport(cfg, [], threading.Event())
    transport.start()
    try:
        deadline = time.monotonic() + 5.0
        while not handshakes and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        transport.stop()
        listener.close()
    assert handshakes, "the agent never tried"
    assert (handshakes[0] == "ok") is completes, handshakes
