"""Packet capture for the sampler: a thread reads what the kernel filter passes and
feeds the capture features (port scans, DNS, connections opened, the gateway's broker);
each cycle the sampler takes their values as metrics. Imported only when [capture] is on.

A feature's values are left out of the sample while capture cannot run (no
CAP_NET_RAW, an interface that is gone): a blind agent must not report "no scanner"."""

from __future__ import annotations

import logging
import select
import threading
from collections import Counter

from agent.collect.capture import CaptureError, PacketReader
from agent.config import CaptureConfig
from agent.core.broker_watch import BrokerWatch
from agent.core.broker_watch import matches as broker_matches
from agent.core.dns import MATCHES as DNS_MATCHES
from agent.core.dns import DnsWatch
from agent.core.outbound import MATCHES as OUTBOUND_MATCHES
from agent.core.outbound import OutboundWatch
from agent.core.packet import TCP, UDP, Frame, Match
from agent.core.sample import CustomMetric
from agent.core.scan import MATCHES as SCAN_MATCHES
from agent.core.scan import ScanDetector
from agent.logs import kv

log = logging.getLogger(__name__)

POLL_S = 0.5  # the reader thread looks for a stop this often
RETRY_S = 30.0  # a reader that failed is opened again this far apart
# Enough for an MQTT fixed header, a topic and MQTT 5 properties, and for a DNS query;
# payloads beyond it are counted from the IP length, never read.
SNAPLEN = 512
Clients = dict[str, dict[str, object]]


class Sniffer:
    def __init__(self, cfg: CaptureConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()  # the features, between the thread and collect()
        self._stop = threading.Event()
        self.scan = ScanDetector(hold_s=cfg.scan.hold_s) if cfg.scan.enabled else None
        self.dns = DnsWatch() if cfg.dns.enabled else None
        self.connections = OutboundWatch() if cfg.connections.enabled else None
        self.broker = BrokerWatch(cfg.broker.ports) if cfg.broker.enabled else None
        self._broker_ports = frozenset(cfg.broker.ports) if self.broker else frozenset()
        clauses: list[Match] = []
        if self.scan is not None:
            clauses += SCAN_MATCHES
        if self.dns is not None:
            clauses += DNS_MATCHES
        if self.connections is not None:
            clauses += OUTBOUND_MATCHES
        if self.broker is not None:
            clauses += broker_matches(cfg.broker.ports)
        self._matches = clauses
        self.errors: Counter[str] = Counter()  # feature failures, by feature
        self.problem: str | None = "not started"
        self._reader: PacketReader | None = None
        self._packets = self._drops = 0  # of readers closed after a failure
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        if self._matches:
            self._open()
            self._thread.start()
        else:
            self.problem = "every capture feature is off"

    @property
    def features(self) -> list[str]:
        names = (
            ("scan", self.scan),
            ("dns", self.dns),
            ("connections", self.connections),
            ("broker", self.broker),
        )
        return [name for name, feature in names if feature is not None]

    def _open(self) -> bool:
        try:
            self._reader = PacketReader(
                self._matches, interfaces=self.cfg.interfaces, snaplen=SNAPLEN
            )
        except CaptureError as e:
            if self.problem != str(e):
                log.error(kv("capture_unavailable", error=e, retry_s=RETRY_S))
            self.problem = str(e)
            return False
        if self.problem not in (None, "not started"):
            log.info(kv("capture_recovered"))
        self.problem = None
        log.info(kv("capture_started", features=",".join(self.features)))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            reader = self._reader
            if reader is None:
                if self._stop.wait(RETRY_S) or not self._open():
                    continue
                reader = self._reader
                assert reader is not None
            try:
                ready, _, _ = select.select([reader], [], [], POLL_S)
                if ready:
                    with self._lock:
                        reader.read(self._feed, 0.0)
            except (OSError, CaptureError) as e:
                self._fail(reader, str(e))

    def _fail(self, reader: PacketReader, problem: str) -> None:
        log.error(kv("capture_failed", error=problem, retry_s=RETRY_S))
        with self._lock:
            stats = reader.stats()
            self._packets += stats.packets
            self._drops += stats.drops
            reader.close()
            self._reader = None
            self.problem = problem

    def _feed(self, f: Frame) -> None:
        """One frame to the features that want it. A feature that fails is counted and
        logged once per kind of failure; the others go on."""
        try:
            if f.proto == UDP:
                if self.dns is not None:
                    self.dns.feed(f)
                return
            if f.proto != TCP:
                return
            if self.broker is not None and (
                f.sport in self._broker_ports or f.dport in self._broker_ports
            ):
                self.broker.feed(f)
            if self.scan is not None:
                self.scan.feed(f)
            if self.connections is not None:
                self.connections.feed(f)
        except Exception as e:  # a bug in a feature must not blind the others
            kind = type(e).__name__
            if not self.errors[kind]:
                log.exception(kv("capture_feature_failed", error=kind))
            self.errors[kind] += 1

    def collect(self, now: float) -> tuple[list[CustomMetric], Clients | None]:
        """The features' values since the last call, as custom metrics of the device and
        the broker's clients' metrics; nothing while capture is not running."""
        with self._lock:
            if self.problem is not None:
                return [], None
            custom: list[CustomMetric] = []
            if self.scan is not None:
                sources = self.scan.scanners(now)
                custom.append(
                    CustomMetric(self.cfg.scan.sources_metric, "ip-address-list", sources)
                )
                custom.append(CustomMetric(self.cfg.scan.count_metric, "number", len(sources)))
            if self.dns is not None:
                names, resolvers = self.dns.take()
                custom.append(CustomMetric(self.cfg.dns.names_metric, "string-list", names))
                custom.append(
                    CustomMetric(self.cfg.dns.resolvers_metric, "ip-address-list", resolvers)
                )
            if self.connections is not None:
                connections = self.cfg.connections
                opened = self.connections.take()
                custom.append(CustomMetric(connections.count_metric, "number", opened))
                periodic, addresses = self.connections.periodic(now)
                custom.append(
                    CustomMetric(connections.periodic_metric, "ip-address-list", addresses)
                )
                custom.append(CustomMetric(connections.periodic_count_metric, "number", periodic))
            clients = self.broker.take(now) if self.broker is not None else None
        return custom, clients

    def status(self) -> tuple[int, int, dict[str, int]]:
        """(packets, kernel drops, the features' counters) since the start."""
        with self._lock:
            packets, drops = self._packets, self._drops
            if self._reader is not None:
                stats = self._reader.stats()
                packets += stats.packets
                drops += stats.drops
            counts: dict[str, int] = {}
            if self.scan is not None:
                counts.update({f"scan_{k}": v for k, v in self.scan.stats().items()})
            if self.connections is not None:
                counts.update({f"connections_{k}": v for k, v in self.connections.stats().items()})
            if self.broker is not None:
                counts.update({f"broker_{k}": v for k, v in self.broker.stats().items()})
            counts.update({f"feature_errors_{k}": v for k, v in self.errors.items()})
        return packets, drops, counts

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * POLL_S + 1)
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
