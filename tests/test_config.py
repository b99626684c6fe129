"""Configuration: resolv.conf/hosts parsing as glibc reads them, and overrides by env and args."""
from __future__ import annotations

import pytest

from usocket.config import OWN, SHARED, discover, parse_hosts, parse_resolv_conf
from usocket.wire.addr import ip_aton


def test_resolv_conf_like_glibc() -> None:
    rc = parse_resolv_conf("""
# comment
nameserver 10.0.0.53
nameserver 10.0.0.54 ; trailing comment
domain old.example
search a.example b.example
options ndots:3 timeout:2 attempts:4 rotate bogus ndots:x
""")
    assert rc.nameservers == ["10.0.0.53", "10.0.0.54"]
    assert rc.search == ["a.example", "b.example"]  # the last of search/domain wins
    assert (rc.ndots, rc.timeout, rc.attempts, rc.rotate) == (3, 2.0, 4, True)
    clamp = parse_resolv_conf("options ndots:99 timeout:0 attempts:9")
    assert (clamp.ndots, clamp.timeout, clamp.attempts) == (15, 1.0, 5)
    empty = parse_resolv_conf("")
    assert empty.nameservers == [] and (empty.ndots, empty.timeout, empty.attempts) == (1, 5.0, 2)


def test_hosts_file() -> None:
    hosts = parse_hosts("""
127.0.0.1 localhost
10.1.1.1  Web.Example web   # comment
10.1.1.2  web.example
::1 localhost ip6-localhost
""")
    assert hosts["web.example"] == ["10.1.1.1", "10.1.1.2"]
    assert hosts["web"] == ["10.1.1.1"]
    assert hosts["localhost"] == ["127.0.0.1"]  # IPv6 lines are not ours
    assert "ip6-localhost" not in hosts


def test_discover_from_the_system_then_env_then_arguments(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 192.0.2.53\nsearch lab.example\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.80 box\n")
    monkeypatch.setenv("USOCKET_RESOLV_CONF", str(rc))
    monkeypatch.setenv("USOCKET_HOSTS", str(hosts))
    monkeypatch.setenv("USOCKET_IFACE", "lo")  # present on every machine, default route or not
    base = discover()
    assert base.iface == "lo" and base.mode == SHARED and base.address == ip_aton("127.0.0.1")
    assert base.prefix_len == 8 and base.mtu == 65536
    assert base.resolver.nameservers == ["192.0.2.53"] and base.resolver.search == ["lab.example"]
    assert base.resolver.hosts == {"box": ["192.0.2.80"]}
    monkeypatch.setenv("USOCKET_MODE", "own")
    monkeypatch.setenv("USOCKET_ADDR", "192.0.2.77/28")
    monkeypatch.setenv("USOCKET_MTU", "1280")
    monkeypatch.setenv("USOCKET_GATEWAY", "none")
    monkeypatch.setenv("USOCKET_NAMESERVERS", "192.0.2.1,192.0.2.2")
    monkeypatch.setenv("USOCKET_SEARCH", "")
    env = discover()
    assert (env.mode, env.address, env.prefix_len, env.mtu, env.gateway) == (OWN, ip_aton("192.0.2.77"), 28, 1280,
                                                                               None)
    assert env.resolver.nameservers == ["192.0.2.1", "192.0.2.2"] and env.resolver.search == []
    args = discover(mode="shared", mtu=1400, nameservers=["192.0.2.9"], gateway="192.0.2.1")
    assert (args.mode, args.mtu, args.resolver.nameservers, args.gateway) == (SHARED, 1400, ["192.0.2.9"],
                                                                               ip_aton("192.0.2.1"))
    monkeypatch.setenv("USOCKET_MODE", "bogus")
    with pytest.raises(ValueError):
        discover()


@pytest.mark.lab
def test_discover_follows_the_route_inside_a_namespace(lab) -> None:
    cfg = discover(netns=lab.client_ns)  # no interface named: the default route decides
    assert cfg.iface == lab.client_if and cfg.gateway == ip_aton(lab.server_ip)
    assert cfg.address == ip_aton(lab.client_ip) and cfg.prefix_len == lab.prefix_len
    assert cfg.mac.hex(":") == lab.client_mac.lower() and cfg.mtu == 1500
    assert cfg.resolver.nameservers == [lab.server_ip]  # /etc/netns/<ns>/resolv.conf, as ip netns exec sees it
    assert cfg.resolver.search == [lab.DOMAIN]
    assert cfg.resolver.hosts[f"hostsonly.{lab.DOMAIN}"] == [lab.server_ip]


def test_discover_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USOCKET_IFACE", "usk-no-such-if")
    with pytest.raises(OSError) as ei:
        discover()
    assert "usk-no-such-if" in str(ei.value)


def test_glibc_limits_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    rc = parse_resolv_conf("nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n"
                           "search a.example\n", {"LOCALDOMAIN": "x.example y.example", "RES_OPTIONS": "ndots:4"})
    assert rc.nameservers == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # MAXNS
    assert rc.search == ["x.example", "y.example"] and rc.ndots == 4
    monkeypatch.setenv("USOCKET_IFACE", "lo")
    monkeypatch.setenv("USOCKET_NAMESERVERS", " 10.0.0.7 , 10.0.0.8")
    assert discover().resolver.nameservers == ["10.0.0.7", "10.0.0.8"]


def test_own_mode_without_an_address_of_its_own_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USOCKET_IFACE", "lo")
    with pytest.raises(ValueError, match="own mode needs"):
        discover(mode="own")
