"""Remote control end to end: a real agent, a real mosquitto with mutual TLS, a controller
that sends MQTT 5 requests (response topic, correlation data), and a stand-in for AWS IoT's
shadow service that speaks the named shadow topics. The stand-in is a fake (AWS itself
cannot run here): it keeps one document and answers get and update as the AWS IoT
developer guide describes, echoing clientToken, and publishes update/delta."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from awscrt import io, mqtt5

from tests.system.conftest import TIMEOUT_S, Broker
from tests.system.test_system_daemon import THING, Agent, mqtt_block, wait_until

PREFIX = f"things/{THING}/defender/control"
SHADOW = f"$aws/things/{THING}/shadow/name/edge-defender"

BEHAVIOR = {
    "name": "many-ports",
    "metric": "aws:num-listening-tcp-ports",
    "criteria": {"comparisonOperator": "greater-than", "value": {"count": 50}},
}


def _client(broker: Broker, client_id: str, on_publish: Any) -> mqtt5.Client:
    pki = broker.pki
    options = io.TlsContextOptions.create_client_with_mtls_from_path(
        str(pki.client_cert), str(pki.client_key)
    )
    options.override_default_trust_store_from_path(None, str(pki.ca_cert))
    connected = threading.Event()
    client = mqtt5.Client(
        mqtt5.ClientOptions(
            host_name=broker.host,
            port=broker.port,
            tls_ctx=io.ClientTlsContext(options),
            connect_options=mqtt5.ConnectPacket(client_id=client_id, keep_alive_interval_sec=30),
            on_publish_callback_fn=on_publish,
            on_lifecycle_event_connection_success_fn=lambda _: connected.set(),
            disable_metrics=True,
        )
    )
    client.start()
    assert connected.wait(TIMEOUT_S), broker.log_text()
    return client


def _subscribe(client: mqtt5.Client, *topics: str) -> None:
    packet = mqtt5.SubscribePacket(
        subscriptions=[mqtt5.Subscription(t, mqtt5.QoS.AT_LEAST_ONCE) for t in topics]
    )
    suback = client.subscribe(packet).result(TIMEOUT_S)
    assert all(code < 0x80 for code in suback.reason_codes)


class Controller:
    """An operator's tool: MQTT 5 requests, answers matched by correlation data."""

    def __init__(self, broker: Broker) -> None:
        self._answers: dict[bytes, Future[tuple[str, dict[str, Any]]]] = {}
        self.uncorrelated: list[tuple[str, dict[str, Any]]] = []
        self.client = _client(broker, "controller", self._on_publish)
        _subscribe(self.client, f"{PREFIX}/response/#")  # matches {PREFIX}/response too

    def _on_publish(self, data: mqtt5.PublishReceivedData) -> None:
        p = data.publish_packet
        doc = json.loads(bytes(p.payload))
        future = self._answers.get(bytes(p.correlation_data_bytes or b""))
        if future is None:
            self.uncorrelated.append((p.topic, doc))
        else:
            future.set_result((p.topic, doc))

    def ask(self, request: object, response_topic: str = f"{PREFIX}/response/op") -> Any:
        """The answer's document (and the topic it came on as .topic in `last_topic`)."""
        correlation = uuid.uuid4().bytes
        future: Future[tuple[str, dict[str, Any]]] = Future()
        self._answers[correlation] = future
        payload = request if isinstance(request, bytes) else json.dumps(request).encode()
        self.client.publish(
            mqtt5.PublishPacket(
                topic=f"{PREFIX}/request",
                payload=payload,
                qos=mqtt5.QoS.AT_LEAST_ONCE,
                response_topic=response_topic,
                correlation_data_bytes=correlation,
            )
        ).result(TIMEOUT_S)
        self.last_topic, doc = future.result(TIMEOUT_S)
        return doc

    def stop(self) -> None:
        self.client.stop()


