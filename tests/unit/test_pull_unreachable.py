"""Which SDK failures mean "the hub cannot be reached", read from the exception chain as the SDKs
raise it (requests → urllib3 → OSError; httpx → httpcore → OSError)."""

from __future__ import annotations

import errno
import itertools
import socket

import pytest

from llmdock.errors import HubError, NotFound
from llmdock.models.hubs import first_failure, unreachable


def chain(*errors: BaseException) -> BaseException:
    """``errors[0]`` raised from ``errors[1]`` raised from …"""
    for outer, inner in itertools.pairwise(errors):
        outer.__cause__ = inner
    return errors[0]


class NewConnectionError(Exception):  # urllib3's name, matched by text when no OSError is chained
    pass


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (chain(ConnectionError("[E1020] Connection failed"), ConnectionRefusedError(111, "refused")),
         "the connection was refused"),
        (chain(RuntimeError("ConnectError"), socket.gaierror(-2, "Name or service not known")),
         "its host name does not resolve"),
        (chain(RuntimeError("x"), OSError(errno.ENETUNREACH, "Network is unreachable")),
         "there is no route to it"),
        (NewConnectionError("Failed to establish a new connection: [Errno 111] Connection refused"),
         "the connection was refused"),
        (RuntimeError("NameResolutionError: Failed to resolve 'modelscope.cn'"),
         "its host name does not resolve"),
        (RuntimeError("404 Client Error: Not Found"), None),
        (chain(RuntimeError("read"), TimeoutError("The read operation timed out")), None),
    ],
)  # fmt: skip
def test_unreachable(error: BaseException, reason: str | None) -> None:
    assert unreachable(error) == reason


def test_a_cycle_in_the_chain_ends() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert unreachable(a) is None


def test_first_failure() -> None:
    down = [HubError("cannot reach ModelScope", "check the network"), HubError("cannot reach HF", "x")]
    assert isinstance(first_failure("o/m", down[:1]), HubError)
    both = first_failure("o/m", down)
    assert (
        type(both) is HubError
        and "no hub could be asked" in both.message
        and both.hint == "check the network"
    )
    mixed = first_failure("o/m", [NotFound("not on ModelScope"), down[1]])
    assert isinstance(mixed, NotFound) and "not on ModelScope" in mixed.message
