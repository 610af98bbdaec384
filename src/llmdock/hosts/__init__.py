"""Docker hosts beyond this one: a team's GPU servers, reached through their own Docker over SSH.

No agent of llmdock's runs on a host: only its ``dockerd`` (whose socket SSH forwards to us, see
:mod:`llmdock.hosts.ssh`) and its ``sshd``. This host is always there, implicitly, as ``local``.

    Host            what ``hosts add`` recorded (name, ssh URL, key, remote socket, models dir)
    HostRegistry    hosts in the state database, their fingerprints, and a short-lived facts cache
    RemoteRuntime   the Runtime of one host: a DockerRuntime over its SSH tunnel (hosts.remote)
    HostFacts       GPUs, ports, RAM, disk as read through the host's Docker (hosts.facts)

Example::

    host = Host.create("gpu1", "ssh://ops@10.0.0.7", identity="~/.ssh/id_ed25519")
    host.address  # "10.0.0.7": where the gateway reaches its engines
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from llmdock.errors import InvalidSpec

LOCAL = "local"
DEFAULT_SOCKET = "/var/run/docker.sock"
# A host name is used in paths and member keys: letters, digits, '-', '_' and '.', no leading dot.
HOST_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,31}$")
URL_HINT = "write it as ssh://USER@HOST or ssh://USER@HOST:PORT, e.g. ssh://ops@gpu1.example.com"


def check_name(name: str) -> str:
    """``name`` if it can name a host; InvalidSpec otherwise (``local`` is this host's own)."""
    if name == LOCAL:
        raise InvalidSpec(
            "the name 'local' is this host's own", "give the other host another name, e.g. gpu1"
        )
    if not HOST_NAME_RE.match(name):
        raise InvalidSpec(
            f"host name {name!r} is not allowed",
            "use letters, digits, '-' and '_', starting with a letter or digit (at most 32)",
        )
    return name


def parse_url(url: str) -> tuple[str, str, int]:
    """``ssh://ops@gpu1:2222`` -> ``("ops", "gpu1", 2222)``; InvalidSpec for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or 22
    except ValueError:
        raise InvalidSpec(f"{url!r} is not an ssh:// URL", URL_HINT) from None
    if parts.scheme != "ssh" or not parts.hostname or not parts.username:
        raise InvalidSpec(f"{url!r} is not an ssh://USER@HOST URL", URL_HINT)
    if parts.password is not None or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidSpec(f"{url!r} carries more than USER@HOST:PORT", URL_HINT)
    if parts.username.startswith("-") or parts.hostname.startswith("-"):
        raise InvalidSpec(f"{url!r}: a user or host may not start with '-'", URL_HINT)
    return parts.username, parts.hostname, port


@dataclass(frozen=True)
class Host:
    name: str
    url: str
    identity: str = ""  # the private key ssh uses (empty: ssh's own choice, e.g. the agent)
    docker_socket: str = DEFAULT_SOCKET  # dockerd's socket on that host
    models_dir: str = ""  # where weights live on that host (empty: this host's models dir)
    probe_image: str = ""  # image the facts probe runs in (empty: the default vLLM image)
    fingerprint: str = ""  # the host key's SHA256 fingerprint, as trusted on `hosts add`

    @classmethod
    def create(
        cls,
        name: str,
        url: str,
        *,
        identity: str | None = None,
        docker_socket: str = DEFAULT_SOCKET,
        models_dir: str = "",
        probe_image: str = "",
    ) -> Host:
        check_name(name)
        parse_url(url)
        key = ""
        if identity:
            path = Path(identity).expanduser().resolve()
            if not path.is_file():
                raise InvalidSpec(
                    f"--identity {identity}: no such file", "give the private key ssh logs in with"
                )
            key = str(path)
        if not docker_socket.startswith("/"):
            raise InvalidSpec(
                f"--docker-socket {docker_socket!r} is not an absolute path", f"e.g. {DEFAULT_SOCKET}"
            )
        if models_dir and not models_dir.startswith("/"):
            raise InvalidSpec(f"--models-dir {models_dir!r} is not an absolute path", "e.g. /data/models")
        return cls(name, url.strip(), key, docker_socket, models_dir.rstrip("/"), probe_image)

    @property
    def user(self) -> str:
        return parse_url(self.url)[0]

    @property
    def address(self) -> str:
        """The host part of the URL: where the gateway reaches the engines of this host."""
        return parse_url(self.url)[1]

    @property
    def port(self) -> int:
        return parse_url(self.url)[2]


def member_key(runtime: str, host: str) -> str:
    """The :class:`~llmdock.runtimes.multi.Runtimes` member of ``runtime`` on ``host``:
    ``docker`` (this host's), ``docker@gpu1``."""
    return runtime if host in ("", LOCAL) else f"{runtime}@{host}"


def split_member(key: str) -> tuple[str, str]:
    """``docker@gpu1`` -> ``("docker", "gpu1")``; ``local`` -> ``("local", "local")``."""
    runtime, _, host = key.partition("@")
    return runtime, host or LOCAL
