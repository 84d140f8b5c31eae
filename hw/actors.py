"""The rig's traffic makers, one stdlib-only file that runs on any node (a device may
have no scapy, no venv): `python3 - KIND JSON_PARAMS` with this source on stdin. Each
kind is a function below, its keyword parameters the JSON object's keys. Servers and
loops run until SIGTERM, which exits cleanly; the others stop when their count is done.
Nothing is printed but errors (each distinct one once) on stderr.

Clients given `count_file` write there how many exchanges got their answer, so that a
test or the rig can check from outside that the traffic really flowed. Port lists are
written as nmap takes them: "22,80,8000-8010"."""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import os
import random
import select
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

SSHD = "/usr/sbin/sshd"
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)
RETRY_S = 0.2  # before trying again to reach a server that is not up yet
TIMEOUT_S = 2.0  # a client waits this long for an answer
# Servers and clients of a scenario start together: a client failing this soon after
# its start is most likely early, not wrong, and says nothing unless it keeps failing.
STARTUP_S = 3.0
_started = time.monotonic()
_said: set[str] = set()


def _error(message: str, *, retried: bool = False) -> None:
    """Say each distinct problem once: a loop that fails every round must not flood.
    A `retried` problem is kept quiet during the start-up grace."""
    if retried and time.monotonic() - _started < STARTUP_S:
        return
    if message not in _said:
        _said.add(message)
        print(f"actor {sys.argv[1] if len(sys.argv) > 1 else '?'}: {message}", file=sys.stderr)


def _write_count(path: str | None, n: int) -> None:
    if path is None:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(str(n))
    os.replace(tmp, path)  # a reader never sees a half-written number


def _rounds(every_s: float) -> Iterator[None]:
    """Forever, once every `every_s` seconds on a fixed grid (a slow round does not
    shift the later ones)."""
    start = time.monotonic()
    k = 0
    while True:
        yield
        k += 1
        time.sleep(max(0.0, start + k * every_s - time.monotonic()))


def _connected(host: str, port: int) -> socket.socket:
    """A TCP connection to host:port, retried until the server is up."""
    while True:
        try:
            return socket.create_connection((host, port), timeout=TIMEOUT_S)
        except OSError as e:
            _error(f"connect {host}:{port}: {e}", retried=True)
            time.sleep(RETRY_S)


def _hold() -> None:
    while True:
        time.sleep(3600)


# -- servers -------------------------------------------------------------------------


def listen(port: int, proto: str = "tcp", host: str = "0.0.0.0") -> None:
    """A listening socket (a backdoor): TCP accepts and hangs up, UDP reads and drops."""
    if proto not in ("tcp", "udp"):
        raise ValueError(f"proto must be 'tcp' or 'udp', got {proto!r}")
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        if proto == "tcp":
            s.listen()
        while True:
            if proto == "tcp":
                s.accept()[0].close()
            else:
                s.recvfrom(65535)


def sink(port: int, host: str = "0.0.0.0", count_file: str | None = None) -> None:
    """A TCP server that holds every connection open until its peer closes it and
    discards what arrives; `count_file` gets the bytes received so far (written when a
    connection closes and at most every 0.5 s while data flows)."""
    sel = selectors.DefaultSelector()
    server = socket.create_server((host, port), backlog=1024)
    server.setblocking(False)
    sel.register(server, selectors.EVENT_READ)
    total = 0
    written = time.monotonic()
    try:
        while True:
            for key, _ in sel.select():
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s is server:
                    conn, _ = server.accept()
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = s.recv(1 << 16)
                except OSError:
                    data = b""
                total += len(data)
                if not data:
                    sel.unregister(s)
                    s.close()
                if not data or time.monotonic() - written > 0.5:
                    _write_count(count_file, total)
                    written = time.monotonic()
    finally:
        _write_count(count_file, total)


