"""The address checks of runs across hosts, without namespaces: which address gloo would bind,
when that is refused, the interface key, and how ranks tell each other their hosts."""

from __future__ import annotations

import os
import socket

import pytest

from distlab.runtime import network
from distlab.runtime.environ import node_count
from distlab.runtime.failures import RunFailed

ACROSS = {"MASTER_ADDR": "10.77.0.1"}


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True), ("10.77.0.1", False), ("x", False)],
)
def test_is_loopback(address, loopback):
    assert network.is_loopback(address) is loopback


def test_a_host_name_on_loopback_is_refused_when_the_job_spans_hosts():
    said = network.bind_problem("localhost", ACROSS)

    assert "'localhost' resolves to the loopback address 127.0.0.1" in said
    assert "gloo would bind 127.0.0.1" in said
    assert "GLOO_SOCKET_IFNAME=" in said and "--set network.interface=" in said
    assert "/etc/hosts" in said
    for name in network.interfaces():
        assert name in said  # names the interfaces there are


@pytest.mark.parametrize(
    "environ",
    [
        {"MASTER_ADDR": "127.0.0.1"},  # one host
        {"MASTER_ADDR": "localhost"},
        {},
        {**ACROSS, "GLOO_SOCKET_IFNAME": "eth0"},  # the interface is named: gloo binds it
    ],
)
def test_loopback_is_fine_on_one_host_or_with_an_interface(environ):
    assert network.bind_problem("localhost", environ) == ""


def test_a_host_name_with_a_link_address_is_fine():
    assert network.bind_problem("10.77.0.5", ACROSS) == ""


def test_use_interface_exports_it_for_gloo_and_nccl(monkeypatch):
    for key in network.IFNAME_KEYS:
        monkeypatch.delenv(key, raising=False)
    network.use_interface("lo")

    assert os.environ["GLOO_SOCKET_IFNAME"] == os.environ["NCCL_SOCKET_IFNAME"] == "lo"
    network.use_interface(None)  # nothing named: nothing changes
    assert os.environ["GLOO_SOCKET_IFNAME"] == "lo"


def test_an_interface_this_host_lacks_is_named_with_those_it_has(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    with pytest.raises(ValueError) as info:
        network.use_interface("nosuch0")

    assert "network.interface 'nosuch0' is not an interface of host" in str(info.value)
    assert "lo" in str(info.value).split("interfaces here:")[1]
    assert "GLOO_SOCKET_IFNAME" not in os.environ


def test_interface_address():
    assert network.interface_address("lo") == "127.0.0.1"
    assert network.interface_address("nosuch0") is None


def test_a_refusing_host_answers():
    assert network.answers("127.0.0.1")  # nothing listens on the probe port: refused, up


@pytest.mark.parametrize(
    ("environ", "world", "nodes"),
    [
        ({"GROUP_WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, 4, 2),
        ({"LOCAL_WORLD_SIZE": "1"}, 2, 2),
        ({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 4, 2),
        ({}, 4, 1),
    ],
)
def test_node_count(environ, world, nodes):
    assert node_count(world, environ) == nodes


class DictStore:
    """A store with the methods `meet` uses, in one process."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        self.data[key] = value

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)

    def get(self, key: str) -> bytes:
        return self.data[key].encode()


def test_meet_gathers_every_rank_host():
    store = DictStore()
    store.set("node/1", '{"host": "hostb", "address": "10.77.0.2", "problem": ""}')
    nodes = network.meet(store, 0, 2, timeout=1, problem="")

    assert nodes[0].host == socket.gethostname()
    assert nodes[1] == network.Node("hostb", "10.77.0.2")
    assert network.read_nodes(store, 2) == nodes


def test_meet_names_the_rank_and_host_that_cannot_join():
    store = DictStore()
    store.set("node/0", '{"host": "hosta", "address": "", "problem": "it resolves to loopback"}')
    with pytest.raises(RunFailed, match="rank 0 on hosta cannot join: it resolves to loopback"):
        network.meet(store, 1, 2, timeout=5, problem="")


def test_meet_fails_at_once_with_its_own_problem():
    with pytest.raises(RunFailed, match="cannot join: bad"):
        network.meet(DictStore(), 0, 2, timeout=60, problem="bad")


def test_meet_names_the_ranks_that_never_came():
    with pytest.raises(RunFailed, match=r"rank\(s\) 1 did not come within 0.2 s"):
        network.meet(DictStore(), 0, 2, timeout=0.2, problem="")


def test_a_local_run_with_an_interface_this_host_lacks_is_refused_before_anything_is_written(
    tmp_path,
):
    from tests.conftest import make_config

    from distlab.api import run

    cfg = make_config(tmp_path, strategy="allreduce", workers=2, network={"interface": "nope0"})
    with pytest.raises(ValueError, match="network.interface 'nope0' is not an interface"):
        run(cfg)
    assert not (tmp_path / "runs").exists()
