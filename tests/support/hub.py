"""A loopback model hub speaking the parts of ModelScope's and Hugging Face's HTTP APIs that their SDKs use.

Point the real SDKs at it with ``MODELSCOPE_ENDPOINT`` / ``HF_ENDPOINT`` (see :func:`hub_env`). It serves
repos built by :func:`tiny_model_files` (or any ``{path: bytes | Path}``), honours ``Range``, and takes fault
switches per test: drop the connection part-way through a file, corrupt a byte, or go slow.

ModelScope (``modelscope`` 1.3x / ``modelscope_hub``)::

    GET  /api/v1/models/{org}/{name}                      repo info
    GET  /api/v1/models/{org}/{name}/revisions            branches and tags
    GET  /api/v1/models/{org}/{name}/repo/files           file list: Path, Size, Sha256, Type
    GET  /api/v1/models/{org}/{name}/repo?FilePath=P      file bytes (HEAD too)

Hugging Face (``huggingface_hub``)::

    GET  /api/models/{org}/{name}[/revision/{rev}]        model info: sha, siblings
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]     tree: path, size, oid, lfs{oid,size}
    GET  /{org}/{name}/resolve/{rev}/{path}               file bytes, X-Repo-Commit, ETag, X-Linked-* (HEAD too)

File bodies (both APIs) honour ``Range: bytes=A-B`` with 206 and ``Content-Range`` as CDNs do; with
``faults.redirect`` a file GET answers 302 to ``/cdn/{org}/{name}/{path}?sig=…`` first, and
``faults.rate_per_connection`` paces each body. ``hub.log`` records every request, with the byte
range asked and the body bytes sent.

Example::

    with LocalHub() as hub:
        hub.add_repo("tiny/model", tiny_model_files())
        hub.faults.drop_after["model-00001-of-00002.safetensors"] = 1000
        ...
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "a" * 40  # every repo has one commit; HF needs a 40-hex sha
LFS_MIN = 1024  # files at least this big are "LFS" on the HF side (sha256 etag); smaller are git blobs


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    path: str
    size: int
    sha256: str
    git_sha1: str
    data: bytes | None = None  # in memory, or
    disk: Path | None = None  # on disk (large benchmark files)

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        assert self.disk is not None
        with self.disk.open("rb") as f:
            f.seek(start)
            return f.read(end - start)


@dataclass
class Faults:
    """Switches a test flips; each applies to files by their path in the repo."""

    drop_after: dict[str, int] = field(default_factory=dict)  # close the socket after N bytes of the body
    drop_times: int = 1  # how many responses each drop applies to (then the file serves normally)
    corrupt: set[str] = field(default_factory=set)  # flip one byte in the middle of the body
    delay_s: float = 0.0  # sleep per 64 KiB chunk of file bodies (slow hub)
    ignore_range: bool = False  # answer 200 with the whole file even when a Range is asked
    rate_per_connection: float = 0.0  # bytes/s cap on each response body, as CDNs apply (0: none)
    redirect: bool = False  # file GETs answer 302 to a signed /cdn/ URL (as HF and ModelScope do)
    latency_s: float = 0.0  # every request waits this long before its answer (a round trip, where
    # the kernel has no netem to delay packets)


@dataclass
class Request:
    method: str
    path: str
    file: str | None = None
    range_start: int | None = None
    range_end: int | None = None  # exclusive
    sent: int = 0  # body bytes actually sent (less than asked when the response was dropped)


class LocalHub:
    """A threaded loopback HTTP server; start it with ``with LocalHub() as hub``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.repos: dict[str, dict[str, HubFile]] = {}
        self.faults = Faults()
        self.log: list[Request] = []
        self._drops_done: dict[str, int] = {}
        self._lock = threading.Lock()
        self.active = 0  # file bodies being sent right now
        self.max_active = 0  # the most at once since the hub started (or a test reset it)
        self._server = _Server((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def add_repo(self, repo_id: str, files: Mapping[str, bytes | Path]) -> None:
        entries: dict[str, HubFile] = {}
        for path, content in files.items():
            if isinstance(content, Path):
                entries[path] = _hub_file_on_disk(path, content)
            else:
                entries[path] = HubFile(
                    path,
                    len(content),
                    hashlib.sha256(content).hexdigest(),
                    git_blob_sha1(content),
                    data=content,
                )
        self.repos[repo_id] = entries

    def file_requests(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.file == path and r.method == "GET"]

    def bytes_sent(self, path: str) -> int:
        """Body bytes of ``path`` this hub has sent so far, over all requests."""
        return sum(r.sent for r in self.file_requests(path))

    def take_drop(self, path: str) -> int | None:
        """The byte count after which this response must drop, if a drop is still due."""
        with self._lock:
            if path not in self.faults.drop_after:
                return None
            done = self._drops_done.get(path, 0)
            if done >= self.faults.drop_times:
                return None
            self._drops_done[path] = done + 1
            return self.faults.drop_after[path]

    def sending(self, delta: int) -> None:
        with self._lock:
            self.active += delta
            self.max_active = max(self.max_active, self.active)

    def record(self, request: Request) -> Request:
        with self._lock:
            self.log.append(request)
        return request


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-body (killed, cancelled) is what the fault tests do: no noise."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _hub_file_on_disk(path: str, disk: Path) -> HubFile:
    sha256, size = hashlib.sha256(), 0
    with disk.open("rb") as f:
        while chunk := f.read(8 << 20):
            sha256.update(chunk)
            size += len(chunk)
    # Large files are LFS on HF, so their git sha1 is never asked for; skip that second pass for them.
    git_sha1 = git_blob_sha1(disk.read_bytes()) if size < LFS_MIN else ""
    return HubFile(path, size, sha256.hexdigest(), git_sha1, disk=disk)


def hub_env(url: str) -> dict[str, str]:
    """Environment that points both SDKs at the local hub and keeps them off the internet."""
    return {
        "MODELSCOPE_ENDPOINT": url,
        "MODELSCOPE_DOMAIN": url.split("://", 1)[1],
        "HF_ENDPOINT": url,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "DO_NOT_TRACK": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


_MS_REPO = re.compile(r"^/api/v1/models/([^/]+)/([^/]+)(/revisions|/repo/files|/repo)?$")
_HF_INFO = re.compile(r"^/api/models/([^/]+)/([^/]+)(?:/revision/([^/]+))?$")
_HF_TREE = re.compile(r"^/api/models/([^/]+)/([^/]+)/tree/([^/]+)(?:/(.*))?$")
_HF_FILE = re.compile(r"^/([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")
_CDN_FILE = re.compile(r"^/cdn/([^/]+)/([^/]+)/(.+)$")


def _handler_for(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._route(head=True)

        def do_GET(self) -> None:
            self._route(head=False)

        def _route(self, head: bool) -> None:
            url = urlsplit(self.path)
            path, query = unquote(url.path), {k: v[0] for k, v in parse_qs(url.query).items()}
            self.entry = hub.record(Request(self.command, path))
            if hub.faults.latency_s:
                time.sleep(hub.faults.latency_s)
            if m := _CDN_FILE.match(path):
                entry = hub.repos.get(f"{m[1]}/{m[2]}", {}).get(m[3])
                if entry is None or query.get("sig") != "ok":
                    return self._json(403, {"error": "signature does not match"})
                return self._file(entry, head, hf=True, cdn=True)
            if m := _MS_REPO.match(path):
                return self._modelscope(f"{m[1]}/{m[2]}", m[3] or "", query, head)
            if m := _HF_TREE.match(path):
                return self._hf_tree(f"{m[1]}/{m[2]}", m[4] or "")
            if m := _HF_INFO.match(path):
                return self._hf_info(f"{m[1]}/{m[2]}")
            if m := _HF_FILE.match(path):
                repo = hub.repos.get(f"{m[1]}/{m[2]}")
                if repo is None:
                    return self._json(
                        404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                    )
                if m[4] not in repo:
                    return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                return self._file(repo[m[4]], head, hf=True)
            self._json(404, {"Code": 10010205001, "Message": f"no route {path}", "Success": False})

        # -- ModelScope ------------------------------------------------------------------------------
        def _modelscope(self, repo_id: str, what: str, query: dict[str, str], head: bool) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._json(404, {"Code": 10010205001, "Message": "model not found", "Success": False})
            if what == "":
                info = {"Id": 1, "Name": repo_id.split("/")[1], "Path": repo_id.split("/")[0]}
                return self._json(200, {"Code": 200, "Data": info, "Success": True})
            if what == "/revisions":
                branches = [{"Revision": "master", "CreatedAt": 0}]
                revs = {"RevisionMap": {"Branches": branches, "Tags": []}, "Revisions": []}
                return self._json(200, {"Code": 200, "Data": revs, "Success": True})
            if what == "/repo/files":
                files = [
                    {
                        "Name": f.path.rsplit("/", 1)[-1],
                        "Path": f.path,
                        "Size": f.size,
                        "Sha256": f.sha256,
                        "Type": "blob",
                        "Revision": COMMIT,
                        "IsLFS": f.size >= LFS_MIN,
                    }
                    for f in repo.values()
                ]
                return self._json(200, {"Code": 200, "Data": {"Files": files}, "Success": True})
            entry = repo.get(query.get("FilePath", ""))
            if entry is None:
                return self._json(404, {"Code": 10010205001, "Message": "file not found", "Success": False})
            self._file(entry, head, hf=False)

        # -- Hugging Face ----------------------------------------------------------------------------
        def _hf_info(self, repo_id: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            siblings = [{"rfilename": p} for p in repo]
            info = {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False, "siblings": siblings}
            self._json(200, info)

        def _hf_tree(self, repo_id: str, under: str) -> None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            entries: list[dict[str, Any]] = []
            for f in repo.values():
                if under and not f.path.startswith(under.rstrip("/") + "/"):
                    continue
                entry: dict[str, Any] = {"type": "file", "path": f.path, "size": f.size}
                if f.size >= LFS_MIN:
                    entry["oid"] = "b" * 40
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                else:
                    entry["oid"] = f.git_sha1
                entries.append(entry)
            self._json(200, entries)

        # -- bodies ----------------------------------------------------------------------------------
        def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _file(self, f: HubFile, head: bool, hf: bool, cdn: bool = False) -> None:
            if hub.faults.redirect and not head and not cdn:
                repo = next(r for r, files in hub.repos.items() if files.get(f.path) is f)
                self.send_response(302)
                self.send_header("Location", f"/cdn/{repo}/{f.path}?sig=ok")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = 0, f.size
            ranged = self.headers.get("Range")
            if ranged and not hub.faults.ignore_range:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged.strip())
                if m:
                    start = int(m[1])
                    end = min(f.size, int(m[2]) + 1) if m[2] else f.size
                if start >= f.size and f.size > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{f.size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            if not head:
                self.entry.file, self.entry.range_start, self.entry.range_end = f.path, start, end
            self.send_response(206 if (start, end) != (0, f.size) else 200)
            if (start, end) != (0, f.size):
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            if hf:
                etag = f.sha256 if f.size >= LFS_MIN else f.git_sha1
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(f.size))
            self.end_headers()
            if head:
                return
            hub.sending(+1)
            try:
                self._body(f, start, end)
            finally:
                hub.sending(-1)

        def _body(self, f: HubFile, start: int, end: int) -> None:
            drop = hub.take_drop(f.path)
            limit = end if drop is None else min(end, start + drop)
            rate = hub.faults.rate_per_connection
            if f.disk is not None and f.path not in hub.faults.corrupt and not hub.faults.delay_s:
                with f.disk.open("rb") as fh:
                    if not rate:
                        self.entry.sent = self.connection.sendfile(fh, offset=start, count=limit - start)
                    else:  # paced in 256 KiB pieces, still without copying through Python
                        began, pos, piece = time.monotonic(), start, 256 << 10
                        while pos < limit:
                            pos += self.connection.sendfile(fh, offset=pos, count=min(piece, limit - pos))
                            self.entry.sent = pos - start
                            ahead = began + (pos - start) / rate - time.monotonic()
                            if ahead > 0:
                                time.sleep(ahead)
            else:
                began = time.monotonic()
                for chunk in self._chunks(f, start, limit):
                    self.wfile.write(chunk)
                    self.entry.sent += len(chunk)
                    if rate and (ahead := began + self.entry.sent / rate - time.monotonic()) > 0:
                        time.sleep(ahead)
            if limit < end:  # the drop: the client sees a short body
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(2)

        def _chunks(self, f: HubFile, start: int, end: int) -> Iterator[bytes]:
            step = 64 << 10
            middle = f.size // 2
            for pos in range(start, end, step):
                chunk = f.read(pos, min(end, pos + step))
                if f.path in hub.faults.corrupt and pos <= middle < pos + len(chunk):
                    b = bytearray(chunk)
                    b[middle - pos] ^= 0xFF
                    chunk = bytes(b)
                if hub.faults.delay_s:
                    time.sleep(hub.faults.delay_s)
                yield chunk

    return Handler


# -- the tiny model ------------------------------------------------------------------------------------


def safetensors_header(tensors: Mapping[str, int]) -> bytes:
    """The header of a safetensors file of 1-D F32 tensors ``{name: byte size}``: length, then JSON."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, size in tensors.items():
        header[name] = {"dtype": "F32", "shape": [size // 4], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def safetensors_bytes(tensors: Mapping[str, bytes]) -> bytes:
    """A valid safetensors file of 1-D F32 tensors ``{name: raw little-endian data}``."""
    return safetensors_header({k: len(v) for k, v in tensors.items()}) + b"".join(tensors.values())


def tiny_model_files(shard_bytes: int = 96 << 10, shards: int = 2, seed: int = 0) -> dict[str, bytes]:
    """A small Qwen2-shaped repo: config, tokenizer files, and a multi-shard safetensors with its index."""
    files: dict[str, bytes] = {
        "config.json": json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}).encode(),
        "generation_config.json": b'{"do_sample": false}',
        "tokenizer_config.json": b'{"chat_template": "{{ messages }}"}',
        "README.md": b"# tiny\n",
    }
    weight_map: dict[str, str] = {}
    floats = shard_bytes // 4
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensor = f"model.layers.{i}.weight"
        data = _pseudo_random(floats * 4, seed * 1000 + i)
        files[name] = safetensors_bytes({tensor: data})
        weight_map[tensor] = name
    index = {"metadata": {"total_size": shards * floats * 4}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    return files


def _pseudo_random(n: int, seed: int) -> bytes:
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


def write_big_model(root: Path, total_bytes: int, shards: int) -> dict[str, Path]:
    """A multi-shard model of about ``total_bytes`` on disk (for benchmarks); returns ``{path: file}``."""
    root.mkdir(parents=True, exist_ok=True)
    small = tiny_model_files(shard_bytes=4, shards=shards)
    files: dict[str, Path] = {}
    for name, data in small.items():
        if not name.endswith(".safetensors"):
            (root / name).write_bytes(data)
            files[name] = root / name
    per = total_bytes // shards // 4 * 4
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        header = safetensors_header({f"model.layers.{i}.weight": per})
        with (root / name).open("wb") as f:
            f.write(header)
            block = os.urandom(8 << 20)
            left = per
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
        files[name] = root / name
    return files