def dns_server(
    port: int = 53,
    answer: str = "192.0.2.10",
    host: str = "0.0.0.0",
    nxdomain: list[str] | None = None,
) -> None:
    """Answers every standard query with one A record, `answer`, or NXDOMAIN when the
    name is in `nxdomain` ("*.evil.example" also covers evil.example and every name
    under it, as the agent's string sets do)."""
    rdata = socket.inet_aton(answer)
    unknown = [n.lower().rstrip(".") for n in nxdomain or []]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, port))
        while True:
            query, peer = s.recvfrom(512)
            question = _question(query)
            if question is None:
                continue
            name, end = question
            if any(_name_matches(name, pattern) for pattern in unknown):
                header = query[:2] + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0)
                s.sendto(header + query[12:end], peer)
                continue
            header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
            record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + rdata
            s.sendto(header + query[12:end] + record, peer)


def _question(msg: bytes) -> tuple[str, int] | None:
    """The name of the single question of a DNS query (lowercase, no trailing dot) and
    where the question ends, or None if it is not one."""
    if len(msg) < 17 or struct.unpack("!H", msg[4:6])[0] != 1:
        return None
    labels = []
    i = 12
    while i < len(msg) and msg[i]:
        if msg[i] & 0xC0:  # a pointer has no place in a query's question
            return None
        labels.append(msg[i + 1 : i + 1 + msg[i]].decode("ascii", "replace").lower())
        i += msg[i] + 1
    end = i + 5  # the root label, QTYPE, QCLASS
    return (".".join(labels), end) if end <= len(msg) else None


