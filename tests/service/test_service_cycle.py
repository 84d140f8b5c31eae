"""The daemon's cycle as a pure step: samples and times fed by hand, no store, no
broker. What it returns is what the daemon stores and sends."""

from __future__ import annotations

from typing import Any

from agent.core.evaluator import Detector
from agent.core.judge import Judge
from agent.core.metrics import metrics_from_report
from agent.core.profile import parse_profile
from agent.core.sample import Connection, CustomMetric, ListeningPort, NetworkStats, Sample
from agent.service.cycle import Cycle

PROFILE = {
    "securityProfileName": "edge",
    "behaviors": [
        {
            "name": "only-known-peers",
            "metric": "aws:destination-ip-addresses",
            "criteria": {"comparisonOperator": "in-cidr-set", "value": {"cidrs": ["192.0.2.0/24"]}},
        },
        {
            "name": "no-backdoor",
            "metric": "aws:listening-tcp-ports",
            "criteria": {"comparisonOperator": "not-in-port-set", "value": {"ports": [31337]}},
        },
        {
            "name": "bytes-out",
            "metric": "aws:all-bytes-out",
            "criteria": {
                "comparisonOperator": "less-than",
                "value": {"count": 1000},
                "durationSeconds": 60,
            },
        },
    ],
}


def make_cycle(max_list: int = 100, counters: dict[str, Any] | None = None) -> Cycle:
    ids = iter(f"v{i}" for i in range(1000))
    judge = Judge(
        [parse_profile(PROFILE, "test")],
        "pi-1",
        lambda thing, profiles, unsourced: Detector(profiles, thing, id_factory=lambda: next(ids)),
        {},
        clients=False,
    )
    return Cycle(judge, max_list=max_list, short_names=False, counters=counters)


def busy_sample() -> Sample:
    conns = [Connection("192.0.2.7", 1000 + i, 22) for i in range(150)]
    conns.append(Connection("203.0.113.66", 4444, 40001))  # the 151st goes to C2
    ports = [ListeningPort(p) for p in range(2000, 2101)] + [ListeningPort(31337)]
    return Sample(tcp_ports=ports, connections=conns)


def test_the_whole_sample_is_judged_not_the_report_cut_for_the_wire() -> None:
    cycle = make_cycle(max_list=100)
    step = cycle.observe(1000.0, busy_sample())
    fired = {(e.behavior["name"], e.violation_event_type.value) for e in step.events}
    assert fired == {("only-known-peers", "in-alarm"), ("no-backdoor", "in-alarm")}
    c2 = next(e for e in step.events if e.behavior["name"] == "only-known-peers")
    assert "203.0.113.66" in c2.metric_value["cidrs"]
    # The wire report is cut; its totals stay exact.
    wire = cycle.report(1001.0).doc
    ec = wire["metrics"]["tcp_connections"]["established_connections"]
    assert (len(ec["connections"]), ec["total"]) == (100, 151)


def test_the_history_record_is_the_uncut_sample_and_replays_the_same() -> None:
    cycle = make_cycle(max_list=10)
    step = cycle.observe(1000.0, busy_sample())
    assert step.metrics is not None
    timestamp, record, clients = step.metrics
    assert (timestamp, clients) == (1000.0, None)
    replayed = make_cycle().detector.observe(timestamp, metrics_from_report(record))
    assert [(e.behavior["name"], e.violation_event_type) for e in replayed] == [
        (e.behavior["name"], e.violation_event_type) for e in step.events
    ]


def test_network_deltas_add_up_until_a_report_and_windows_close_on_tick() -> None:
    cycle = make_cycle()
    for t in (1000.0, 1010.0):
        assert cycle.observe(t, Sample(network_stats=NetworkStats(1, 600, 1, 2))).events == ()
    assert cycle.next_deadline() == 1020.0  # the window [960, 1020) ends
    assert cycle.tick(1019.0).events == ()
    closed = cycle.tick(1020.5).events
    assert [(e.behavior["name"], e.violation_event_type.value) for e in closed] == [
        ("bytes-out", "in-alarm")
    ]  # 600 + 600 in [960, 1020): 1200 >= 1000
    cycle.observe(1030.0, Sample(network_stats=NetworkStats(1, 600, 1, 2)))
    stats = cycle.report(1031.0).doc["metrics"]["network_stats"]
    assert stats == {"bytes_in": 3, "bytes_out": 1800, "packets_in": 3, "packets_out": 6}
    zero = cycle.report(1032.0).doc["metrics"]["network_stats"]
    assert zero["bytes_out"] == 0


def test_the_clock_never_goes_back_and_report_ids_keep_rising() -> None:
    cycle = make_cycle()
    cycle.observe(2000.0, Sample())
    first = cycle.report(2001.0).doc["header"]["report_id"]
    step = cycle.observe(1500.0, Sample())  # wall clock stepped back
    assert step.metrics is not None and step.metrics[0] == 2001.0
    assert cycle.report(1501.0).doc["header"]["report_id"] > first


def test_counters_carry_over_a_restart() -> None:
    cycle = make_cycle()
    cycle.observe(3000.0, Sample(network_stats=NetworkStats(5, 6, 7, 8)))
    last_id = cycle.report_ids.last
    again = make_cycle(counters=cycle.counters())
    assert again.now == 3000.0
    assert again.report_ids.next(0.0) == last_id + 1
    again.observe(3010.0, Sample(network_stats=NetworkStats(1, 1, 1, 1)))
    assert again.report(3011.0).doc["metrics"]["network_stats"]["bytes_in"] == 6


def test_a_custom_metric_too_large_for_the_wire_is_still_judged() -> None:
    cycle = make_cycle()
    huge = CustomMetric("ssids", "string-list", [f"net-{i:05d}" for i in range(20000)])
    step = cycle.observe(4000.0, Sample(custom=[huge]))
    assert step.metrics is not None and "ssids" in step.metrics[1]["custom_metrics"]
    wire = cycle.report(4001.0)
    assert wire.omitted == ("ssids",)
