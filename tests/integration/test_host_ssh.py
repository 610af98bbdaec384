"""A host nobody answers for, through the real ``ssh``: one clear error at once, and afterwards the same
error without waiting while reconnections are tried in the background."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from llmdock.errors import RuntimeUnavailable
from llmdock.hosts import Host
from llmdock.hosts import remote as remote_mod
from llmdock.hosts.remote import RemoteRuntime


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: connections are refused


def test_an_unreachable_host_fails_fast_and_never_holds_callers_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_mod, "RETRY_S", 0.2)
    known = tmp_path / "known_hosts"
    known.touch()
    rt = RemoteRuntime(Host("gone", f"ssh://ops@127.0.0.1:{closed_port()}"), known)
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeUnavailable) as first:
            rt.deployments()
        assert time.monotonic() - t0 < 5
        assert (
            first.value.message.startswith("host gone (ops@127.0.0.1:")
            and "Connection refused" in first.value.message
        )
        assert "ssh -p" in first.value.hint and "llmdock hosts rm gone" in first.value.hint
        time.sleep(0.3)
        for _ in range(3):  # a retry is due: it runs in the background, callers get the failure now
            t0 = time.monotonic()
            with pytest.raises(RuntimeUnavailable):
                rt.deployments()
            assert time.monotonic() - t0 < 0.1
        deadline = time.monotonic() + 10
        while rt._retrying and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not rt._retrying and rt._failed is not None  # tried again, and failed again
    finally:
        rt.close()


def test_a_host_without_a_recorded_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where a tunnel's socket folder would go
    rt = RemoteRuntime(Host("nokey", "ssh://ops@127.0.0.1:22"), tmp_path / "missing")
    with pytest.raises(RuntimeUnavailable, match="no recorded host key"):
        rt.deployments()
    rt.close()
    assert not list(tmp_path.glob("llmdock-ssh-*"))  # nothing started, nothing left