def _name_matches(name: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return name == pattern[2:] or name.endswith(pattern[1:])
    return name == pattern


def http_server(port: int = 80, size: int = 2048, host: str = "0.0.0.0") -> None:
    """Answers every GET with `size` bytes of text."""
    body = (b"edge-defender rig page\n" * (size // 23 + 1))[:size]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # nothing on stdout/stderr but errors

    with http.server.ThreadingHTTPServer((host, port), Handler) as server:
        server.serve_forever()


def ntp_server(port: int = 123, host: str = "0.0.0.0") -> None:
    """A stratum-2 NTP responder (server mode 4) with this host's clock."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, port))
        while True:
            request, peer = s.recvfrom(512)
            if len(request) < 48 or request[0] & 7 != 3:
                continue
            now = _ntp_time(time.time())
            reply = struct.pack("!BBbb11I", 0x24, 2, 6, -20, *([0] * 11))
            reply = reply[:12] + b"RIG\0" + now + request[40:48] + now + now
            s.sendto(reply, peer)


def _ntp_time(t: float) -> bytes:
    seconds = int(t) + NTP_EPOCH_OFFSET
    return struct.pack("!II", seconds & 0xFFFFFFFF, int((t % 1) * 2**32))


def sshd(key_dir: str, port: int = 22) -> None:
    """OpenSSH's sshd on `port` with a host key made in `key_dir`, and a client key pair
    there whose public half it accepts for root (the `ssh` actor logs in with it)."""
    os.makedirs("/run/sshd", exist_ok=True)  # its privilege separation directory
    for key in ("host_key", "client_key"):
        path = os.path.join(key_dir, key)
        if not os.path.exists(path):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    authorized = os.path.join(key_dir, "authorized_keys")
    if not os.path.exists(authorized):
        os.replace(os.path.join(key_dir, "client_key.pub"), authorized)
    options = {
        "Port": str(port),
        "HostKey": os.path.join(key_dir, "host_key"),
        "AuthorizedKeysFile": authorized,
        "PidFile": "none",
        "StrictModes": "no",
        "UsePAM": "no",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PermitRootLogin": "prohibit-password",
        "LogLevel": "ERROR",  # -e: its errors on this actor's stderr, not each login
    }
    argv = [SSHD, "-D", "-e", "-f", "/dev/null"]
    for k, v in options.items():
        argv += ["-o", f"{k}={v}"]
    _run_child(argv)


def _run_child(argv: list[str]) -> None:
    """Run a server program until this actor is told to stop; it goes down with it."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        child.wait()
        raise RuntimeError(f"{argv[0]} exited with status {child.returncode}")
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait()


# -- clients and attacks -------------------------------------------------------------


def connect(host: str, port: int, n: int = 1, gap_s: float = 0.0) -> None:
    """Open `n` TCP connections to host:port, `gap_s` apart, and hold them open."""
    held = []
    for _ in range(n):
        held.append(_connected(host, port))
        time.sleep(gap_s)
    _hold()


def connect_probe(
    host: str,
    port: int,
    every_s: float = 0.1,
    timeout_s: float = 0.2,
    result_file: str | None = None,
    hold: bool = True,
) -> None:
    """Try a TCP connection to host:port every `every_s` s, each given `timeout_s`, until
    stopped: when the path to it is cut (a firewall's block), from when on. With `hold`
    the latest connection that succeeded stays open until the next one does, so the
    device always holds one, as a beacon would, for a sampler to see; without it a
    connection is closed when an attempt fails (a beacon that reconnects: once blocked,
    no connection is left to see). `result_file` gets one line per attempt, "<epoch
    seconds at its start> ok" or "... fail <why>", flushed at once."""
    if every_s <= 0 or timeout_s <= 0:
        raise ValueError(f"every_s and timeout_s must be above 0, got {every_s!r}, {timeout_s!r}")
    held: socket.socket | None = None
    with open(result_file or os.devnull, "a", buffering=1) as out:
        for _ in _rounds(every_s):
            start = time.time()
            try:
                conn = socket.create_connection((host, port), timeout=timeout_s)
            except OSError as e:
                out.write(f"{start:.6f} fail {type(e).__name__}: {e}\n")
                if not hold and held is not None:
                    held.close()
                    held = None
                continue
            if held is not None:
                held.close()
            held = conn
            out.write(f"{start:.6f} ok\n")


def beacon(
    host: str,
    port: int,
    every_s: float = 2.0,
    jitter: float = 0.0,
    size: int = 64,
    count_file: str | None = None,
) -> None:
    """A beacon: a new TCP connection to host:port that sends `size` bytes and closes,
    every `every_s` s give or take `jitter` (a fraction: each interval drawn uniformly
    from every_s * (1 ± jitter), as malware jitters its check-ins to look less regular).
    `count_file` counts the check-ins that connected."""
    if every_s <= 0 or not 0 <= jitter < 1:
        raise ValueError(f"every_s must be > 0 and jitter in [0, 1), got {every_s!r}, {jitter!r}")
    payload = os.urandom(size)
    ok = 0
    due = time.monotonic()
    while True:
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT_S) as s:
                s.sendall(payload)
            ok += 1
            _write_count(count_file, ok)
        except OSError as e:
            _error(f"beacon {host}:{port}: {e}", retried=True)
        due += every_s * random.uniform(1 - jitter, 1 + jitter)
        time.sleep(max(0.0, due - time.monotonic()))


def flood(host: str, port: int, n: int, rate_per_s: float = 0.0) -> None:
    """Keep `n` TCP connections open to host:port, opening them at up to `rate_per_s`
    (0: as fast as they connect) and reopening any the server closes."""
    sel = selectors.DefaultSelector()
    open_now = 0
    pause = 1 / rate_per_s if rate_per_s > 0 else 0.0
    while True:
        while open_now < n:
            s = _connected(host, port)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            open_now += 1
            time.sleep(pause)
        for key, _ in sel.select():
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                closed = not conn.recv(4096)
            except OSError:
                closed = True
            if closed:
                sel.unregister(conn)
                conn.close()
                open_now -= 1


def exfil(
    host: str,
    port: int,
    size: int,
    rate_bps: float = 0.0,
    chunk: int = 65536,
    ramp_s: float = 0.0,
) -> None:
    """Send `size` bytes to host:port at `rate_bps` bytes a second (0: as fast as the
    link goes), then close and finish. With `ramp_s` the rate grows linearly from 0 to
    `rate_bps` over the first `ramp_s` seconds (an upload that creeps up), then holds."""
    if ramp_s < 0 or (ramp_s > 0 and rate_bps <= 0):
        raise ValueError(f"ramp_s must be >= 0, and needs rate_bps > 0: {ramp_s!r}, {rate_bps!r}")
    data = os.urandom(chunk)
    start = time.monotonic()
    sent = 0
    with _connected(host, port) as s:
        s.settimeout(None)
        while sent < size:
            sent += s.send(data[: min(chunk, size - sent)])
            if rate_bps > 0:
                time.sleep(max(0.0, start + _due_s(sent, rate_bps, ramp_s) - time.monotonic()))
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # the sink closes when it has read everything


def _due_s(sent: int, rate_bps: float, ramp_s: float) -> float:
    """When `sent` bytes are due after the start: the rate r*t/ramp_s over the ramp has
    sent r*t**2/(2*ramp_s) by t, then r a second on."""
    ramped = rate_bps * ramp_s / 2  # bytes sent by the ramp's end
    if sent <= ramped:
        return math.sqrt(2 * ramp_s * sent / rate_bps)
    return ramp_s + (sent - ramped) / rate_bps


def spawn(n: int, name: str = "edrig-worker") -> None:
    """`n` sleeping child processes whose command line starts with `name` (argv[0]),
    held until this actor stops; they go with it."""
    children = [
        subprocess.Popen([name, "86400"], executable="sleep", stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        _hold()
    finally:
        for c in children:
            c.kill()
        for c in children:
            c.wait()


def _counted(exchange: Callable[[], None], every_s: float, count_file: str | None) -> None:
    """Run `exchange` every `every_s` s forever, counting those that succeed."""
    ok = 0
    for _ in _rounds(every_s):
        try:
            exchange()
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            _error(str(e) or type(e).__name__, retried=True)
            continue
        ok += 1
        _write_count(count_file, ok)


def dns_query(
    server: str,
    port: int = 53,
    names: list[str] | None = None,
    every_s: float = 1.0,
    count_file: str | None = None,
) -> None:
    """A stub resolver: one A query every `every_s` s, cycling through `names`; an
    answer or an NXDOMAIN counts as answered."""
    queue = names or ["telemetry.example.com"]
    k = 0

    def exchange() -> None:
        nonlocal k
        name = queue[k % len(queue)]
        k += 1
        qid = k & 0xFFFF
        qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT_S)
            s.connect((server, port))  # connected: not a listening UDP port to the agent
            s.send(query)
            reply = s.recv(512)
        rid, flags, _, answers = struct.unpack("!HHHH", reply[:8])
        rcode = flags & 0xF
        if rid != qid or not flags & 0x8000 or not (rcode == 3 or (rcode == 0 and answers)):
            raise ValueError(f"no answer for {name} from {server}")

    _counted(exchange, every_s, count_file)


def http_client(url: str, every_s: float = 2.0, count_file: str | None = None) -> None:
    """A GET of `url` every `every_s` s, the whole body read."""

    def exchange() -> None:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            r.read()

    _counted(exchange, every_s, count_file)


def ntp_client(
    server: str, port: int = 123, every_s: float = 2.0, count_file: str | None = None
) -> None:
    """An SNTP client (mode 3) asking `server` every `every_s` s."""

    def exchange() -> None:
        sent = _ntp_time(time.time())
        request = bytes([0x23]) + bytes(39) + sent
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT_S)
            s.connect((server, port))
            s.send(request)
            reply = s.recv(512)
        if len(reply) < 48 or reply[0] & 7 != 4 or reply[24:32] != sent:
            raise ValueError(f"not an NTP answer to this request from {server}")

    _counted(exchange, every_s, count_file)


def ssh_client(
    host: str,
    key_dir: str,
    port: int = 22,
    user: str = "root",
    command: str = "cat /proc/loadavg",
    every_s: float = 5.0,
    count_file: str | None = None,
) -> None:
    """An OpenSSH session every `every_s` s: log in with the key the `sshd` actor made
    in `key_dir`, run `command`, log out."""
    key = os.path.join(key_dir, "client_key")
    argv = ["ssh", "-F", "/dev/null", "-i", key, "-p", str(port), "-o", "BatchMode=yes"]
    argv += ["-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no"]
    argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]
    argv += ["-o", f"ConnectTimeout={TIMEOUT_S:g}", f"{user}@{host}", command]

    def exchange() -> None:
        if not os.path.exists(key):
            raise ValueError(f"no client key yet at {key} (is the sshd actor up?)")
        done = subprocess.run(argv, capture_output=True, timeout=10 * TIMEOUT_S)
        if done.returncode != 0:
            raise ValueError(f"ssh {user}@{host}: {done.stderr.decode(errors='replace').strip()}")

    _counted(exchange, every_s, count_file)


def mqtt_telemetry(
    broker: str,
    ca: str,
    cert: str,
    key: str,
    port: int = 8883,
    client_id: str = "rig-telemetry",
    topic: str = "rig/telemetry",
    every_s: float = 1.0,
    size: int = 96,
    count_file: str | None = None,
) -> None:
    """MQTT 3.1.1 telemetry over mutual TLS: CONNECT (clean session), then a QoS 0
    PUBLISH of about `size` bytes of JSON every `every_s` s; reconnects after a failure.
    `count_file` counts the messages published on accepted connections."""
    for path in (ca, cert, key):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no TLS file {path} on this node")
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    keep_alive_s = max(60, int(every_s * 3))
    connect_packet = _mqtt_packet(
        0x10,
        _mqtt_string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", keep_alive_s),
        _mqtt_string(client_id),
    )
    published = 0
    conn: ssl.SSLSocket | None = None
    for _ in _rounds(every_s):
        try:
            if conn is None:
                raw = socket.create_connection((broker, port), timeout=TIMEOUT_S)
                conn = context.wrap_socket(raw, server_hostname=broker)
                conn.sendall(connect_packet)
                if _read_exactly(conn, 4) != b"\x20\x02\x00\x00":
                    raise ValueError(f"broker {broker}:{port} refused CONNECT of {client_id}")
            payload = {"t": round(time.time(), 3), "n": published, "pad": "x" * max(0, size - 40)}
            conn.sendall(_mqtt_packet(0x30, _mqtt_string(topic), json.dumps(payload).encode()))
        except (OSError, ValueError) as e:
            _error(f"mqtt {broker}:{port}: {e}", retried=True)
            if conn is not None:
                conn.close()
            conn = None
            continue
        published += 1
        _write_count(count_file, published)


def _mqtt_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _mqtt_packet(first: int, header: bytes, payload: bytes) -> bytes:
    rest = header + payload
    n = len(rest)
    length = bytearray()
    while True:  # the remaining length, 7 bits a byte
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            break
    return bytes([first]) + bytes(length) + rest


def _read_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            raise ValueError("connection closed")
        data += more
    return data


# -- a gateway's own MQTT clients (plaintext, user name and password) ------------------


def mqtt_client(
    host: str,
    username: str,
    password: str,
    port: int = 1883,
    client_id: str | None = None,
    mode: str = "publish",
    topics: list[str] | None = None,
    subscribe: str | None = None,
    rate_per_s: float = 1.0,
    n: int = 0,
    size: int = 64,
    qos: int = 0,
    version: int = 4,
    count_file: str | None = None,
) -> None:
    """An MQTT client of a plaintext broker, logging in with user name and password
    (client id: `client_id`, else the user name); `version` 4 is MQTT 3.1.1, 5 is MQTT 5.

    mode "publish": connect, subscribe to `subscribe` (when given; a refusal is an
    error), then publish `n` messages (0: until stopped) of `size` bytes at
    `rate_per_s`, cycling through `topics` (default sensors/USERNAME/data), at `qos` 0
    or 1 (1: each waits for its PUBACK); reconnects after a failure. A flood is a high
    rate over several topics of one tree, a size spike a few messages of a large size.
    `count_file` counts the messages published (QoS 1: acknowledged).

    mode "auth-storm": `n` rounds (0: until stopped) at `rate_per_s`, each a new
    connection: CONNECT with `password`; when accepted, SUBSCRIBE to `subscribe` and
    PUBLISH to each of `topics` at `qos`, then DISCONNECT. `count_file` counts the
    refusals the broker answered: a CONNACK refusal, and failure codes (0x80 and up) in a
    SUBACK or (MQTT 5, QoS 1) a PUBACK. An MQTT 3.1.1 broker such as mosquitto refuses
    a forbidden PUBLISH or SUBSCRIBE silently (it drops it, or grants and never
    delivers): only MQTT 5 shows those refusals on the wire."""
    if mode not in ("publish", "auth-storm"):
        raise ValueError(f"mode must be 'publish' or 'auth-storm', got {mode!r}")
    if qos not in (0, 1):
        raise ValueError(f"qos must be 0 or 1, got {qos!r}")
    if version not in (4, 5):
        raise ValueError(f"version must be 4 (MQTT 3.1.1) or 5 (MQTT 5), got {version!r}")
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be above 0, got {rate_per_s!r}")
    mqtt = _Mqtt(host, port, version, client_id or username, username, password, rate_per_s)
    queue = topics or [f"sensors/{username}/data"]
    if mode == "auth-storm":
        _auth_storm(mqtt, queue, subscribe, qos, n, count_file)
        return
    body = (b"rig-sensor " * (size // 11 + 1))[:size]
    done = 0
    conn: socket.socket | None = None
    for _ in _rounds(1 / rate_per_s):
        if n and done >= n:
            break
        try:
            if conn is None:
                conn = mqtt.session()
                if subscribe is not None and mqtt.subscribe(conn, subscribe) >= 0x80:
                    raise ValueError(f"broker refused {mqtt.cid} the subscription to {subscribe}")
            _drain(conn)
            code = mqtt.publish(conn, queue[done % len(queue)], body, qos)
            if code >= 0x80:
                raise ValueError(f"broker refused {mqtt.cid} a PUBLISH: reason {code:#x}")
        except (OSError, ValueError) as e:
            _error(f"mqtt {mqtt.cid}@{host}:{port}: {e}", retried=True)
            if conn is not None:
                conn.close()
            conn = None
            continue
        done += 1
        _write_count(count_file, done)
    if conn is not None:
        with contextlib.suppress(OSError):
            conn.sendall(b"\xe0\x00")  # DISCONNECT
        conn.close()


def _auth_storm(
    mqtt: _Mqtt,
    topics: list[str],
    subscribe: str | None,
    qos: int,
    n: int,
    count_file: str | None,
) -> None:
    refused = 0
    rounds = 0
    for _ in _rounds(1 / mqtt.rate_per_s):
        if n and rounds >= n:
            break
        rounds += 1
        try:
            with socket.create_connection((mqtt.host, mqtt.port), timeout=TIMEOUT_S) as conn:
                if mqtt.connect(conn) != 0:
                    refused += 1
                else:
                    if subscribe is not None:
                        refused += mqtt.subscribe(conn, subscribe) >= 0x80
                    for topic in topics:
                        refused += mqtt.publish(conn, topic, b"x", qos) >= 0x80
                    conn.sendall(b"\xe0\x00")  # DISCONNECT
        except (OSError, ValueError) as e:
            _error(f"mqtt {mqtt.host}:{mqtt.port}: {e}", retried=True)
            continue
        _write_count(count_file, refused)


class _Mqtt:
    """The packets of one client, in MQTT 3.1.1 (version 4) or MQTT 5 (5: a properties
    length after each variable header, always 0 here)."""

    def __init__(
        self,
        host: str,
        port: int,
        version: int,
        cid: str,
        username: str,
        password: str,
        rate_per_s: float,
    ) -> None:
        self.host, self.port, self.version, self.cid = host, port, version, cid
        self.rate_per_s = rate_per_s
        self.props = b"\x00" if version == 5 else b""
        self.packet_id = 0
        keep_alive_s = max(60, int(3 / rate_per_s) + 1)
        flags = 0xC2  # user name, password, clean session (start)
        self.connect_packet = _mqtt_packet(
            0x10,
            _mqtt_string("MQTT")
            + bytes([version, flags])
            + struct.pack("!H", keep_alive_s)
            + self.props,
            _mqtt_string(cid) + _mqtt_string(username) + _mqtt_string(password),
        )

    def _next_id(self) -> int:
        self.packet_id = self.packet_id % 0xFFFF + 1
        return self.packet_id

    def connect(self, conn: socket.socket) -> int:
        """CONNECT; the CONNACK's return (3.1.1) or reason (5) code: 0 is accepted."""
        conn.sendall(self.connect_packet)
        kind, body = _mqtt_read(conn)
        if kind != 0x20 or len(body) < 2:
            raise ValueError(f"no CONNACK from {self.host}:{self.port}")
        return body[1]

    def session(self) -> socket.socket:
        conn = socket.create_connection((self.host, self.port), timeout=TIMEOUT_S)
        try:
            code = self.connect(conn)
            if code != 0:
                raise ValueError(f"broker refused CONNECT of {self.cid}: code {code:#x}")
        except BaseException:
            conn.close()
            raise
        return conn

    def subscribe(self, conn: socket.socket, topic_filter: str) -> int:
        """SUBSCRIBE at QoS 0; the SUBACK's code (0x80 and up: refused)."""
        pid = self._next_id()
        body = struct.pack("!H", pid) + self.props + _mqtt_string(topic_filter) + b"\x00"
        conn.sendall(_mqtt_packet(0x82, b"", body))
        return _mqtt_await(conn, 0x90, pid)[-1]

    def publish(self, conn: socket.socket, topic: str, payload: bytes, qos: int) -> int:
        """PUBLISH; at QoS 1 the PUBACK's reason code (0 when it has none), else 0."""
        if qos == 0:
            conn.sendall(_mqtt_packet(0x30, _mqtt_string(topic) + self.props, payload))
            return 0
        pid = self._next_id()
        header = _mqtt_string(topic) + struct.pack("!H", pid) + self.props
        conn.sendall(_mqtt_packet(0x32, header, payload))
        ack = _mqtt_await(conn, 0x40, pid)
        return ack[2] if len(ack) > 2 else 0


def _mqtt_await(conn: socket.socket, kind: int, packet_id: int) -> bytes:
    """The body of the next packet of `kind` for `packet_id`; what comes before it (the
    messages of a subscription) is read and dropped."""
    while True:
        got, body = _mqtt_read(conn)
        if got == kind and body[:2] == struct.pack("!H", packet_id):
            return body


def _drain(conn: socket.socket) -> None:
    """Read and drop what the broker sent (a subscription's messages) without waiting."""
    while select.select([conn], [], [], 0)[0]:
        _mqtt_read(conn)


def _mqtt_read(conn: socket.socket) -> tuple[int, bytes]:
    """One MQTT packet: (type nibble << 4, body)."""
    first = _read_exactly(conn, 1)[0]
    length = 0
    for shift in range(0, 28, 7):
        digit = _read_exactly(conn, 1)[0]
        length |= (digit & 0x7F) << shift
        if not digit & 0x80:
            break
    return first & 0xF0, _read_exactly(conn, length)


# -- scans -----------------------------------------------------------------------------


def _ports(spec: str) -> list[int]:
    """'22,80,8000-8010' -> the ports, in that order."""
    found: list[int] = []
    for part in spec.split(","):
        low, _, high = part.strip().partition("-")
        try:
            a, b = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"ports: {part!r} is not a port or a range low-high") from None
        if not 1 <= a <= b <= 65535:
            raise ValueError(f"ports: {part!r} is not a port or a range low-high in 1-65535")
        found.extend(range(a, b + 1))
    return found


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _syn(src: str, dst: str, sport: int, dport: int, seq: int) -> bytes:
    """A TCP SYN segment (no options) with its checksum over the IPv4 pseudo-header."""
    segment = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
    return segment[:16] + struct.pack("!H", _checksum(pseudo + segment)) + segment[18:]


def syn_scan(
    host: str, ports: str, rate_per_s: float = 20.0, count_file: str | None = None
) -> None:
    """A half-open scan: one crafted SYN (raw socket, needs CAP_NET_RAW) to each port
    of `ports` at `rate_per_s`, from one source port, then finish. The target answers
    SYN-ACK (open) or RST (closed); this host's kernel, knowing no such connection,
    resets the SYN-ACKs. `count_file` counts the ports that answered."""
    targets = _ports(ports)
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be above 0, got {rate_per_s!r}")
    host = socket.gethostbyname(host)  # replies are matched by address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, 9))  # no packet: only the route's source address
        src = probe.getsockname()[0]
    sport = 40000 + os.getpid() % 20000
    seq = int.from_bytes(os.urandom(4), "big")
    answered: set[int] = set()
    wanted = set(targets)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw:
        raw.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(raw, selectors.EVENT_READ)

        def collect(until: float) -> None:
            while answered != wanted and (left := until - time.monotonic()) > 0:
                if not sel.select(left):
                    break
                while True:
                    try:
                        packet, (peer, _) = raw.recvfrom(65535)
                    except BlockingIOError:
                        break
                    ihl = (packet[0] & 0x0F) * 4
                    tsport, tdport = struct.unpack("!HH", packet[ihl : ihl + 4])
                    if peer == host and tdport == sport and tsport in wanted:
                        answered.add(tsport)
                        _write_count(count_file, len(answered))

        start = time.monotonic()
        for k, port in enumerate(targets):
            raw.sendto(_syn(src, host, sport, port, seq), (host, 0))
            collect(start + (k + 1) / rate_per_s)
        collect(time.monotonic() + TIMEOUT_S if answered != wanted else 0)
    _write_count(count_file, len(answered))


def connect_scan(
    host: str, ports: str, rate_per_s: float = 20.0, count_file: str | None = None
) -> None:
    """A connect scan: a full TCP connection to each port of `ports` at `rate_per_s`,
    closed at once, then finish. `count_file` counts the ports that answered (accepted
    or refused)."""
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be above 0, got {rate_per_s!r}")
    answered = 0
    for port, _ in zip(_ports(ports), _rounds(1 / rate_per_s), strict=False):
        try:
            socket.create_connection((host, port), timeout=TIMEOUT_S).close()
        except (ConnectionRefusedError, ConnectionResetError):
            pass
        except OSError as e:  # no answer: filtered
            _error(f"connect {host}:{port}: {e}")
            continue
        answered += 1
        _write_count(count_file, answered)
    _write_count(count_file, answered)


def slow_scan(host: str, ports: str, method: str = "syn", count_file: str | None = None) -> None:
    """A scan at one probe a second (below a rate threshold): `method` "syn" or
    "connect", as syn_scan and connect_scan."""
    scans = {"syn": syn_scan, "connect": connect_scan}
    if method not in scans:
        raise ValueError(f"method must be 'syn' or 'connect', got {method!r}")
    scans[method](host, ports, rate_per_s=1.0, count_file=count_file)


KINDS: dict[str, Callable[..., None]] = {
    "listen": listen,
    "sink": sink,
    "dns-server": dns_server,
    "http-server": http_server,
    "ntp-server": ntp_server,
    "sshd": sshd,
    "connect": connect,
    "connect-probe": connect_probe,
    "beacon": beacon,
    "flood": flood,
    "exfil": exfil,
    "spawn": spawn,
    "dns": dns_query,
    "http": http_client,
    "ntp": ntp_client,
    "ssh": ssh_client,
    "mqtt": mqtt_telemetry,
    "mqtt-client": mqtt_client,
    "syn-scan": syn_scan,
    "connect-scan": connect_scan,
    "slow-scan": slow_scan,
}


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)  # unwinds through the finally blocks: children and sockets go


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in KINDS:
        print(f"usage: python3 - KIND JSON_PARAMS; KIND one of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    try:
        KINDS[argv[1]](**json.loads(argv[2]))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line on stderr, not a traceback
        _error(f"{type(e).__name__}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
