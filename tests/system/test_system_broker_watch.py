"""The broker watch on real traffic: a mosquitto of our own on 127.0.0.1 (plaintext, a
password file and an ACL, so refusals are real), MQTT 3.1.1 and 5 clients written here
with the stdlib, and every frame on lo captured with an AF_PACKET socket of this test
(outgoing copies only: on lo each packet is seen once going out and once coming in).
The per-client metrics are checked exactly, from whole frames and again from frames cut
to a 256-byte snap length."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.collect.capture import parse_frame
from agent.core.broker_watch import BrokerWatch
from tests.core.test_core_mqtt_wire import (
    connect,
    disconnect,
    publish,
    subscribe,
)

pytestmark = pytest.mark.system

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
PASSWD = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/bin")
CTRL = shutil.which("mosquitto_ctrl") or shutil.which("mosquitto_ctrl", path="/usr/bin")
DYNSEC = next(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"), None)
HOST = "127.0.0.1"
TIMEOUT_S = 10.0
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SNAPLEN = 256


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Broker:
    """mosquitto on 127.0.0.1, plaintext, user alice (password "secret") who may publish
    and subscribe below allowed/ only. Its password file and ACL file refuse CONNECTs and
    publishes but never a SUBSCRIBE (mosquitto's acl_file filters deliveries instead); with
    `dynsec` the same rules live in the dynamic security plugin, which refuses SUBSCRIBEs."""

    def __init__(self, workdir: Path, *, dynsec: bool = False) -> None:
        assert MOSQUITTO is not None and PASSWD is not None and CTRL is not None
        self.port = _free_port()
        self.log = workdir / "mosquitto.log"
        conf = workdir / "mosquitto.conf"
        if dynsec:
            rules = workdir / "dynsec.json"
            subprocess.run(
                [CTRL, "dynsec", "init", str(rules), "alice", "secret"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            doc = json.loads(rules.read_text())
            doc["roles"][0]["acls"] = [
                {"acltype": acltype, "topic": "allowed/#", "allow": True}
                for acltype in ("publishClientSend", "publishClientReceive", "subscribePattern")
            ]
            rules.write_text(json.dumps(doc))
            auth = f"plugin {DYNSEC}\nplugin_opt_config_file {rules}"
        else:
            passwd, acl = workdir / "passwd", workdir / "acl"
            subprocess.run([PASSWD, "-b", "-c", str(passwd), "alice", "secret"], check=True)
            acl.write_text("user alice\ntopic readwrite allowed/#\n")  # all else denied
            auth = f"password_file {passwd}\nacl_file {acl}"
        conf.write_text(
            f"""\
persistence false
user root
log_dest file {self.log}
log_type all
listener {self.port} {HOST}
allow_anonymous false
{auth}
"""
        )
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start: {self.log_text()}") from None
                time.sleep(0.05)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(TIMEOUT_S)


class Capture:
    """Raw frames leaving through lo, read by a thread until `stop`."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.05)
        self.frames: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                buf, addr = self.sock.recvfrom(1 << 18)
            except TimeoutError:
                continue
            if addr[2] == PACKET_OUTGOING:
                with self._lock:
                    self.frames.append((time.time(), buf))

    def drain(self) -> list[tuple[float, bytes]]:
        time.sleep(0.2)  # what was sent is on the socket's queue by now
        with self._lock:
            out, self.frames = self.frames, []
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        self.sock.close()


class Client:
    """Just enough MQTT: send built packets, read packets, ack QoS 1 deliveries."""

    def __init__(self, port: int, client_id: str, *, level: int = 4, password: str = "secret"):
        self.level = level
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.received: list[str] = []
        self.send(connect(client_id, level=level, username="alice", password=password))
        self.connack = self.expect(2)[1]  # the return / reason code

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError("the broker closed the connection")
            out += chunk
        return out

    def read_packet(self) -> tuple[int, bytes]:
        first = self._read(1)[0]
        remaining, shift = 0, 0
        while True:
            byte = self._read(1)[0]
            remaining |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._read(remaining)

    def expect(self, ptype: int) -> bytes:
        """The body of the next packet of `ptype`; PUBLISHes on the way are noted and acked."""
        while True:
            first, body = self.read_packet()
            if first >> 4 == ptype:
                return body
            assert first >> 4 == 3, f"unexpected packet type {first >> 4}"
            self._delivered(first, body)

    def wait_for(self, count: int) -> list[str]:
        """The topics of the first `count` messages delivered."""
        while len(self.received) < count:
            self._delivered(*self.read_packet())
        return self.received

    def _delivered(self, first: int, body: bytes) -> None:
        topic_len = int.from_bytes(body[:2], "big")
        self.received.append(body[2 : 2 + topic_len].decode())
        if first & 0x06:  # QoS 1: PUBACK with its packet id
            self.send(bytes([0x40, 2]) + body[2 + topic_len : 4 + topic_len])

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        packet_id: int = 1,
        alias: int | None = None,
    ) -> bytes:
        """Send a PUBLISH; for QoS 1 the PUBACK's body."""
        self.send(
            publish(topic, payload, qos=qos, packet_id=packet_id, v5=self.level == 5, alias=alias)
        )
        return self.expect(4) if qos else b""

    def suback(self, packet_id: int, *filters: str) -> bytes:
        self.send(subscribe(packet_id, *filters, v5=self.level == 5))
        body = self.expect(9)
        return body[3:] if self.level == 5 else body[2:]  # MQTT 5: after an empty property block

    def wait_closed(self) -> None:
        """Until the broker closes the connection (its FIN is then on the wire)."""
        with pytest.raises(EOFError):
            while True:
                self.read_packet()
        self.sock.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)
        self.wait_closed()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """make(dynsec=False) -> a started Broker, stopped at teardown."""
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_RAW) for an AF_PACKET socket")
    if MOSQUITTO is None or PASSWD is None or CTRL is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    made: list[Broker] = []

    def make(*, dynsec: bool = False) -> Broker:
        workdir = tmp_path / f"broker{len(made)}"
        workdir.mkdir()
        made.append(Broker(workdir, dynsec=dynsec))
        return made[-1]

    yield make
    for b in made:
        b.stop()


