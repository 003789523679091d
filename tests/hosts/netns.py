"""A network namespace with one address of its own, made with pyroute2, for a test host.

The namespace gets a veth pair: one end stays in this machine's namespace with ADDRESS .1/30, the
other goes into the new namespace with .2/30, next to an up loopback. A test host booted in it
(systemd-nspawn --network-namespace-path) is then reachable from here at .2, and whatever it
listens on is inside a namespace these tests made: nothing is exposed on this machine's own
interfaces. The subnet comes from 10.213.0.0/16, one /30 per namespace, chosen so that it is not
in use here yet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import subprocess
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute, NetNS, netns

POOL = ipaddress.ip_network("10.213.0.0/16")
NETNS_DIR = Path("/run/netns")


class NetworkNamespaceError(RuntimeError):
    pass


def _used_networks() -> list[ipaddress.IPv4Network]:
    with IPRoute() as ipr:
        return [ipaddress.ip_interface(f"{address.get_attr('IFA_ADDRESS')}/"
                                       f"{address['prefixlen']}").network
                for address in ipr.get_addr(family=2)]


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    candidates = list(POOL.subnets(new_prefix=30))
    # Start at a random place: parallel runs rarely race for the same subnet.
    start = secrets.randbelow(len(candidates))
    for subnet in candidates[start:] + candidates[:start]:
        if not any(subnet.overlaps(network) for network in used):
            return subnet
    raise NetworkNamespaceError(f"no free /30 left in {POOL}")


class NetworkNamespace:
    """`with NetworkNamespace() as ns:` ns.path for nspawn, ns.address to reach it."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"pu-test-{os.getpid()}-{secrets.token_hex(2)}"
        # Interface names are at most 15 bytes.
        self.host_interface = f"pu{secrets.token_hex(4)}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.created = False

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    @property
    def address(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 2)

    def __enter__(self) -> NetworkNamespace:
        self.create()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def create(self) -> None:
        self.subnet = _free_subnet()
        netns.create(self.name)
        self.created = True
        try:
            inner = f"{self.host_interface}i"
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.host_interface, kind="veth", peer=inner)
                outer_index = ipr.link_lookup(ifname=self.host_interface)[0]
                inner_index = ipr.link_lookup(ifname=inner)[0]
                ipr.link("set", index=inner_index, net_ns_fd=self.name)
                ipr.addr("add", index=outer_index, address=self.gateway, prefixlen=30)
                ipr.link("set", index=outer_index, state="up")
            with NetNS(self.name) as inside:
                inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")
                index = inside.link_lookup(ifname=inner)[0]
                inside.link("set", index=index, ifname="host0")
                inside.addr("add", index=index, address=self.address, prefixlen=30)
                inside.link("set", index=index, state="up")
                inside.route("add", dst="default", gateway=self.gateway)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        if not self.created:
            return
        # Removing the namespace removes its veth end, and so the pair.
        with contextlib.suppress(FileNotFoundError, OSError):
            netns.remove(self.name)
        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname=self.host_interface):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=index)
        self.created = False

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """ARGV in the namespace (ip netns exec), for diagnostics."""
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True,
                              text=True)
