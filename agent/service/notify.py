"""The sd_notify protocol (man sd_notify): tell systemd the daemon is ready, alive,
reloading or stopping, over the datagram socket named in $NOTIFY_SOCKET. Outside
systemd every call is a no-op; a failed send is logged once and never raised, so the
daemon never stops because its supervisor went away."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from agent.logs import kv

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = _watchdog_interval(env)
        self._send_failed = False

    def ready(self) -> None:
        self._send("READY=1")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def status(self, text: str) -> None:
        # One assignment per line in the protocol: a newline would end the status.
        self._send("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this to the request.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog_interval_s(self) -> float | None:
        """Seconds within which watchdog() must be called, when systemd watches this process."""
        return self._watchdog_s

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as e:
            if not self._send_failed:
                self._send_failed = True
                log.warning(kv("notify_send_failed", error=e.strerror or e))


def _socket_address(value: str) -> str | None:
    if value.startswith("/"):
        return value
    if value.startswith("@"):
        return "\0" + value[1:]  # the abstract namespace
    if value:
        log.warning(kv("notify_socket_unsupported", notify_socket=value))
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    # WATCHDOG_PID names the process systemd watches; a child that inherited it is not it.
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return usec / 1_000_000
