"""ModelScope through the ``modelscope`` SDK: its HubApi lists files (size, sha256), its legacy client
says where a file is (:mod:`llmdock.models.transfer` fetches it in ranges) or streams it with a Range
header. The endpoint is ``MODELSCOPE_ENDPOINT`` (a mirror, or the test hub),
read when the adapter is made; the token is the ``token`` argument or ``MODELSCOPE_API_TOKEN``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from llmdock.errors import HubError, NotFound
from llmdock.models.hubs import CHUNK, Body, Listing, Location, RemoteFile, unreachable, unreachable_error

DEFAULT_ENDPOINT = "https://modelscope.cn"


def _translate(e: Exception, what: str) -> Exception:
    if (reason := unreachable(e)) is not None:
        endpoint = os.environ.get("MODELSCOPE_ENDPOINT") or DEFAULT_ENDPOINT
        return unreachable_error("ModelScope", endpoint, "MODELSCOPE_ENDPOINT", reason)
    name = type(e).__name__
    status = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
    if name == "NotExistError" or status == 404:
        return NotFound(
            f"{what} not found on ModelScope ({_first_line(e)})",
            "check the model ID and --revision on modelscope.cn, or try --source huggingface",
        )
    if name in ("AuthenticationError", "PermissionDeniedError") or status in (401, 403):
        return HubError(
            f"ModelScope refused access to {what} ({_first_line(e)})",
            "pass --token or set MODELSCOPE_API_TOKEN to a token that can read this model",
        )
    return HubError(
        f"ModelScope request for {what} failed: {_first_line(e)}",
        "check the network, or set MODELSCOPE_ENDPOINT to a reachable mirror; a pull can be resumed",
    )


class ModelScopeHub:
    source = "modelscope"

    def __init__(self, token: str | None = None) -> None:
        try:  # modelscope >= 1.38 delegates its hub calls to modelscope_hub: import that (0.2 s, not 1.5 s)
            from modelscope_hub import HubApi
        except ImportError:  # pragma: no cover - older modelscope
            from modelscope.hub.api import HubApi  # type: ignore[no-redef]

        if not os.environ.get("MODELSCOPE_LOG_LEVEL"):
            # The SDK logs each retry as a WARNING on stderr; llmdock reports the outcome itself.
            for logger in ("modelscope_hub", "modelscope"):
                logging.getLogger(logger).setLevel(logging.ERROR)
        endpoint = os.environ.get("MODELSCOPE_ENDPOINT") or None
        self._token = token or os.environ.get("MODELSCOPE_API_TOKEN")
        self._api: Any = HubApi(endpoint=endpoint, token=self._token)

    def list_files(self, repo_id: str, revision: str) -> Listing:
        try:
            entries = self._api.list_repo_files(repo_id, "model", revision=revision, recursive=True)
        except Exception as e:
            raise _translate(e, f"model {repo_id}@{revision}") from e
        files = [
            RemoteFile(path=e.path, size=int(e.size or 0), sha256=(e.sha256 or None))
            for e in entries
            if getattr(e, "type", "blob") != "tree" and e.path
        ]
        return Listing(commit=revision, files=files)  # ModelScope's listing names no commit for a branch

    def locate(self, repo_id: str, revision: str, path: str) -> Location:
        """The SDK's download URL (``/api/v1/models/{repo}/repo?Revision=&FilePath=``), with the token
        sent both ways the SDK sends it (Bearer header and ``m_session_id`` cookie)."""
        url = self._api.legacy.get_download_url(repo_id, "model", path, revision)
        headers = {"Authorization": f"Bearer {self._token}", "Cookie": f"m_session_id={self._token}"}
        return Location(url, headers if self._token else {}, _translate)

    @contextlib.contextmanager
    def open_file(self, repo_id: str, revision: str, path: str, offset: int) -> Iterator[Body]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            resp = self._api.legacy.download_stream(repo_id, "model", path, revision, headers=headers)
        except Exception as e:
            raise _translate(e, f"{repo_id}/{path}") from e
        try:
            start = offset if resp.status_code == 206 else 0
            yield Body(start=start, chunks=_chunks(resp, path), readinto=_readinto(resp, path))
        finally:
            resp.close()


def _chunks(resp: Any, path: str) -> Iterator[bytes]:
    # Only reads happen inside this generator (the caller writes), so any error here is the network's.
    try:
        yield from resp.raw.stream(CHUNK, decode_content=False)
    except Exception as e:
        raise HubError(f"connection broke while reading {path}: {e}") from e


def _readinto(resp: Any, path: str) -> Callable[[memoryview], int] | None:
    """Read straight from http.client under urllib3 when the body is plain (no content-encoding)."""
    fp = getattr(resp.raw, "_fp", None)
    if (
        fp is None
        or not hasattr(fp, "readinto")
        or resp.headers.get("Content-Encoding", "identity") != "identity"
    ):
        return None

    def readinto(buf: memoryview) -> int:
        try:
            return int(fp.readinto(buf))
        except Exception as e:
            raise HubError(f"connection broke while reading {path}: {e}") from e

    return readinto


def _first_line(e: Exception) -> str:
    """The SDK's message without the request/response dump it appends on further lines."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
