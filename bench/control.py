"""Remote control's cost: round-trip time of MQTT 5 requests to a running agent, and the
agent's RSS with [control] off and on.

    python bench/control.py [--requests 50]

Two agents against a local mosquitto with mutual TLS (bench/daemon.py's set-up), one
with [control] off, one with it on. A controller (awscrt MQTT 5, response topic and
correlation data) sends `--requests` of each kind to the second, one at a time, and
takes the time from publish to answer. RSS is read once both agents have sampled a
few times, and again after the requests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from awscrt import io, mqtt5
from daemon import PROFILE, broker_conf, free_port, make_pki, mqtt_section, rss_kib, wait_port

ROOT = Path(__file__).resolve().parent.parent
THING = "bench-control"
PREFIX = f"things/{THING}/defender/control"
BEHAVIOR = {
    "name": "ports",
    "metric": "aws:num-listening-tcp-ports",
    "criteria": {"comparisonOperator": "greater-than", "value": {"count": 50}},
}


class Controller:
    def __init__(self, pki: Path, port: int) -> None:
        self._waiting: dict[bytes, Future[dict[str, Any]]] = {}
        options = io.TlsContextOptions.create_client_with_mtls_from_path(
            str(pki / "client.pem"), str(pki / "client.key")
        )
        options.override_default_trust_store_from_path(None, str(pki / "ca.pem"))
        connected = threading.Event()
        self.client = mqtt5.Client(
            mqtt5.ClientOptions(
                host_name="127.0.0.1",
                port=port,
                tls_ctx=io.ClientTlsContext(options),
                connect_options=mqtt5.ConnectPacket(client_id="bench-controller"),
                on_publish_callback_fn=self._on_publish,
                on_lifecycle_event_connection_success_fn=lambda _: connected.set(),
            )
        )
        self.client.start()
        if not connected.wait(10):
            raise SystemExit("the controller could not connect")
        packet = mqtt5.SubscribePacket([mqtt5.Subscription(f"{PREFIX}/response/#")])
        self.client.subscribe(packet).result(10)

    def _on_publish(self, data: mqtt5.PublishReceivedData) -> None:
        p = data.publish_packet
        future = self._waiting.pop(bytes(p.correlation_data_bytes or b""), None)
        if future is not None:
            future.set_result(json.loads(bytes(p.payload)))

    def ask(self, verb: str, **given: Any) -> tuple[float, dict[str, Any]]:
        correlation = uuid.uuid4().bytes
        future: Future[dict[str, Any]] = Future()
        self._waiting[correlation] = future
        began = time.perf_counter()
        self.client.publish(
            mqtt5.PublishPacket(
                topic=f"{PREFIX}/request",
                payload=json.dumps({"verb": verb, "input": given}).encode(),
                qos=mqtt5.QoS.AT_LEAST_ONCE,
                response_topic=f"{PREFIX}/response/bench",
                correlation_data_bytes=correlation,
            )
        )
        answer = future.result(60)
        return time.perf_counter() - began, answer


def start_agent(d: Path, name: str, port: int, control: bool) -> subprocess.Popen[bytes]:
    config = d / f"{name}.toml"
    config.write_text(
        f"""thing_name = "{THING if control else name}"
state_dir = "{d / name}"
[sampling]
interval_s = 1.0
{mqtt_section(d, port)}[detect]
profiles = ["{PROFILE}"]
[control]
enabled = {"true" if control else "false"}
max_requests_per_minute = 6000
"""
    )
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=ROOT,
        stderr=(d / f"{name}.log").open("wb"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="requests of each kind")
    args = parser.parse_args()
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if mosquitto is None:
        raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        d = Path(tmp)
        make_pki(d)
        port = free_port()
        conf = broker_conf(d, port)
        # Without it mosquitto's Nagle and the clients' delayed ACKs add ~40 ms a hop.
        conf.write_text("set_tcp_nodelay true\n" + conf.read_text())
        broker = subprocess.Popen([mosquitto, "-c", str(conf)])
        agents: list[subprocess.Popen[bytes]] = []
        try:
            wait_port(port)
            agents = [start_agent(d, "off", port, False), start_agent(d, "on", port, True)]
            time.sleep(8)
            rss_before = [rss_kib(a.pid) for a in agents]
            controller = Controller(d, port)
            times: dict[str, list[float]] = {}

            def timed(kind: str, verb: str, **given: Any) -> None:
                took, answer = controller.ask(verb, **given)
                if answer["status"] != 0:
                    raise SystemExit(f"{verb}: {answer}")
                times.setdefault(kind, []).append(took)

            for i in range(args.requests):
                timed("list-security-profiles", "list-security-profiles")
                timed("describe-agent-status", "describe-agent-status")
                timed("list-violation-events (day)", "list-violation-events",
                      startTime=time.time() - 86400, endTime=time.time())  # fmt: skip
                name = f"p{i}"
                timed("create-security-profile (with reload)", "create-security-profile",
                      securityProfileName=name, behaviors=[BEHAVIOR])  # fmt: skip
                timed("delete-security-profile (with reload)", "delete-security-profile",
                      securityProfileName=name)  # fmt: skip
            time.sleep(3)
            rss_after = [rss_kib(a.pid) for a in agents]
        finally:
            for a in agents:
                a.terminate()
                a.wait(30)
            broker.terminate()
            broker.wait(10)
    print(f"round trip, {args.requests} requests each (ms)   median    p95     max")
    for kind, values in times.items():
        ms = sorted(v * 1000 for v in values)
        p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
        print(f"  {kind:<38} {statistics.median(ms):7.1f} {p95:7.1f} {ms[-1]:7.1f}")
    print("RSS (MiB)                         [control] off    on")
    for what, (off, on) in (("after start", rss_before), ("after the requests", rss_after)):
        print(f"  {what:<32} {off / 1024:10.1f} {on / 1024:6.1f}")


if __name__ == "__main__":
    main()
