"""On-device mitigation in the kernel: the agent's own nftables table, driven through
`nft -j -f -` with JSON commands (never rule strings), one atomic transaction per call.

Blocks live in sets whose elements carry a kernel timeout, so they expire on time even
when the agent has stopped or crashed, and they survive agent restarts: `ensure()` adds
what is missing and rewrites the rules, never the blocked sets. Only `remove()`
(uninstall-service) deletes the table.

    table inet edge_defender
      sets  allow_v4/v6 (the allowlist), blocked_v4/v6 (addresses and CIDRs),
            blocked_ports (proto . port), keep_v4/v6 + isolated (isolation)
      chains input / output / forward, priority filter - 10, policy accept:
        loopback -> accept; allowlist -> accept; blocked -> drop; blocked port
        (input) -> drop; kept -> accept; NDP, DHCP client -> accept; isolated -> drop

Isolation is an element of `isolated` (the families ipv4 and ipv6, with a timeout): while
it is there, everything but the allowlist and the kept addresses is dropped, in and out,
established flows included. Our drops are final; our accepts only end our chain, so
other firewalls on the device still apply.

Needs CAP_NET_ADMIN (agent/data/net-admin.conf) and the nft program (apt nftables).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.logs import kv

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Proto = Literal["tcp", "udp"]
Command = dict[str, Any]

MAX_TIMEOUT_S = 30 * 24 * 3600  # longer blocks: timeout_s=None, then unblock explicitly
NFT_TIMEOUT_S = 10.0
PRIORITY = -10  # before the usual filter chains (priority filter = 0)
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}").fullmatch
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
# Kept working while isolated, or the device would lose its neighbours and its lease.
_NDP = ("nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert")
_DHCP_IN, _DHCP_OUT = (68, 546), (67, 547)


class FirewallError(Exception):
    """An action could not be done; the message says why (missing capability, no nft,
    an allowlisted address, or nft's own message)."""


# -- validation (also for create-mitigation-action, before any firewall exists) --------


def parse_cidr(text: object) -> Network:
    """An IPv4/IPv6 address or CIDR; a bare address is a /32 or /128. An IPv4-mapped IPv6
    address becomes its IPv4 form, which is how such peers appear on the wire."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"{text!r}: expected an IPv4 or IPv6 address or CIDR as a string")
    if "%" in text:
        raise ValueError(f"{text!r}: zone ids are not accepted; a block applies on every link")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        if "host bits set" in str(e):
            loose = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text!r}: host bits set; did you mean {loose}?") from None
        raise ValueError(f"{text!r}: not an IPv4 or IPv6 address or CIDR") from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def check_port(port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"port {port!r}: expected an integer from 1 to 65535")
    return port


def check_proto(proto: object) -> Proto:
    if proto == "tcp" or proto == "udp":
        return proto
    raise ValueError(f"protocol {proto!r}: expected 'tcp' or 'udp'")


def check_timeout(timeout_s: object) -> int | None:
    """Seconds the kernel keeps an entry; None keeps it until removed."""
    if timeout_s is None:
        return None
    if (
        not isinstance(timeout_s, int)
        or isinstance(timeout_s, bool)
        or not 1 <= timeout_s <= MAX_TIMEOUT_S
    ):
        raise ValueError(
            f"timeout_s {timeout_s!r}: expected an integer from 1 to {MAX_TIMEOUT_S}"
            " (30 days), or None for no expiry"
        )
    return timeout_s


@dataclass(frozen=True)
class Allowlist:
    """Addresses never blocked and always reachable, even while isolated: the broker,
    the management network. Loopback is always added."""

    cidrs: tuple[str, ...] = ()
    networks: tuple[Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.cidrs, str):
            raise ValueError("Allowlist.cidrs: expected a sequence of CIDRs, not one string")
        nets = [*LOOPBACK, *(parse_cidr(c) for c in self.cidrs)]
        object.__setattr__(self, "cidrs", tuple(self.cidrs))
        object.__setattr__(self, "networks", tuple(_collapse(nets)))

    def overlapping(self, net: Network) -> list[Network]:
        return [a for a in self.networks if a.version == net.version and a.overlaps(net)]


@dataclass(frozen=True)
class Plan:
    """The nft JSON commands of one action, one transaction; applied unless dry run."""

    action: str
    commands: tuple[Command, ...]
    applied: bool

    def document(self) -> dict[str, Any]:
        return {"nftables": list(self.commands)}

    def json(self) -> str:
        return json.dumps(self.document(), indent=2)


# -- the firewall ------------------------------------------------------------------------


class Firewall:
    def __init__(
        self,
        *,
        table: str = "edge_defender",
        nft: str = "nft",
        dry_run: bool = False,
        allow: Allowlist,
        nft_timeout_s: float = NFT_TIMEOUT_S,
    ) -> None:
        if not _NAME(table):
            raise ValueError(f"table {table!r}: expected a name of letters, digits and _")
        self.table = table
        self.nft = nft
        self.dry_run = dry_run
        self.allow = allow
        self.nft_timeout_s = nft_timeout_s

    # actions

    def ensure(self) -> Plan:
        """Create the table, sets and chains, or bring an existing table up to date;
        blocks already in the kernel stay."""
        return self._apply(Plan("ensure", tuple(self._setup()), not self.dry_run))

    def block_address(self, cidr: str, timeout_s: int | None) -> Plan:
        """Drop all traffic from and to `cidr` (in, out, forwarded); blocking it again
        refreshes the timeout."""
        net = parse_cidr(cidr)
        timeout = check_timeout(timeout_s)
        if hits := self.allow.overlapping(net):
            raise FirewallError(
                f"{net} is allowlisted (overlaps {', '.join(map(str, hits))}): loopback, the"
                " broker and the management network are never blocked"
            )
        commands = _refresh(self._set(_family_set("blocked", net)), [_net_value(net)], timeout)
        return self._act("block_address", commands, cidr=str(net), timeout_s=timeout)

    def unblock_address(self, cidr: str) -> Plan:
        net = parse_cidr(cidr)
        commands = _discard(self._set(_family_set("blocked", net)), _net_value(net))
        return self._act("unblock_address", commands, cidr=str(net))

    def block_port(self, proto: Proto, port: int, timeout_s: int | None) -> Plan:
        """Drop inbound traffic to a local port (not from the allowlist)."""
        value = {"concat": [check_proto(proto), check_port(port)]}
        timeout = check_timeout(timeout_s)
        commands = _refresh(self._set("blocked_ports"), [value], timeout)
        return self._act("block_port", commands, proto=proto, port=port, timeout_s=timeout)

    def unblock_port(self, proto: Proto, port: int) -> Plan:
        value = {"concat": [check_proto(proto), check_port(port)]}
        commands = _discard(self._set("blocked_ports"), value)
        return self._act("unblock_port", commands, proto=proto, port=port)

    def isolate(self, keep: Sequence[str], timeout_s: int | None) -> Plan:
        """Drop everything but the allowlist and `keep` (broker addresses, DNS servers,
        management CIDRs), in both directions; isolating again replaces the kept set."""
        if isinstance(keep, str):
            raise ValueError("keep: expected a sequence of addresses or CIDRs, not one string")
        nets = _collapse(parse_cidr(k) for k in keep)
        timeout = check_timeout(timeout_s)
        commands: list[Command] = []
        for name in ("keep_v4", "keep_v6"):
            commands.append({"flush": {"set": self._set(name)}})
        for version, name in ((4, "keep_v4"), (6, "keep_v6")):
            elems = [_elem(_net_value(n), timeout) for n in nets if n.version == version]
            if elems:
                commands.append({"add": {"element": {**self._set(name), "elem": elems}}})
        commands += _refresh(self._set("isolated"), ["ipv4", "ipv6"], timeout)
        kept = [str(n) for n in nets]
        return self._act("isolate", commands, keep=kept, timeout_s=timeout)

    def release_isolation(self) -> Plan:
        commands = [
            {"flush": {"set": self._set(name)}} for name in ("isolated", "keep_v4", "keep_v6")
        ]
        return self._act("release_isolation", commands)

    def remove(self) -> Plan:
        """Delete the table and everything in it (uninstall-service); no table, no-op."""
        table = {"family": "inet", "name": self.table}
        commands = ({"add": {"table": table}}, {"delete": {"table": table}})
        return self._apply(Plan("remove", commands, not self.dry_run))

    def state(self) -> dict[str, Any]:
        """What is in the kernel now, with each entry's timeout and seconds to expiry."""
        try:
            out = self._nft(["-j", "list", "table", "inet", self.table])
        except FirewallError as e:
            if "No such file or directory" in str(e):
                return parse_state(self.table, None)
            raise
        return parse_state(self.table, json.loads(out))

    # plumbing

    def _act(self, action: str, commands: list[Command], **details: object) -> Plan:
        # The setup goes first in the same transaction: an action works, atomically, even
        # after someone flushed the ruleset (a restart of nftables.service does).
        plan = Plan(action, (*self._setup(), *commands), not self.dry_run)
        return self._apply(plan, **details)

    def _apply(self, plan: Plan, **details: object) -> Plan:
        if plan.applied:
            try:
                self._nft(["-j", "-f", "-"], json.dumps(plan.document()))
            except FirewallError as e:
                if "interval overlaps" not in str(e) or "cidr" not in details:
                    raise
                raise FirewallError(self._overlap_reason(str(details["cidr"]))) from e
        log.info(
            kv("firewall", action=plan.action, table=self.table, dry_run=self.dry_run, **details)
        )
        return plan

    def _overlap_reason(self, cidr: str) -> str:
        net = parse_cidr(cidr)
        hits = []
        for entry in self.state()["blocked"]:
            with contextlib.suppress(ValueError):  # a range someone else added
                other = parse_cidr(entry["cidr"])
                if other.version == net.version and other.overlaps(net):
                    hits.append(str(other))
        return (
            f"{net} overlaps blocked {', '.join(hits) or 'entries'}: blocked ranges cannot"
            " overlap; unblock the other first, or block the wider one"
        )

    def installed(self) -> bool:
        """Whether nft is there at all (without it no table of ours can be either)."""
        return self._program() is not None

    def _program(self) -> str | None:
        return shutil.which(self.nft) or shutil.which(self.nft, path="/usr/sbin:/sbin")

    def _nft(self, args: list[str], stdin: str | None = None) -> str:
        program = self._program()
        if program is None:
            raise FirewallError(f"{self.nft}: nft not found (apt install nftables)")
        try:
            done = subprocess.run(
                [program, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.nft_timeout_s,
                env={**os.environ, "LC_ALL": "C"},  # nft's messages are matched below
            )
        except subprocess.TimeoutExpired:
            raise FirewallError(f"nft did not finish within {self.nft_timeout_s} s") from None
        except OSError as e:
            raise FirewallError(f"{program}: cannot run nft: {e.strerror}") from e
        if done.returncode != 0:
            message = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
            if "Operation not permitted" in message:
                raise FirewallError(
                    "needs CAP_NET_ADMIN (edge-defender install-service --net-admin adds it):"
                    f" nft: {message}"
                )
            raise FirewallError(f"nft: {message}")
        return done.stdout

    def _set(self, name: str) -> dict[str, str]:
        return {"family": "inet", "table": self.table, "name": name}

    def _setup(self) -> list[Command]:
        t = self.table
        commands: list[Command] = [{"add": {"table": {"family": "inet", "name": t}}}]
        for name, kind, flags in _SETS:
            commands.append({"add": {"set": {**self._set(name), "type": kind, "flags": flags}}})
        for version, name in ((4, "allow_v4"), (6, "allow_v6")):
            commands.append({"flush": {"set": self._set(name)}})
            elems = [_net_value(n) for n in self.allow.networks if n.version == version]
            commands.append({"add": {"element": {**self._set(name), "elem": elems}}})
        for chain, rules in _chains().items():
            spec = {"family": "inet", "table": t, "name": chain}
            hook = {"type": "filter", "hook": chain, "prio": PRIORITY, "policy": "accept"}
            commands += [{"add": {"chain": {**spec, **hook}}}, {"flush": {"chain": spec}}]
            commands += [
                {"add": {"rule": {"family": "inet", "table": t, "chain": chain, "expr": r}}}
                for r in rules
            ]
        return commands


_SETS: tuple[tuple[str, str | list[str], list[str]], ...] = (
    ("allow_v4", "ipv4_addr", ["interval"]),
    ("allow_v6", "ipv6_addr", ["interval"]),
    ("blocked_v4", "ipv4_addr", ["interval", "timeout"]),
    ("blocked_v6", "ipv6_addr", ["interval", "timeout"]),
    ("blocked_ports", ["inet_proto", "inet_service"], ["timeout"]),
    ("keep_v4", "ipv4_addr", ["interval", "timeout"]),
    ("keep_v6", "ipv6_addr", ["interval", "timeout"]),
    ("isolated", "nf_proto", ["timeout"]),
)


# -- rule expressions ----------------------------------------------------------------------


def _match(left: Command, right: object) -> Command:
    return {"match": {"op": "==", "left": left, "right": right}}


def _addr(proto: str, field: str) -> Command:
    return {"payload": {"protocol": proto, "field": field}}


def _verdict_on_sets(fields: Sequence[str], stem: str, verdict: str) -> list[list[Command]]:
    return [
        [_match(_addr(proto, f), f"@{stem}_{v}"), {verdict: None}]
        for f in fields
        for proto, v in (("ip", "v4"), ("ip6", "v6"))
    ]


def _chains() -> dict[str, list[list[Command]]]:
    accept, drop = {"accept": None}, {"drop": None}
    isolated = [_match({"meta": {"key": "nfproto"}}, "@isolated"), drop]
    port = {"concat": [{"meta": {"key": "l4proto"}}, _addr("th", "dport")]}
    ndp = [_match(_addr("icmpv6", "type"), {"set": list(_NDP)}), accept]

    def dhcp(ports: tuple[int, ...]) -> list[Command]:
        return [_match(_addr("udp", "dport"), {"set": list(ports)}), accept]

    def chain(
        fields: Sequence[str],
        lo: str | None,
        extra_drop: list[list[Command]],
        extra_accept: list[list[Command]],
    ) -> list[list[Command]]:
        loopback = [[_match({"meta": {"key": lo}}, "lo"), accept]] if lo else []
        return [
            *loopback,
            *_verdict_on_sets(fields, "allow", "accept"),
            *_verdict_on_sets(fields, "blocked", "drop"),
            *extra_drop,
            *_verdict_on_sets(fields, "keep", "accept"),
            *extra_accept,
            isolated,
        ]

    return {
        "input": chain(
            ["saddr"], "iif", [[_match(port, "@blocked_ports"), drop]], [ndp, dhcp(_DHCP_IN)]
        ),
        "output": chain(["daddr"], "oif", [], [ndp, dhcp(_DHCP_OUT)]),
        "forward": chain(["saddr", "daddr"], None, [], []),
    }


# -- set elements ----------------------------------------------------------------------------


def _net_value(net: Network) -> object:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _family_set(stem: str, net: Network) -> str:
    return f"{stem}_v{net.version}"


def _elem(value: object, timeout: int | None) -> object:
    return value if timeout is None else {"elem": {"val": value, "timeout": timeout}}


def _refresh(target: dict[str, str], values: list[object], timeout: int | None) -> list[Command]:
    # add (so that delete finds them), delete, add with the new timeout: one element each,
    # its timeout refreshed, on kernels that cannot update an element's timeout in place.
    return [
        {"add": {"element": {**target, "elem": values}}},
        {"delete": {"element": {**target, "elem": values}}},
        {"add": {"element": {**target, "elem": [_elem(v, timeout) for v in values]}}},
    ]


def _discard(target: dict[str, str], value: object) -> list[Command]:
    # nft 1.0.6 has no `destroy`: add first, so deleting an absent element is no error.
    return [
        {"add": {"element": {**target, "elem": [value]}}},
        {"delete": {"element": {**target, "elem": [value]}}},
    ]


def _collapse(nets: Iterable[Network]) -> list[Network]:
    """Overlapping CIDRs merged: an interval set refuses overlapping elements."""
    items = list(nets)
    v4 = [n for n in items if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in items if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


# -- state -----------------------------------------------------------------------------------


def parse_state(table: str, listing: dict[str, Any] | None) -> dict[str, Any]:
    """`nft -j list table` turned into entries: {"cidr" | "proto"+"port", "timeout_s",
    "expires_s"} (None for no expiry); None as listing means there is no table."""
    sets: dict[str, list[Any]] = {}
    for item in (listing or {}).get("nftables", []):
        if "set" in item:
            sets[item["set"]["name"]] = item["set"].get("elem", [])

    def entries(*names: str) -> list[dict[str, Any]]:
        return [_entry(e) for name in names for e in sets.get(name, [])]

    ports = []
    for entry in entries("blocked_ports"):
        proto, port = entry.pop("value")["concat"]
        ports.append({"proto": proto, "port": port, **entry})
    isolated = entries("isolated")
    return {
        "table": table,
        "present": listing is not None,
        "blocked": [_as_cidr(e) for e in entries("blocked_v4", "blocked_v6")],
        "ports": ports,
        "isolated": (
            {
                "families": [e["value"] for e in isolated],
                "timeout_s": isolated[0]["timeout_s"],
                "expires_s": isolated[0]["expires_s"],
            }
            if isolated
            else None
        ),
        "keep": [_as_cidr(e) for e in entries("keep_v4", "keep_v6")],
        "allow": [_as_cidr(e)["cidr"] for e in entries("allow_v4", "allow_v6")],
    }


def _entry(elem: Any) -> dict[str, Any]:
    if isinstance(elem, dict) and "elem" in elem:
        inner = elem["elem"]
        return {
            "value": inner["val"],
            "timeout_s": inner.get("timeout"),
            "expires_s": inner.get("expires"),
        }
    return {"value": elem, "timeout_s": None, "expires_s": None}


def _as_cidr(entry: dict[str, Any]) -> dict[str, Any]:
    value = entry.pop("value")
    if isinstance(value, dict) and "prefix" in value:
        cidr = f"{value['prefix']['addr']}/{value['prefix']['len']}"
    elif isinstance(value, dict) and "range" in value:  # only if added by someone else
        cidr = "-".join(value["range"])
    else:
        cidr = str(ipaddress.ip_network(value))
    return {"cidr": cidr, **entry}
