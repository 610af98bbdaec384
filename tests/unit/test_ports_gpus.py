from __future__ import annotations

import pytest

from llmdock.errors import Conflict, GpuUnavailable, InvalidSpec, PortTaken
from llmdock.planning.gpus import GpuRequest, choose_gpus, parse_gpus
from llmdock.planning.inventory import Gpu, Holding, Inventory
from llmdock.planning.ports import choose_port

EIGHT = tuple(Gpu(i) for i in range(8))


@pytest.mark.parametrize(
    ("text", "request_"),
    [
        ("all", GpuRequest("all")),
        ("none", GpuRequest("none")),
        ("2", GpuRequest("count", count=2)),
        ("0,1", GpuRequest("indices", indices=(0, 1))),
        ("3,", GpuRequest("indices", indices=(3,))),
        ("device=3", GpuRequest("indices", indices=(3,))),
        ("device=2,5", GpuRequest("indices", indices=(2, 5))),
    ],
)
def test_parse_gpus(text: str, request_: GpuRequest) -> None:
    assert parse_gpus(text) == request_


@pytest.mark.parametrize("text", ["x", "0,,a", "-1", "1,1", "0"])
def test_parse_gpus_rejects(text: str) -> None:
    with pytest.raises(InvalidSpec):
        parse_gpus(text)


@pytest.mark.parametrize(
    ("text", "holdings", "share", "expected"),
    [
        ("all", (), False, (0, 1, 2, 3, 4, 5, 6, 7)),
        ("2", (), False, (0, 1)),
        ("2", (Holding("a", 8001, (0, 1)),), False, (2, 3)),
        ("2", (Holding("a", 8001, (0, 1)),), True, (0, 1)),
        ("4,5", (Holding("a", 8001, (0, 1)),), False, (4, 5)),
        ("0,1", (Holding("me", 8001, (0, 1)),), False, (0, 1)),  # its own GPUs do not block a redeploy
        ("none", (), False, ()),
    ],
)
def test_choose_gpus(
    text: str, holdings: tuple[Holding, ...], share: bool, expected: tuple[int, ...]
) -> None:
    inv = Inventory(gpus=EIGHT, holdings=holdings)
    assert choose_gpus(parse_gpus(text), inv, owner="me", share=share) == expected


@pytest.mark.parametrize(
    ("text", "holdings", "fragment"),
    [
        ("8,", (), "GPU 8 does not exist"),
        ("0,9", (), "GPU 9 does not exist"),
        ("0,1", (Holding("a", 1, (1,)),), "GPU 1 by 'a'"),
        ("all", (Holding("a", 1, (7,)),), "GPU 7 by 'a'"),
        ("8", (Holding("a", 1, (7,)),), "only 7 are free"),
    ],
)
def test_choose_gpus_refuses(text: str, holdings: tuple[Holding, ...], fragment: str) -> None:
    with pytest.raises(GpuUnavailable) as e:
        choose_gpus(parse_gpus(text), Inventory(gpus=EIGHT, holdings=holdings), owner="me", share=False)
    assert fragment in e.value.message
    assert e.value.hint


def test_no_gpus_on_host() -> None:
    with pytest.raises(GpuUnavailable, match="no GPU is visible"):
        choose_gpus(parse_gpus("all"), Inventory(), owner="me", share=False)


RANGE = (8001, 8010)


@pytest.mark.parametrize(
    ("requested", "listening", "holdings", "ephemeral", "expected"),
    [
        (None, set(), (), (32768, 60999), 8001),
        (None, {8001, 8002}, (), (32768, 60999), 8003),
        (None, set(), (Holding("a", 8001, ()),), (32768, 60999), 8002),
        (None, set(), (), (8000, 8004), 8005),  # never inside the ephemeral range
        (9000, set(), (), (32768, 60999), 9000),  # explicit ports may lie outside the auto range
        (8001, {8001}, (Holding("me", 8001, ()),), (32768, 60999), None),
    ],
)
def test_choose_port(
    requested: int | None,
    listening: set[int],
    holdings: tuple[Holding, ...],
    ephemeral: tuple[int, int],
    expected: int | None,
) -> None:
    inv = Inventory(listening_ports=frozenset(listening), holdings=holdings, ephemeral_ports=ephemeral)
    if expected is None:
        with pytest.raises(PortTaken):
            choose_port(requested, inv, RANGE, owner="me")
    else:
        assert choose_port(requested, inv, RANGE, owner="me") == expected


def test_explicit_port_held_by_deployment() -> None:
    inv = Inventory(holdings=(Holding("other", 8001, ()),))
    with pytest.raises(PortTaken) as e:
        choose_port(8001, inv, RANGE, owner="me")
    assert "'other'" in e.value.message and "--port auto" in e.value.hint


def test_range_exhausted() -> None:
    inv = Inventory(listening_ports=frozenset(range(8001, 8011)))
    with pytest.raises(Conflict, match="no free port"):
        choose_port(None, inv, RANGE, owner="me")