def watch_frames(watch: BrokerWatch, frames: list[tuple[float, bytes]], snaplen: int) -> None:
    for ts, buf in frames:
        frame = parse_frame(buf[:snaplen], ts, True)
        if frame is not None:
            watch.feed(frame)


def test_metrics_per_client_from_real_traffic(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    capture = Capture()
    try:
        # MQTT 3.1.1: subscribes, publishes (a forbidden topic included: a 3.1.1 broker
        # acks it as usual) and disconnects.
        v3 = Client(broker.port, "dev-v3")
        assert v3.connack == 0
        assert v3.suback(1, "allowed/#") == bytes([1])
        v3.publish("allowed/a", b"a" * 30, qos=1, packet_id=2)
        v3.publish("allowed/a", b"a" * 40, qos=1, packet_id=3)
        v3.publish("allowed/b", b"b" * 10)
        v3.publish("forbidden/x", b"x" * 5, qos=1, packet_id=4)
        v3.publish("allowed/sync", b"", qos=1, packet_id=5)
        want = ["allowed/a", "allowed/a", "allowed/b", "allowed/sync"]
        assert sorted(v3.wait_for(4)) == want
        v3.send(disconnect())
        v3.wait_closed()

        # MQTT 5: topic aliases, a big message over several segments, a PUBACK refusing
        # with 0x87; it ends without DISCONNECT (a FIN).
        v5 = Client(broker.port, "dev-v5", level=5)
        assert v5.connack == 0
        # PUBACK reason codes below 0x80 accept (0x10: no subscriber)
        assert v5.publish("allowed/v5", b"1" * 20, qos=1, packet_id=1, alias=1)[2] < 0x80
        assert v5.publish("", b"2" * 3000, qos=1, packet_id=2, alias=1)[2] < 0x80
        assert v5.publish("allowed/huge", b"h" * 200_000, qos=1, packet_id=3)[2] < 0x80
        assert v5.publish("forbidden/y", b"y", qos=1, packet_id=4)[2] == 0x87
        v5.close()

        # Wrong passwords, 3.1.1 and 5.
        bad3 = Client(broker.port, "dev-bad", password="wrong")
        assert bad3.connack in (4, 5)
        bad3.wait_closed()
        bad5 = Client(broker.port, "dev-bad5", level=5, password="wrong")
        assert bad5.connack in (0x86, 0x87)
        bad5.wait_closed()

        # A session left open across takes.
        still = Client(broker.port, "dev-open")
        first = capture.drain()
        still.close()
        second = capture.drain()
    finally:
        capture.stop()

    ip = ["127.0.0.1"]
    zero = {
        "aws:num-authorization-failures": {},
        "aws:num-messages-received": {},
        "aws:num-messages-sent": {},
        "aws:num-connection-attempts": 0,
        "aws:num-disconnects": 0,
    }
    want_first = {
        "dev-v3": {
            **zero,
            "aws:num-messages-sent": {
                "allowed/a": 2,
                "allowed/b": 1,
                "forbidden/x": 1,
                "allowed/sync": 1,
            },
            "aws:num-messages-received": {"allowed/a": 2, "allowed/b": 1, "allowed/sync": 1},
            "aws:message-byte-size": {
                "allowed/a": 40,
                "allowed/b": 10,
                "forbidden/x": 5,
                "allowed/sync": 0,
            },
            "aws:num-connection-attempts": 1,
            "aws:num-disconnects": 1,
            "aws:source-ip-address": ip,
        },
        "dev-v5": {
            **zero,
            "aws:num-messages-sent": {"allowed/v5": 2, "allowed/huge": 1, "forbidden/y": 1},
            "aws:message-byte-size": {
                "allowed/v5": 3000,
                "allowed/huge": 200_000,
                "forbidden/y": 1,
            },
            "aws:num-authorization-failures": {"forbidden/y": 1},
            "aws:num-connection-attempts": 1,
            "aws:num-disconnects": 1,
            "aws:source-ip-address": ip,
        },
        "dev-bad": {
            **zero,
            "aws:num-authorization-failures": {"": 1},
            "aws:num-connection-attempts": 1,
            "aws:source-ip-address": ip,
        },
        "dev-bad5": {
            **zero,
            "aws:num-authorization-failures": {"": 1},
            "aws:num-connection-attempts": 1,
            "aws:source-ip-address": ip,
        },
        "dev-open": {**zero, "aws:num-connection-attempts": 1, "aws:source-ip-address": ip},
    }
    assert any(len(buf) > SNAPLEN for _, buf in first)  # the cut pass has cuts to skip
    for snaplen in (1 << 18, SNAPLEN):
        watch = BrokerWatch([broker.port])
        watch_frames(watch, first, snaplen)
        assert watch.take(time.time()) == want_first, (snaplen, broker.log_text())
        assert watch.take(time.time()) == {"dev-open": {**zero, "aws:source-ip-address": ip}}
        watch_frames(watch, second, snaplen)
        assert watch.take(time.time()) == {
            "dev-open": {**zero, "aws:num-disconnects": 1, "aws:source-ip-address": ip}
        }
        stats = watch.stats()
        assert (stats["flows"], stats["sessions"], stats["gaps"], stats["decode_errors"]) == (
            0,
            0,
            0,
            0,
        ), stats
        assert stats["unattributed_packets"] == 0, stats


def test_refused_subscriptions_from_real_traffic(make_broker: Callable[..., Broker]) -> None:
    if DYNSEC is None:
        pytest.skip("mosquitto's dynamic security plugin is not installed")
    broker = make_broker(dynsec=True)
    capture = Capture()
    try:
        v3 = Client(broker.port, "sub-v3")
        assert v3.connack == 0
        assert v3.suback(1, "allowed/#", "forbidden/#") == bytes([1, 0x80])
        v3.send(disconnect())
        v3.wait_closed()
        v5 = Client(broker.port, "sub-v5", level=5)
        assert v5.connack == 0
        assert v5.suback(2, "forbidden/#", "allowed/x") == bytes([0x87, 1])
        assert v5.publish("forbidden/z", b"zz", qos=1, packet_id=3)[2] == 0x87
        v5.send(disconnect(0))
        v5.wait_closed()
        bad = Client(broker.port, "sub-bad", level=5, password="wrong")
        assert bad.connack in (0x86, 0x87)
        bad.wait_closed()
        frames = capture.drain()
    finally:
        capture.stop()
    watch = BrokerWatch([broker.port])
    watch_frames(watch, frames, SNAPLEN)
    ip = ["127.0.0.1"]
    common = {
        "aws:num-messages-sent": {},
        "aws:num-messages-received": {},
        "aws:num-connection-attempts": 1,
        "aws:source-ip-address": ip,
    }
    assert watch.take(time.time()) == {
        "sub-v3": {
            **common,
            "aws:num-authorization-failures": {"forbidden/#": 1},
            "aws:num-disconnects": 1,
        },
        "sub-v5": {
            **common,
            "aws:num-messages-sent": {"forbidden/z": 1},
            "aws:message-byte-size": {"forbidden/z": 2},
            "aws:num-authorization-failures": {"forbidden/#": 1, "forbidden/z": 1},
            "aws:num-disconnects": 1,
        },
        "sub-bad": {**common, "aws:num-authorization-failures": {"": 1}, "aws:num-disconnects": 0},
    }, broker.log_text()
