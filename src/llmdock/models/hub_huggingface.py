"""Hugging Face through ``huggingface_hub``: ``HfApi.model_info`` resolves the revision to a commit,
``list_repo_tree`` lists files (size, LFS sha256 or git blob id), and ``hf_hub_url`` with the SDK's auth
headers says where a file is (:mod:`llmdock.models.transfer` fetches it in ranges; ``open_file`` streams
it through the SDK's own HTTP session). The endpoint is ``HF_ENDPOINT`` read when the
adapter is made (the SDK itself reads it only at import); the token is ``token`` or the SDK's usual
``HF_TOKEN`` / stored login.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from llmdock.errors import HubError, NotFound
from llmdock.models.hubs import Body, Listing, Location, RemoteFile, unreachable, unreachable_error


def _translate(e: Exception, what: str) -> Exception:
    if (reason := unreachable(e)) is not None:
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return unreachable_error("Hugging Face", endpoint, "HF_ENDPOINT", reason)
    name = type(e).__name__
    status = getattr(getattr(e, "response", None), "status_code", None)
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError") or status == 404:
        return NotFound(
            f"{what} not found on Hugging Face ({name})",
            "check the model ID and --revision on huggingface.co, or try --source modelscope",
        )
    if name == "GatedRepoError" or status in (401, 403):
        return HubError(
            f"Hugging Face refused access to {what} ({name})",
            "accept the model's terms on huggingface.co, then pass --token or set HF_TOKEN",
        )
    return HubError(
        f"Hugging Face request for {what} failed: {e}",
        "check the network, or set HF_ENDPOINT to a reachable mirror; a pull can be resumed",
    )


class HuggingFaceHub:
    source = "huggingface"

    def __init__(self, token: str | None = None) -> None:
        from huggingface_hub import HfApi

        self._endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        self._token = token
        self._api: Any = HfApi(endpoint=self._endpoint, token=token)

    def list_files(self, repo_id: str, revision: str) -> Listing:
        from huggingface_hub.hf_api import RepoFile

        try:
            info = self._api.model_info(repo_id, revision=revision)
            commit = info.sha or revision
            tree = list(self._api.list_repo_tree(repo_id, revision=commit, recursive=True))
        except Exception as e:
            raise _translate(e, f"model {repo_id}@{revision}") from e
        files = [
            RemoteFile(
                path=f.path,
                size=int(f.size),
                sha256=f.lfs.sha256 if f.lfs is not None else None,
                git_sha1=None if f.lfs is not None else f.blob_id,
            )
            for f in tree
            if isinstance(f, RepoFile)
        ]
        return Listing(commit=commit, files=files)

    def locate(self, repo_id: str, revision: str, path: str) -> Location:
        """``/{repo}/resolve/{commit}/{path}`` on the endpoint (it redirects LFS files to a CDN)."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        url = hf_hub_url(repo_id, path, revision=revision, endpoint=self._endpoint)
        return Location(url, dict(build_hf_headers(token=self._token)), _translate)

    @contextlib.contextmanager
    def open_file(self, repo_id: str, revision: str, path: str, offset: int) -> Iterator[Body]:
        from huggingface_hub import get_session, hf_hub_url
        from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

        url = hf_hub_url(repo_id, path, revision=revision, endpoint=self._endpoint)
        headers = build_hf_headers(token=self._token)
        headers["Accept-Encoding"] = "identity"
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with contextlib.ExitStack() as stack:
            try:
                resp = stack.enter_context(
                    get_session().stream("GET", url, headers=headers, follow_redirects=True)
                )
                if resp.status_code >= 400:
                    resp.read()
                    resp.raise_for_status()
            except Exception as e:
                raise _translate(e, f"{repo_id}/{path}") from e
            start = offset if resp.status_code == 206 else 0
            yield Body(start=start, chunks=_chunks(resp, path))


def _chunks(resp: Any, path: str) -> Iterator[bytes]:
    # Only reads happen inside this generator (the caller writes), so any error here is the network's.
    try:
        yield from resp.iter_raw()  # transport-sized pieces: nothing is held back when a link drops
    except Exception as e:
        raise HubError(f"connection broke while reading {path}: {e}") from e
