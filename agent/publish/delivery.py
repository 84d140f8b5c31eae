"""Delivery of spooled messages over MQTT: which to send, what a PUBACK or a failure
means for a message, and when to try connecting again. Pure: no clock, socket or
randomness of its own. The outbox (agent.service.outbox) feeds it the transport's
news and the spool's head and carries out what it answers; tests drive it by hand.

Delivery is at least once. A message is spooled before it is sent and deleted when
its PUBACK arrives; at most `max_in_flight` are unacknowledged at a time, sent in
spool (id) order. Every connection has an epoch: on a disconnect everything in flight
is forgotten and sent again, in id order, on the next connection, and a failure
reported for an older epoch is stale. A message whose PUBACK was lost in an outage
thus arrives twice, which QoS 1 allows; the report id tells a consumer. A message
that can never be sent (the broker refused it, the client rejects the packet) is
quarantined: kept aside and counted, never blocking the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

MAX_IN_FLIGHT = 10
AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn")
# The client refused the packet once connected (larger than the broker allows, a bad
# topic or string): sending it again can never work.
UNSENDABLE_ERRORS = frozenset(
    {
        "AWS_ERROR_MQTT5_PUBLISH_OPTIONS_VALIDATION",
        "AWS_ERROR_MQTT5_PACKET_VALIDATION",
        "AWS_ERROR_MQTT5_INVALID_UTF8_STRING",
    }
)
_PUBACK_FAILURE = 0x80  # MQTT 5 reason codes below this are successes


def is_aws_endpoint(endpoint: str) -> bool:
    return endpoint.lower().rstrip(".").endswith(AWS_DOMAINS)


class Verdict(StrEnum):
    ACK = "ack"  # delivered: delete it from the spool
    QUARANTINE = "quarantine"  # can never be sent: keep it aside, count it
    RETRY = "retry"  # send it again when there is room
    STALE = "stale"  # news from an older connection: already due again


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reason: str = ""


class Delivery:
    """The in-flight window over the current connection."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.max_in_flight = max_in_flight
        self.connected = False
        self.epoch = 0
        self.in_flight: set[int] = set()
        self.delivered = 0

    def on_connected(self) -> None:
        self.connected = True

    def on_disconnected(self) -> None:
        self.connected = False
        self.epoch += 1
        self.in_flight.clear()

    def wanted(self) -> int:
        """How many of the spool's oldest messages `choose` needs to see."""
        return self.max_in_flight + len(self.in_flight)

    def choose(self, oldest_ids: Sequence[int]) -> list[int]:
        """Of the spool's oldest message ids (ascending), those to send now; they count
        as in flight from here on."""
        if not self.connected:
            return []
        room = self.max_in_flight - len(self.in_flight)
        chosen = [i for i in oldest_ids if i not in self.in_flight][: max(room, 0)]
        self.in_flight.update(chosen)
        return chosen

    def refused(self, item_id: int, reason: str) -> Outcome:
        """The client refused to send it at all (a bad topic, say)."""
        self.in_flight.discard(item_id)
        return Outcome(Verdict.QUARANTINE, f"client refused it: {reason}")

    def on_done(self, item_id: int, epoch: int, puback: int | None, error: str | None) -> Outcome:
        """A publish finished: with a PUBACK reason code, or without one (`error` says
        why the client failed it)."""
        if puback is not None:
            if epoch == self.epoch:
                self.in_flight.discard(item_id)
            if puback < _PUBACK_FAILURE:  # "no matching subscribers" is a success too
                self.delivered += 1
                return Outcome(Verdict.ACK)
            return Outcome(Verdict.QUARANTINE, f"broker refused it: reason code {puback:#04x}")
        if epoch != self.epoch:
            return Outcome(Verdict.STALE)
        self.in_flight.discard(item_id)
        if error in UNSENDABLE_ERRORS:
            return Outcome(Verdict.QUARANTINE, f"client refused it: {error}")
        return Outcome(Verdict.RETRY, error or "failed")


class Backoff:
    """When to try connecting again: exponential backoff with full jitter (a uniform
    draw up to a cap that doubles per failure), so that many devices, or one device
    and a flapping broker, never fall into lock step. The cap starts again from
    `min_s` once a connection has lasted `stable_s`."""

    def __init__(
        self,
        rand: Callable[[], float],
        *,
        min_s: float = 1.0,
        max_s: float = 60.0,
        stable_s: float = 30.0,
    ) -> None:
        self._rand = rand  # uniform in [0, 1)
        self.min_s = min_s
        self.max_s = max_s
        self.stable_s = stable_s
        self.failures = 0
        self._connected_at: float | None = None

    def connected(self, now: float) -> None:
        self._connected_at = now

    def next_attempt(self, now: float) -> float:
        """The connection failed or was lost at `now`: when to try again."""
        if self._connected_at is not None and now - self._connected_at >= self.stable_s:
            self.failures = 0
        self._connected_at = None
        cap = min(self.max_s, self.min_s * 2.0**self.failures)
        self.failures = min(self.failures + 1, 32)
        return now + self.min_s + self._rand() * (cap - self.min_s)
