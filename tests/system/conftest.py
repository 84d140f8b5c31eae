"""A real mosquitto broker for system tests: mutual TLS on 127.0.0.1 with a CA and
certificates made with hw/pki.py, plus a plain listener; and a small awscrt MQTT 5 client to
watch and answer what the agent publishes.

Fixtures: `pki` (session) -> Pki, `broker` -> Broker (stopped at teardown),
`mqtt_client` -> factory of MqttTestClient (stopped at teardown).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from awscrt import io, mqtt5

from hw.pki import Ca

# Debian installs it in /usr/sbin, which is not on a normal user's PATH.
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
HOST = "127.0.0.1"
CLIENT_NAME = "edge-test-thing"  # the client certificate's CN, the broker's username
TIMEOUT_S = 10.0


# -- certificates -------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # A client certificate from another CA: the broker must refuse it.
    rogue_client_cert: Path
    rogue_client_key: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    pki = Pki(
        ca_cert=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        rogue_client_cert=d / "rogue.pem",
        rogue_client_key=d / "rogue.key",
    )
    ca = Ca("edge-test-ca")
    ca.write(pki.ca_cert)
    ca.server("localhost", ["localhost", HOST], pki.server_cert, pki.server_key)
    ca.client(CLIENT_NAME, pki.client_cert, pki.client_key)
    Ca("edge-test-rogue-ca").client(CLIENT_NAME, pki.rogue_client_cert, pki.rogue_client_key)
    return pki


# -- the broker ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Broker:
    """mosquitto with a mutual-TLS listener on `port` and a plain one on `plain_port`."""

    host = HOST
    denied_prefix = "denied"  # the TLS listener refuses publishes below it

    def __init__(self, workdir: Path, pki: Pki) -> None:
        self.pki = pki
        self.port = _free_port()
        self.plain_port = _free_port()
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        acl_path = workdir / "mosquitto.acl"
        # "#" does not match topics that start with "$". The denied prefix lets a test
        # see a PUBACK that refuses a message.
        acl_path.write_text(
            f"pattern readwrite #\npattern readwrite $aws/#\npattern deny {self.denied_prefix}/#\n"
        )
        self.conf_path.write_text(
            f"""\
per_listener_settings true
persistence false
# As root, mosquitto would otherwise switch to a user that cannot read the test files.
user {"root" if os.geteuid() == 0 else "mosquitto"}
log_dest file {self.log_path}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true

listener {self.port} {HOST}
cafile {pki.ca_cert}
certfile {pki.server_cert}
keyfile {pki.server_key}
require_certificate true
use_identity_as_username true
allow_anonymous false
acl_file {acl_path}

listener {self.plain_port} {HOST}
allow_anonymous true
"""
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + TIMEOUT_S
        while not (_accepts(self.port) and _accepts(self.plain_port)):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(TIMEOUT_S)
            self._process = None

    def kill(self) -> None:
        """Die at once, as in a crash or power cut: no DISCONNECT, no PUBACK."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(TIMEOUT_S)
            self._process = None

    def pause(self) -> None:
        """Freeze (SIGSTOP): connections stay open but nothing is answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = Broker(tmp_path, pki)
    b.start()
    yield b
    b.kill()


# -- a test client ------------------------------------------------------------------


class MqttTestClient:
    """Subscribes, collects what arrives and publishes, all with QoS 1."""

    def __init__(
        self, broker: Broker, client_id: str, *, cert: Path | None, key: Path | None
    ) -> None:
        self._cond = threading.Condition()
        self.messages: list[tuple[str, bytes]] = []
        self._connected = threading.Event()
        self._stopped = threading.Event()
        tls_ctx = None
        if cert is not None and key is not None:
            options = io.TlsContextOptions.create_client_with_mtls_from_path(str(cert), str(key))
            options.override_default_trust_store_from_path(None, str(broker.pki.ca_cert))
            tls_ctx = io.ClientTlsContext(options)
        self._client = mqtt5.Client(
            mqtt5.ClientOptions(
                host_name=broker.host,
                port=broker.port if tls_ctx else broker.plain_port,
                tls_ctx=tls_ctx,
                connect_options=mqtt5.ConnectPacket(
                    client_id=client_id, keep_alive_interval_sec=30
                ),
                min_reconnect_delay_ms=200,
                max_reconnect_delay_ms=1000,
                on_publish_callback_fn=self._on_publish,
                on_lifecycle_event_connection_success_fn=lambda _: self._connected.set(),
                on_lifecycle_event_stopped_fn=lambda _: self._stopped.set(),
                disable_metrics=True,
            )
        )
        self._client.start()
        if not self._connected.wait(TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"test client could not connect:\n{broker.log_text()}")

    def _on_publish(self, data: mqtt5.PublishReceivedData) -> None:
        with self._cond:
            self.messages.append((data.publish_packet.topic, bytes(data.publish_packet.payload)))
            self._cond.notify_all()

    def subscribe(self, *topics: str) -> None:
        packet = mqtt5.SubscribePacket(
            subscriptions=[mqtt5.Subscription(t, mqtt5.QoS.AT_LEAST_ONCE) for t in topics]
        )
        suback = _result(self._client.subscribe(packet))
        assert all(code < 0x80 for code in suback.reason_codes), suback.reason_codes

    def publish(self, topic: str, payload: bytes) -> None:
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
        _result(self._client.publish(packet))

    def wait_for(self, count: int, timeout_s: float = TIMEOUT_S) -> list[tuple[str, bytes]]:
        """The messages received so far, once there are at least `count` (or on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= count, timeout_s)
            return list(self.messages)

    def stop(self) -> None:
        self._client.stop()
        self._stopped.wait(TIMEOUT_S)


def _result(future: Future[Any]) -> Any:
    return future.result(TIMEOUT_S)


@pytest.fixture
def mqtt_client(broker: Broker) -> Iterator[Callable[..., MqttTestClient]]:
    """make(client_id, plain=False) -> a connected MqttTestClient (mutual TLS unless plain)."""
    made: list[MqttTestClient] = []

    def make(client_id: str, *, plain: bool = False) -> MqttTestClient:
        pki = broker.pki
        client = MqttTestClient(
            broker,
            client_id,
            cert=None if plain else pki.client_cert,
            key=None if plain else pki.client_key,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.stop()