def _merge(doc: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            doc.pop(key, None)
        elif isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge(doc[key], value)
        else:
            doc[key] = value


def _delta(desired: object, reported: object) -> Any:
    if isinstance(desired, dict) and isinstance(reported, dict):
        out = {}
        for key, value in desired.items():
            if key not in reported:
                out[key] = value
            elif (d := _delta(value, reported[key])) is not None:
                out[key] = d
        return out or None
    return None if desired == reported else desired


class ShadowService:
    """The named shadow as AWS IoT keeps it (a test stand-in; see the module doc)."""

    def __init__(self, broker: Broker) -> None:
        self.doc: dict[str, Any] | None = None
        self.version = 0
        self.updates: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = _client(broker, "shadow-service", self._on_publish)
        _subscribe(self.client, f"{SHADOW}/get", f"{SHADOW}/update")

    def _send(self, topic: str, doc: object) -> None:
        packet = mqtt5.PublishPacket(
            topic=topic, payload=json.dumps(doc).encode(), qos=mqtt5.QoS.AT_LEAST_ONCE
        )
        self.client.publish(packet)

    def _on_publish(self, data: mqtt5.PublishReceivedData) -> None:
        p = data.publish_packet
        request = json.loads(bytes(p.payload) or b"{}")
        token = request.get("clientToken")
        with self._lock:
            if p.topic.endswith("/get"):
                if self.doc is None:
                    self._send(f"{SHADOW}/get/rejected", {"code": 404, "message":
                               "No shadow exists with name: 'edge-defender'",
                               "clientToken": token})  # fmt: skip
                    return
                state = dict(self.doc)
                delta = _delta(state.get("desired", {}), state.get("reported", {}))
                if delta is not None:
                    state["delta"] = delta
                self._send(f"{SHADOW}/get/accepted", {"state": state, "version": self.version,
                           "timestamp": int(time.time()), "clientToken": token})  # fmt: skip
            else:
                self.updates.append(request)
                self._update(request["state"], token)

    def _update(self, state: dict[str, Any], token: str | None) -> None:
        previous = json.loads(json.dumps(self.doc)) if self.doc is not None else None
        doc = self.doc if self.doc is not None else {}
        for section in ("desired", "reported"):
            if section in state:
                _merge(doc.setdefault(section, {}), state[section])
        self.doc = doc
        self.version += 1
        documents: dict[str, Any] = {"current": {"state": doc, "version": self.version},
                                     "timestamp": int(time.time())}  # fmt: skip
        if previous is not None:
            documents["previous"] = {"state": previous, "version": self.version - 1}
        self._send(f"{SHADOW}/update/documents", documents)
        self._send(f"{SHADOW}/update/accepted", {"state": state, "version": self.version,
                   "timestamp": int(time.time()), "clientToken": token})  # fmt: skip
        delta = _delta(doc.get("desired", {}), doc.get("reported", {}))
        if "desired" in state and delta is not None:
            self._send(f"{SHADOW}/update/delta", {"state": delta, "version": self.version,
                       "timestamp": int(time.time())})  # fmt: skip

    def set_desired(self, desired: dict[str, Any]) -> None:
        """What an operator's `aws iot-data update-thing-shadow` does."""
        with self._lock:
            self._update({"desired": desired}, None)

    def reported(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps((self.doc or {}).get("reported", {})))

    def stop(self) -> None:
        self.client.stop()


@pytest.fixture
def controlled(tmp_path: Path, broker: Broker) -> Iterator[tuple[Agent, Controller, ShadowService]]:
    shadow = ShadowService(broker)
    agent = Agent(tmp_path, extra=mqtt_block(broker) + '[control]\nenabled = true\nshadow = "on"\n')
    agent.start()
    wait_until(lambda: agent.status().get("broker", {}).get("connected"), "the agent to connect")
    controller = Controller(broker)
    yield agent, controller, shadow
    controller.stop()
    shadow.stop()
    agent.kill()


def _profile_names(controller: Controller) -> list[str]:
    answer = controller.ask({"verb": "list-security-profiles"})
    assert answer["status"] == 0, answer
    return [p["name"] for p in answer["output"]["securityProfileIdentifiers"]]


def test_requests_manage_profiles_in_the_running_agent(
    controlled: tuple[Agent, Controller, ShadowService],
) -> None:
    agent, controller, _ = controlled
    assert _profile_names(controller) == ["test-profile"]
    answer = controller.ask(
        {
            "verb": "create-security-profile",
            "input": {"securityProfileName": "remote", "behaviors": [BEHAVIOR]},
            "clientToken": "c-1",
        }
    )
    assert answer["status"] == 0 and answer["clientToken"] == "c-1", answer
    assert controller.last_topic == f"{PREFIX}/response/op"
    # Taken by the running agent (it reloaded before the answer was sent).
    assert "remote" in agent.status()["profiles"]
    described = controller.ask(
        {"verb": "describe-security-profile", "input": {"securityProfileName": "remote"}}
    )
    assert described["output"]["version"] == 1
    assert described["output"]["behaviors"] == [BEHAVIOR]
    # An update the agent would refuse changes nothing.
    bad = dict(BEHAVIOR, criteria={"comparisonOperator": "greater-than", "value": {"count": -1}})
    answer = controller.ask(
        {
            "verb": "update-security-profile",
            "input": {"securityProfileName": "remote", "behaviors": [bad]},
        }
    )
    assert answer["status"] == 2 and "value" in answer["error"], answer
    again = controller.ask(
        {"verb": "describe-security-profile", "input": {"securityProfileName": "remote"}}
    )
    assert again["output"]["version"] == 1 and again["output"]["behaviors"] == [BEHAVIOR]
    answer = controller.ask(
        {"verb": "delete-security-profile", "input": {"securityProfileName": "remote"}}
    )
    assert answer["status"] == 0, answer
    wait_until(lambda: "remote" not in agent.status()["profiles"], "the profile to go")
    status = agent.status()["control"]
    assert status["done"] >= 4 and status["refused"] >= 1


def test_bad_requests_are_refused_with_the_reason_and_change_nothing(
    controlled: tuple[Agent, Controller, ShadowService],
) -> None:
    agent, controller, _ = controlled
    cases: list[tuple[object, str]] = [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        ({"verb": "run"}, "verb: must be one of"),
        ({"verb": "list-security-profiles", "input": {"config": "/etc/passwd"}}, "input.config"),
        ({"verb": "list-security-profiles", "extra": 1}, "extra: unknown key"),
        ({"verb": "create-dimension", "input": {"name": "d"}}, "required"),
        ({"verb": "list-security-profiles", "input": {"maxResults": 0}}, "max-results"),
        (b"[" * 100 + b"]" * 100, "nested deeper"),
        (b"x" * 70_000, "bytes; at most 65536"),
    ]
    for request, reason in cases:
        answer = controller.ask(request)
        assert answer["status"] in (1, 2) and reason in answer["error"], (request, answer)
    assert _profile_names(controller) == ["test-profile"]
    # An answer is never sent outside the thing's control prefix.
    answer = controller.ask({"verb": "list-dimensions"}, response_topic="elsewhere/x")
    assert controller.last_topic == f"{PREFIX}/response" and "not under" in answer["warning"]
    assert agent.process is not None and agent.process.poll() is None


def test_the_named_shadow_applies_profiles_dimensions_and_settings(
    controlled: tuple[Agent, Controller, ShadowService],
) -> None:
    agent, controller, shadow = controlled
    topic_behavior = {
        "name": "big-topics",
        "metric": "aws:num-messages-sent",
        "metricDimension": {"dimensionName": "telemetry"},
        "criteria": {"comparisonOperator": "greater-than", "value": {"count": 100}},
    }
    shadow.set_desired(
        {
            "dimensions": {"telemetry": {"type": "TOPIC_FILTER", "stringValues": ["tele/#"]}},
            "profiles": {"fleet": {"behaviors": [BEHAVIOR, topic_behavior]}},
            "settings": {"sampling.report_interval_s": 60.0},
        }
    )
    reported = wait_until(
        lambda: (r := shadow.reported()).get("profiles", {}).get("fleet") and r, "the report"
    )
    assert reported["profiles"]["fleet"]["version"] == 1
    assert set(reported["dimensions"]) == {"telemetry"}
    assert reported["settings"] == {"sampling.report_interval_s": 60.0}
    assert "errors" not in reported or not reported["errors"]
    assert "fleet" in agent.status()["profiles"]
    assert agent.status()["reports"] is not None
    # An invalid profile is reported with its reason; the rest stays applied. Removing the
    # dimension and the profile that uses it from desired deletes both.
    shadow.set_desired({"profiles": {"fleet": None, "broken": {"behaviors": [{"name": "x"}]}}})
    reported = wait_until(
        lambda: (r := shadow.reported()).get("errors", {}).get("profiles.broken") and r,
        "the error to be reported",
    )
    assert "fleet" not in reported.get("profiles", {})
    assert "fleet" not in agent.status()["profiles"]
    assert "telemetry" in reported["dimensions"]  # still desired
    shadow.set_desired({"dimensions": None, "profiles": {"broken": None}, "settings": None})
    wait_until(lambda: not shadow.reported().get("dimensions"), "the dimension to go")
    assert _profile_names(controller) == ["test-profile"]
    assert not shadow.reported().get("errors")


def test_requests_are_answered_while_the_shadow_service_is_silent(
    tmp_path: Path, broker: Broker
) -> None:
    # shadow = "on" and no shadow service: each get waits out its 30 s timeout.
    agent = Agent(tmp_path, extra=mqtt_block(broker) + '[control]\nenabled = true\nshadow = "on"\n')
    agent.start()
    controller = None
    try:
        wait_until(lambda: agent.status().get("broker", {}).get("connected"), "a connection")
        controller = Controller(broker)
        began = time.monotonic()
        assert _profile_names(controller) == ["test-profile"]
        answer = controller.ask(
            {
                "verb": "create-security-profile",
                "input": {"securityProfileName": "quick", "behaviors": [BEHAVIOR]},
            }
        )
        assert answer["status"] == 0, answer
        assert time.monotonic() - began < 5.0
        assert agent.status()["control"]["shadow_syncs"] >= 1
    finally:
        if controller is not None:
            controller.stop()
        agent.kill()
