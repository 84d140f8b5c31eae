"""Delivery rules driven by hand, without a broker: the in-flight window, connection
epochs, what a PUBACK or a failure means, and the reconnect backoff."""

from __future__ import annotations

import random

from agent.publish.delivery import Backoff, Delivery, Verdict, is_aws_endpoint


def test_nothing_is_sent_while_disconnected() -> None:
    d = Delivery(max_in_flight=3)
    assert d.choose([1, 2, 3]) == []
    d.on_connected()
    assert d.choose([1, 2, 3]) == [1, 2, 3]


def test_the_window_holds_at_most_max_in_flight_in_spool_order() -> None:
    d = Delivery(max_in_flight=3)
    d.on_connected()
    assert d.choose(list(range(1, 8))) == [1, 2, 3]
    assert d.wanted() == 6  # enough of the head to find 3 not yet in flight
    assert d.choose(list(range(1, 8))) == []  # full
    assert d.on_done(2, d.epoch, 0x00, None).verdict is Verdict.ACK
    assert d.choose([1, 3, 4, 5]) == [4]  # one slot, the oldest not in flight
    assert d.delivered == 1


def test_a_disconnect_forgets_the_window_and_failures_of_the_old_epoch_are_stale() -> None:
    d = Delivery(max_in_flight=2)
    d.on_connected()
    old = d.epoch
    assert d.choose([1, 2]) == [1, 2]
    d.on_disconnected()
    assert d.in_flight == set()
    # The client fails what was in flight: already due again, nothing to do.
    assert (
        d.on_done(
            1, old, None, "AWS_ERROR_MQTT5_OPERATION_FAILED_DUE_TO_OFFLINE_QUEUE_POLICY"
        ).verdict
        is Verdict.STALE
    )
    d.on_connected()
    assert d.choose([1, 2]) == [1, 2]  # sent again, in order
    # A PUBACK from the old connection still counts as delivered.
    assert d.on_done(1, old, 0x00, None).verdict is Verdict.ACK
    assert d.in_flight == {1, 2}  # the new connection's copy stays in flight


def test_what_can_never_be_sent_is_quarantined_and_frees_its_slot() -> None:
    d = Delivery(max_in_flight=1)
    d.on_connected()
    assert d.choose([1, 2]) == [1]
    refused = d.on_done(1, d.epoch, 0x97, None)  # quota exceeded
    assert refused.verdict is Verdict.QUARANTINE and "0x97" in refused.reason
    assert d.choose([2]) == [2]
    bad = d.on_done(2, d.epoch, None, "AWS_ERROR_MQTT5_PACKET_VALIDATION")
    assert bad.verdict is Verdict.QUARANTINE
    assert d.choose([3]) == [3]
    assert d.refused(3, "bad topic").verdict is Verdict.QUARANTINE
    assert d.in_flight == set()


def test_a_transient_failure_is_retried() -> None:
    d = Delivery(max_in_flight=1)
    d.on_connected()
    d.choose([5])
    outcome = d.on_done(5, d.epoch, None, "AWS_ERROR_MQTT5_OPERATION_PROCESSING_FAILURE")
    assert outcome.verdict is Verdict.RETRY
    assert d.choose([5]) == [5]


def test_backoff_is_jittered_and_capped() -> None:
    rng = random.Random(7)
    b = Backoff(rng.random, min_s=1.0, max_s=60.0, stable_s=30.0)
    delays = [b.next_attempt(1000.0) - 1000.0 for _ in range(40)]
    assert delays[0] == 1.0  # the first retry comes at once
    assert all(1.0 <= d <= 60.0 for d in delays)
    late = delays[10:]
    assert len({round(d, 2) for d in late}) == len(late)  # no lock step
    assert min(late) < 30.0 < max(late)  # spread over the whole range


def test_backoff_starts_over_after_a_stable_connection_only() -> None:
    b = Backoff(lambda: 0.999, min_s=1.0, max_s=60.0, stable_s=30.0)
    for _ in range(10):
        b.next_attempt(0.0)
    b.connected(100.0)
    assert b.next_attempt(110.0) - 110.0 > 50.0  # lasted 10 s: still backing off
    b.connected(200.0)
    assert b.next_attempt(240.0) - 240.0 < 1.01  # lasted 40 s: from the start


def test_a_flapping_broker_is_reached_in_most_up_phases() -> None:
    # Broker up 30 s, down 30 s. Attempts spread by jitter land in up phases often;
    # attempts in lock step 60 s apart hit the same phase forever.
    rng = random.Random(1)
    b = Backoff(rng.random)
    t, connections = 30.0, 0  # first attempt at the start of a down phase
    while t < 19 * 60:
        if int(t // 30) % 2 == 0:  # up
            connections += 1
            b.connected(t)
            t = (t // 60) * 60 + 30  # dropped when the broker goes down
        t = b.next_attempt(t)
    assert connections >= 8


def test_aws_endpoints() -> None:
    assert is_aws_endpoint("abc-ats.iot.eu-west-1.amazonaws.com")
    assert is_aws_endpoint("abc.iot.cn-north-1.amazonaws.com.cn.")
    assert not is_aws_endpoint("broker.example.net")
