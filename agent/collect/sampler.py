"""One collection cycle: sockets, network stats, custom metrics and, with [capture]
on, what packet capture saw, into a Sample."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent.collect.custom import CustomMetrics
from agent.collect.interfaces import AddressMap
from agent.collect.netstats import NetStats
from agent.collect.sockets import SocketReader, SocketSnapshot
from agent.config import Config
from agent.core.sample import NetworkStats, Sample
from agent.logs import kv

if TYPE_CHECKING:
    from agent.collect.sniffer import Sniffer

log = logging.getLogger(__name__)


class Sampler:
    """`sample()` once per cycle. `counters_path` keeps the network counters across
    restarts (the daemon passes state_dir/"netcounters.json"); None keeps them in memory,
    so the first sample has no network_stats. A part that cannot be read is logged and
    left as None in the sample; the cycle goes on."""

    def __init__(
        self,
        cfg: Config,
        *,
        counters_path: Path | None,
        proc_root: Path = Path("/proc"),
        sys_root: Path = Path("/sys"),
    ) -> None:
        self._sockets = SocketReader(cfg.sampling.socket_source, proc_root)
        self._netstats = NetStats(
            cfg.sampling, state_path=counters_path, proc_root=proc_root, sys_root=sys_root
        )
        self._custom = CustomMetrics(cfg.custom_metrics, sys_root)
        self.sniffer: Sniffer | None = None
        if cfg.capture.enabled:
            from agent.collect.sniffer import Sniffer  # the capture parts only when on

            self.sniffer = Sniffer(cfg.capture)

    def sample(self) -> Sample:
        sockets = self._read_sockets()
        stats = self._read_netstats()
        custom = self._custom.collect()
        clients = None
        if self.sniffer is not None:
            captured, clients = self.sniffer.collect(time.time())
            custom += captured
        if sockets is None:
            return Sample(network_stats=stats, custom=custom, clients=clients)
        return Sample(
            sockets.tcp_ports, sockets.udp_ports, sockets.connections, stats, custom, clients
        )

    def close(self) -> None:
        """Stop the capture thread, when there is one."""
        if self.sniffer is not None:
            self.sniffer.close()

    def _read_sockets(self) -> SocketSnapshot | None:
        try:
            # Interface addresses once per cycle, for every socket of it.
            return self._sockets.read(AddressMap.current())
        except (OSError, ValueError) as e:
            log.warning(kv("sockets_unreadable", source=self._sockets.source, error=e))
            return None

    def _read_netstats(self) -> NetworkStats | None:
        try:
            return self._netstats.sample()
        except (OSError, ValueError) as e:
            log.warning(kv("netstats_unreadable", error=e))
            return None
