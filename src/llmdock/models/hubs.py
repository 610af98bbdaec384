"""The one small Protocol every model hub sits behind, and an in-memory hub for unit tests.

A hub does two things: list a repo's files (with sizes and checksums) at a revision, and say where
one file's bytes are (a URL and headers, for parallel ranged downloads) or open them from an offset.
Everything else (layout, resume, hashing, locking) is the store's. Adapters
translate their SDK's exceptions into :class:`~llmdock.errors.NotFound` (no such repo or revision) and
:class:`~llmdock.errors.HubError` (everything else), keeping the SDK's message.

Example::

    hub = open_hub("modelscope", token=None)
    listing = hub.list_files("Qwen/Qwen2.5-7B-Instruct", "master")
    with hub.open_file("Qwen/Qwen2.5-7B-Instruct", listing.commit, "config.json", offset=0) as body:
        data = b"".join(body.chunks)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from llmdock.errors import HubError, NotFound

CHUNK = 1 << 20  # bytes per read from the network (fetch coalesces pieces into bigger writes)


@dataclass(frozen=True)
class RemoteFile:
    """One file as the hub lists it. ``sha256`` or ``git_sha1`` (a git blob id) is what we verify against."""

    path: str
    size: int
    sha256: str | None = None
    git_sha1: str | None = None


@dataclass(frozen=True)
class Listing:
    commit: str  # what the revision resolved to (the revision itself where the hub does not say)
    files: list[RemoteFile]


@dataclass
class Body:
    """A response body: ``start`` is the offset it begins at (0 when the server ignored our Range).

    ``readinto``, when the transport has one, fills a caller's buffer straight from the socket (no
    intermediate bytes objects); it returns 0 at the end of the body, early or not.
    """

    start: int
    chunks: Iterator[bytes]
    readinto: Callable[[memoryview], int] | None = None


Translate = Callable[[Exception, str], Exception]


def _as_is(e: Exception, what: str) -> Exception:
    return HubError(f"request for {what} failed: {e}")


@dataclass(frozen=True)
class Location:
    """Where a hub serves a file's bytes: a URL (it may redirect) and the headers that authorise it.

    ``translate`` turns an HTTP client error (requests) into the hub's own NotFound/HubError (its
    wording, its hint).
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    translate: Translate = _as_is


class Hub(Protocol):
    source: str

    def list_files(self, repo_id: str, revision: str) -> Listing: ...

    def open_file(
        self, repo_id: str, revision: str, path: str, offset: int
    ) -> contextlib.AbstractContextManager[Body]: ...

    def locate(self, repo_id: str, revision: str, path: str) -> Location | None:
        """The file's URL for ranged parallel downloads (:mod:`llmdock.models.transfer`); None when
        the hub has none (then :meth:`open_file` streams it)."""
        ...


_UNREACHABLE_TEXT = (
    ("NameResolutionError", "its host name does not resolve"),
    ("Name or service not known", "its host name does not resolve"),
    ("Temporary failure in name resolution", "its host name does not resolve"),
    ("Failed to resolve", "its host name does not resolve"),
    ("Connection refused", "the connection was refused"),
    ("Network is unreachable", "the network is unreachable"),
    ("No route to host", "there is no route to it"),
    ("ProxyError", "the proxy cannot be reached"),
    ("ConnectTimeout", "connecting timed out"),
)


def unreachable(e: BaseException) -> str | None:
    """Why a hub could not be reached at all (host unresolved, refused, no route, connect timeout),
    from the exception chain an SDK raised; None when the hub answered (or the cause is something else).

    The SDKs wrap the socket error two to four times (requests → urllib3 → OSError; httpx →
    httpcore → OSError), each wrapper repeating it in a longer message: the leaf says it best.
    """
    import errno
    import socket

    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and all(cur is not c for c in chain):
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for c in chain:
        if isinstance(c, socket.gaierror):
            return "its host name does not resolve"
    for c in chain:
        if isinstance(c, ConnectionRefusedError):
            return "the connection was refused"
        if isinstance(c, OSError) and c.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "there is no route to it"
    text = " ".join(f"{type(c).__name__} {c}" for c in chain)
    return next((reason for needle, reason in _UNREACHABLE_TEXT if needle in text), None)


def unreachable_error(hub_name: str, endpoint: str, env: str, reason: str) -> HubError:
    return HubError(
        f"cannot reach {hub_name} at {endpoint}: {reason}",
        f"check the network (and HTTPS_PROXY); on a server without internet set {env} to a reachable "
        "mirror, or copy the weights here and register them with `llmdock models import DIR`",
    )


def first_failure(model_id: str, failures: list[HubError | NotFound]) -> HubError | NotFound:
    """The one error to raise after every source of ``--source auto`` failed: the only one, or all
    of them in one line (a HubError when no source could be asked, else NotFound)."""
    if len(failures) == 1:
        return failures[0]
    said = "; ".join(f.message for f in failures)
    if not any(isinstance(f, NotFound) for f in failures):
        return HubError(f"no hub could be asked for {model_id}: {said}", failures[0].hint)
    return NotFound(
        f"model {model_id} was not found on any source: {said}",
        "check the model ID, or name a --source and an endpoint that has it",
    )


def open_hub(source: str, token: str | None = None) -> Hub:
    """The real adapter for a source; imports its SDK only now (they are slow to import)."""
    if source == "modelscope":
        from llmdock.models.hub_modelscope import ModelScopeHub

        return ModelScopeHub(token=token)
    if source == "huggingface":
        from llmdock.models.hub_huggingface import HuggingFaceHub

        return HuggingFaceHub(token=token)
    raise HubError(f"no hub adapter for source {source!r}", "use --source modelscope or --source huggingface")


@dataclass
class MemoryHub:
    """A plain in-memory hub: ``repos[repo_id][path] = bytes``. ``fail_after`` breaks a read once."""

    source: str = "memory"
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    fail_after: dict[str, int] = field(default_factory=dict)
    opened: list[tuple[str, int]] = field(default_factory=list)

    def list_files(self, repo_id: str, revision: str) -> Listing:
        import hashlib

        repo = self._repo(repo_id)
        files = [RemoteFile(p, len(d), hashlib.sha256(d).hexdigest()) for p, d in repo.items()]
        return Listing(commit=revision, files=files)

    @contextlib.contextmanager
    def open_file(self, repo_id: str, revision: str, path: str, offset: int) -> Iterator[Body]:
        data = self._repo(repo_id)[path]
        self.opened.append((path, offset))
        cut = self.fail_after.pop(path, None)

        def chunks() -> Iterator[bytes]:
            end = len(data) if cut is None else min(len(data), offset + cut)
            for pos in range(offset, end, 7):
                yield data[pos : min(end, pos + 7)]
            if cut is not None:
                raise HubError(f"connection dropped while reading {path}")

        yield Body(start=offset, chunks=chunks())

    def locate(self, repo_id: str, revision: str, path: str) -> Location | None:
        return None  # no URL: pulls stream through open_file

    def _repo(self, repo_id: str) -> Mapping[str, bytes]:
        if repo_id not in self.repos:
            raise NotFound(f"model {repo_id!r} not found on {self.source}", "check the model ID")
        return self.repos[repo_id]
