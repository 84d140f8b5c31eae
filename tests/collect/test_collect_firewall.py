"""The firewall's input checks and the nft JSON plans it builds, without nft (dry run);
tests/system/test_system_firewall_netns.py runs them in the kernel and measures traffic."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from agent.collect.firewall import (
    MAX_TIMEOUT_S,
    Allowlist,
    Firewall,
    FirewallError,
    Plan,
    check_port,
    check_timeout,
    parse_cidr,
    parse_state,
)

BROKER, MGMT = "10.204.0.3", "192.168.7.0/24"
NO_NFT = "/nonexistent/nft"  # a dry run never runs nft


def firewall(**kw: Any) -> Firewall:
    kw.setdefault("allow", Allowlist((BROKER, MGMT)))
    return Firewall(nft=NO_NFT, dry_run=True, **kw)


def elements(plan: Plan, op: str, set_name: str) -> list[Any]:
    return [
        e
        for c in plan.commands
        if op in c and "element" in c[op] and c[op]["element"]["name"] == set_name
        for e in c[op]["element"]["elem"]
    ]


def action_commands(plan: Plan) -> list[dict[str, Any]]:
    """The commands after the setup every action starts with."""
    setup = len(firewall().ensure().commands)
    return list(plan.commands[setup:])


# -- input checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        ("203.0.113.0/24", "203.0.113.0/24"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("::ffff:203.0.113.7", "203.0.113.7/32"),  # IPv4-mapped: how the peer is on the wire
        ("::ffff:203.0.113.0/120", "203.0.113.0/24"),
    ],
)
def test_cidrs_are_parsed_to_networks(text: str, expected: str) -> None:
    assert str(parse_cidr(text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("203.0.113.7/24", "host bits set; did you mean 203.0.113.0/24?"),
        ("fe80::1%eth0", "zone ids are not accepted"),
        ("fe80::%2/64", "zone ids are not accepted"),
        ("203.0.113.256", "not an IPv4 or IPv6 address or CIDR"),
        ("010.0.0.1", "not an IPv4 or IPv6 address or CIDR"),
        ("203.0.113.0/33", "not an IPv4 or IPv6 address or CIDR"),
        ("2001:db8::/129", "not an IPv4 or IPv6 address or CIDR"),
        ("example.com", "not an IPv4 or IPv6 address or CIDR"),
        (" 203.0.113.7", "not an IPv4 or IPv6 address or CIDR"),
        ("", "expected an IPv4 or IPv6 address or CIDR as a string"),
        (3405803783, "expected an IPv4 or IPv6 address or CIDR as a string"),
    ],
)
def test_bad_cidrs_are_refused_with_the_reason(text: object, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_cidr(text)
    assert str(e.value).startswith(repr(text)) and message in str(e.value)


@pytest.mark.parametrize("port", [0, 65536, -1, True, "22", 22.0, None])
def test_ports_outside_1_to_65535_are_refused(port: object) -> None:
    with pytest.raises(ValueError, match="expected an integer from 1 to 65535"):
        check_port(port)


def test_port_bounds_are_accepted() -> None:
    assert (check_port(1), check_port(65535)) == (1, 65535)


@pytest.mark.parametrize("timeout", [0, -5, MAX_TIMEOUT_S + 1, 1.5, True, "60"])
def test_timeouts_outside_the_range_are_refused(timeout: object) -> None:
    with pytest.raises(ValueError, match=r"timeout_s .*expected an integer from 1 to 2592000"):
        check_timeout(timeout)


def test_timeout_bounds_and_none_are_accepted() -> None:
    assert [check_timeout(t) for t in (1, MAX_TIMEOUT_S, None)] == [1, MAX_TIMEOUT_S, None]


def test_the_allowlist_always_holds_loopback_and_merges_overlaps() -> None:
    allow = Allowlist(("10.0.0.0/8", "10.1.0.0/16", "2001:db8::1"))
    assert [str(n) for n in allow.networks] == [
        "10.0.0.0/8",
        "127.0.0.0/8",
        "::1/128",
        "2001:db8::1/128",
    ]
    assert [str(n) for n in Allowlist().networks] == ["127.0.0.0/8", "::1/128"]


def test_a_bad_allowlist_entry_is_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.1/8': host bits set"):
        Allowlist(("10.0.0.0/8", "10.0.0.1/8"))
    with pytest.raises(ValueError, match="a sequence of CIDRs, not one string"):
        Allowlist("10.0.0.0/8")  # type: ignore[arg-type]


def test_table_names_are_checked() -> None:
    with pytest.raises(ValueError, match="table 'edge defender'"):
        firewall(table="edge defender")


# -- plans ---------------------------------------------------------------------------------


def test_a_dry_run_returns_the_plan_and_runs_nothing() -> None:
    plan = firewall().block_address("203.0.113.7", 300)
    assert plan.applied is False and plan.action == "block_address"
    assert json.loads(plan.json()) == {"nftables": list(plan.commands)}


def test_ensure_creates_everything_and_never_empties_the_blocked_sets() -> None:
    plan = firewall().ensure()
    commands = plan.commands
    assert commands[0] == {"add": {"table": {"family": "inet", "name": "edge_defender"}}}
    sets = {c["add"]["set"]["name"]: c["add"]["set"] for c in commands if "set" in c.get("add", {})}
    assert sets["blocked_v4"]["flags"] == ["interval", "timeout"]
    assert sets["blocked_v6"]["type"] == "ipv6_addr"
    assert sets["blocked_ports"]["type"] == ["inet_proto", "inet_service"]
    assert sets["isolated"] == {**sets["isolated"], "type": "nf_proto", "flags": ["timeout"]}
    chains = [c["add"]["chain"] for c in commands if "chain" in c.get("add", {})]
    assert [(c["name"], c["hook"], c["prio"], c["policy"]) for c in chains] == [
        ("input", "input", -10, "accept"),
        ("output", "output", -10, "accept"),
        ("forward", "forward", -10, "accept"),
    ]
    flushed = [c["flush"] for c in commands if "flush" in c]
    # Restart-safe: only the allowlist and the rules are rewritten; blocks stay.
    assert [f["set"]["name"] for f in flushed if "set" in f] == ["allow_v4", "allow_v6"]
    assert [f["chain"]["name"] for f in flushed if "chain" in f] == ["input", "output", "forward"]
    assert not [c for c in commands if "delete" in c]
    assert elements(plan, "add", "allow_v4") == [
        "10.204.0.3",
        {"prefix": {"addr": "127.0.0.0", "len": 8}},
        {"prefix": {"addr": "192.168.7.0", "len": 24}},
    ]
    assert elements(plan, "add", "allow_v6") == ["::1"]


def _rules(plan: Plan, chain: str) -> list[str]:
    """Each rule of a chain as '<what it matches> <verdict>', in order."""
    out = []
    for c in plan.commands:
        rule = c.get("add", {}).get("rule")
        if rule and rule["chain"] == chain:
            match, verdict = rule["expr"]
            right = match["match"]["right"]
            out.append(f"{right if isinstance(right, str) else 'set'} {next(iter(verdict))}")
    return out


def test_the_rules_put_loopback_and_the_allowlist_first_and_isolation_last() -> None:
    plan = firewall().ensure()
    assert _rules(plan, "input") == [
        "lo accept",
        "@allow_v4 accept",
        "@allow_v6 accept",
        "@blocked_v4 drop",
        "@blocked_v6 drop",
        "@blocked_ports drop",
        "@keep_v4 accept",
        "@keep_v6 accept",
        "set accept",  # neighbour discovery
        "set accept",  # DHCP client
        "@isolated drop",
    ]
    assert _rules(plan, "output")[0] == "lo accept"
    assert "@blocked_ports drop" not in _rules(plan, "output")
    assert _rules(plan, "forward")[:2] == ["@allow_v4 accept", "@allow_v6 accept"]
    assert _rules(plan, "forward")[-1] == "@isolated drop"


def test_block_address_adds_one_element_with_a_kernel_timeout() -> None:
    fw = firewall()
    plan = fw.block_address("203.0.113.0/24", 600)
    value = {"prefix": {"addr": "203.0.113.0", "len": 24}}
    target = {"family": "inet", "table": "edge_defender", "name": "blocked_v4"}
    # add, delete, add: blocking again refreshes the timeout and stays one element.
    assert action_commands(plan) == [
        {"add": {"element": {**target, "elem": [value]}}},
        {"delete": {"element": {**target, "elem": [value]}}},
        {"add": {"element": {**target, "elem": [{"elem": {"val": value, "timeout": 600}}]}}},
    ]
    assert plan.commands[: len(fw.ensure().commands)] == fw.ensure().commands
    v6 = fw.block_address("2001:db8::7", None)
    assert elements(v6, "add", "blocked_v6")[-1] == "2001:db8::7"  # no timeout: until unblocked


def test_unblock_address_deletes_without_failing_when_absent() -> None:
    plan = firewall().unblock_address("2001:db8::/48")
    value = {"prefix": {"addr": "2001:db8::", "len": 48}}
    assert [next(iter(c)) for c in action_commands(plan)] == ["add", "delete"]
    assert elements(plan, "delete", "blocked_v6") == [value]


@pytest.mark.parametrize(
    ("cidr", "overlap"),
    [
        (BROKER, "10.204.0.3/32"),
        ("10.204.0.0/16", "10.204.0.3/32"),  # would cover the broker
        ("192.168.7.128/25", "192.168.7.0/24"),  # inside the management network
        ("127.0.0.1", "127.0.0.0/8"),
        ("0.0.0.0/0", "10.204.0.3/32, 127.0.0.0/8, 192.168.7.0/24"),
        ("::1", "::1/128"),
        ("::/0", "::1/128"),
        ("::ffff:10.204.0.3", "10.204.0.3/32"),
    ],
)
def test_the_allowlist_is_never_blocked(cidr: str, overlap: str) -> None:
    with pytest.raises(FirewallError, match="is allowlisted") as e:
        firewall().block_address(cidr, 60)
    assert f"(overlaps {overlap})" in str(e.value)


def test_block_port_matches_protocol_and_port() -> None:
    plan = firewall().block_port("udp", 5683, 120)
    assert elements(plan, "add", "blocked_ports")[-1] == {
        "elem": {"val": {"concat": ["udp", 5683]}, "timeout": 120}
    }
    assert elements(firewall().unblock_port("tcp", 22), "delete", "blocked_ports") == [
        {"concat": ["tcp", 22]}
    ]
    with pytest.raises(ValueError, match="protocol 'icmp'"):
        firewall().block_port("icmp", 1, 60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port 0"):
        firewall().block_port("tcp", 0, 60)


def test_isolate_replaces_the_kept_set_and_expires_with_it() -> None:
    plan = firewall().isolate(["198.51.100.53", "198.51.100.0/24", "2001:db8::53"], 900)
    commands = action_commands(plan)
    assert [c["flush"]["set"]["name"] for c in commands[:2]] == ["keep_v4", "keep_v6"]
    kept = {"prefix": {"addr": "198.51.100.0", "len": 24}}  # the address merged into its /24
    assert elements(plan, "add", "keep_v4") == [{"elem": {"val": kept, "timeout": 900}}]
    assert elements(plan, "add", "keep_v6") == [{"elem": {"val": "2001:db8::53", "timeout": 900}}]
    assert elements(plan, "add", "isolated")[-2:] == [
        {"elem": {"val": "ipv4", "timeout": 900}},
        {"elem": {"val": "ipv6", "timeout": 900}},
    ]
    with pytest.raises(ValueError, match="not one string"):
        firewall().isolate("198.51.100.53", 60)
    with pytest.raises(ValueError, match=r"'dns\.example'"):
        firewall().isolate(["dns.example"], 60)


def test_release_isolation_empties_the_isolation_sets_only() -> None:
    commands = action_commands(firewall().release_isolation())
    assert [c["flush"]["set"]["name"] for c in commands] == ["isolated", "keep_v4", "keep_v6"]


def test_remove_deletes_the_table_even_when_absent() -> None:
    table = {"family": "inet", "name": "edge_defender"}
    plan = firewall().remove()
    assert plan.commands == ({"add": {"table": table}}, {"delete": {"table": table}})


# -- running nft -----------------------------------------------------------------------------


def test_without_nft_the_error_says_how_to_get_it() -> None:
    fw = Firewall(nft=NO_NFT, allow=Allowlist())
    with pytest.raises(FirewallError, match=r"nft not found \(apt install nftables\)"):
        fw.block_address("203.0.113.7", 60)
    with pytest.raises(FirewallError, match="nft not found"):
        fw.state()


# The shape of `nft -j list table inet edge_defender` (nft 1.0.6), cut down.
LISTING: dict[str, Any] = {
    "nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "inet", "name": "edge_defender", "handle": 1}},
        {"set": {"name": "allow_v4", "elem": [{"prefix": {"addr": "127.0.0.0", "len": 8}}]}},
        {"set": {"name": "allow_v6", "elem": ["::1"]}},
        {
            "set": {
                "name": "blocked_v4",
                "elem": [
                    {
                        "elem": {
                            "val": {"prefix": {"addr": "203.0.113.0", "len": 24}},
                            "timeout": 60,
                            "expires": 42,
                        }
                    },
                    "198.51.100.9",
                ],
            }
        },
        {"set": {"name": "blocked_v6", "elem": [{"elem": {"val": "2001:db8::7", "timeout": 5}}]}},
        {
            "set": {
                "name": "blocked_ports",
                "elem": [{"elem": {"val": {"concat": ["tcp", 22]}, "timeout": 30, "expires": 3}}],
            }
        },
        {"set": {"name": "keep_v4", "elem": ["198.51.100.53"]}},
        {"set": {"name": "keep_v6"}},
        {"set": {"name": "isolated", "elem": ["ipv4", "ipv6"]}},
    ]
}


def test_state_lists_entries_with_their_expiry() -> None:
    state = parse_state("edge_defender", LISTING)
    assert state == {
        "table": "edge_defender",
        "present": True,
        "blocked": [
            {"cidr": "203.0.113.0/24", "timeout_s": 60, "expires_s": 42},
            {"cidr": "198.51.100.9/32", "timeout_s": None, "expires_s": None},
            {"cidr": "2001:db8::7/128", "timeout_s": 5, "expires_s": None},
        ],
        "ports": [{"proto": "tcp", "port": 22, "timeout_s": 30, "expires_s": 3}],
        "isolated": {"families": ["ipv4", "ipv6"], "timeout_s": None, "expires_s": None},
        "keep": [{"cidr": "198.51.100.53/32", "timeout_s": None, "expires_s": None}],
        "allow": ["127.0.0.0/8", "::1/128"],
    }
    for entry in state["blocked"]:
        ipaddress.ip_network(entry["cidr"])


def test_state_without_a_table_is_empty() -> None:
    assert parse_state("edge_defender", None) == {
        "table": "edge_defender",
        "present": False,
        "blocked": [],
        "ports": [],
        "isolated": None,
        "keep": [],
        "allow": [],
    }
