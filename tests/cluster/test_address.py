"""A dead RAY_ADDRESS fails in seconds with one line, not minutes of GCS retries (fast, no Ray)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from tests.support.scripts import load_script

from itemsage.cluster import address
from itemsage.cluster.address import RayAddressError, check_ray_address, host_port
from itemsage.cluster.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def _cli(name: str):
    return load_script(f"experiments/{name}.py")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.5:6379", ("10.0.0.5", 6379)),
        ("ray://head.example:10001", ("head.example", 10001)),
        ("http://127.0.0.1:8265", ("127.0.0.1", 8265)),
        (" localhost:1234 ", ("localhost", 1234)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert host_port(text) == expected


@pytest.mark.parametrize("text", ["10.0.0.5", "head:port", ":6379"])
def test_malformed_address_is_named(text: str) -> None:
    with pytest.raises(RayAddressError, match="is not host:port"):
        host_port(text)


@pytest.mark.parametrize("value", ["", "auto", "local"])
def test_nothing_to_check_without_a_host(value: str, monkeypatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", value)
    assert check_ray_address() is None


def test_listening_address_passes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        addr = f"127.0.0.1:{s.getsockname()[1]}"
        assert check_ray_address(addr, timeout_s=2) == addr


def test_dead_address_fails_fast_naming_it(monkeypatch) -> None:
    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", dead)
    with pytest.raises(RayAddressError, match=f"cannot reach the Ray cluster at RAY_ADDRESS={dead}"):
        check_ray_address(timeout_s=0.5)


@pytest.mark.parametrize("entry_point", ["train", "preprocess"])
def test_entry_points_print_one_line_for_a_dead_address(entry_point: str, monkeypatch, capsys) -> None:
    import ray

    dead = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", dead)
    monkeypatch.setattr(address, "CONNECT_TIMEOUT_S", 0.5)
    rc = _cli(entry_point).main(["--config", str(REPO / "experiments" / "configs" / "cluster.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"error: cannot reach the Ray cluster at RAY_ADDRESS={dead} (Connection refused after 0.5s); "
                   "start it (`ray start --head`) or fix RAY_ADDRESS"]
    assert not ray.is_initialized()
