"""A host's Docker socket, forwarded over SSH to a unix socket here.

Why a forward (``ssh -N -L LOCAL.sock:REMOTE.sock``) rather than the docker SDK's ``ssh://`` transport:
the SDK's transport shells out to ``ssh HOST docker system dial-stdio`` and takes no ssh options, so
llmdock could not pin the key (``-i``, ``IdentitiesOnly``), its own known_hosts file with
``StrictHostKeyChecking=yes``, or connect timeouts; it also needs the docker CLI on the host. The
forward needs only sshd there, takes every option on an argv, and gives the SDK a plain unix socket,
so the rest of llmdock talks to a remote daemon exactly as to the local one. The ssh process is
llmdock's child, ended when the runtime closes or llmdock exits (``atexit``; a Ctrl-C reaches it as
part of the terminal's process group); the socket lives in a 0700 directory, since it is root on
that host. (Not ``PR_SET_PDEATHSIG``: tunnels are opened from worker threads, and the signal comes
when the *thread* that started the child ends.)

Host keys: ``hosts add`` connects once with ``StrictHostKeyChecking=accept-new`` into the host's own,
empty known_hosts file and shows the fingerprint it recorded; every later connection uses that file
with ``StrictHostKeyChecking=yes``, so a changed host key is refused, never accepted.

Example::

    with Tunnel(host, known_hosts).open() as t:
        docker.DockerClient(base_url=t.url).ping()
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from llmdock.errors import RuntimeUnavailable
from llmdock.hosts import Host

CONNECT_TIMEOUT_S = 4  # ssh's TCP connect timeout: an unreachable host fails within a few seconds
READY_S = 10.0  # connect + key exchange + auth, at most
ALIVE_INTERVAL_S = 5  # keepalives: a host that vanishes mid-session is noticed within ~10 s


def reach_hint(host: Host) -> str:
    return (
        f"check that `ssh -p {host.port} {host.user}@{host.address}` works from here"
        + (f" with -i {host.identity}" if host.identity else "")
        + f"; `llmdock hosts rm {host.name}` forgets the host"
    )


def ssh_argv(host: Host, known_hosts: Path, local: Path, *, first: bool = False) -> list[str]:
    """The ``ssh`` argv that forwards ``host``'s Docker socket to ``local``. ``first``: trust the host
    key it meets (``hosts add``); otherwise only the recorded one."""
    argv = [
        "ssh",
        "-N",
        "-T",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        "-o", f"ServerAliveInterval={ALIVE_INTERVAL_S}",
        "-o", "ServerAliveCountMax=2",
        "-o", "ExitOnForwardFailure=yes",
        "-o", "StreamLocalBindUnlink=yes",
        "-o", "StreamLocalBindMask=0177",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"StrictHostKeyChecking={'accept-new' if first else 'yes'}",
        "-o", "LogLevel=ERROR",
    ]  # fmt: skip
    if host.identity:
        argv += ["-i", host.identity, "-o", "IdentitiesOnly=yes"]
    forward = f"{local}:{host.docker_socket}"
    return [*argv, "-p", str(host.port), "-L", forward, f"{host.user}@{host.address}"]


class Tunnel:
    """One ``ssh -L`` process and the unix socket it listens on; :meth:`open` waits until it serves."""

    def __init__(self, host: Host, known_hosts: Path, *, first: bool = False) -> None:
        self.host = host
        self.known_hosts = known_hosts
        self.first = first
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        assert self.dir is not None, "open() first"
        return self.dir / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def open(self) -> Tunnel:
        """Start ssh and wait for the forward; RuntimeUnavailable with ssh's own words when it fails."""
        if not shutil.which("ssh"):
            raise RuntimeUnavailable(
                "ssh is not installed here",
                "install the OpenSSH client (`apt-get install -y openssh-client`)",
            )
        if not self.first and not self.known_hosts.is_file():
            raise RuntimeUnavailable(
                f"host {self.host.name}: no recorded host key ({self.known_hosts} is missing)",
                f"add the host again: `llmdock hosts rm {self.host.name}` then `llmdock hosts add`",
            )
        self.dir = Path(tempfile.mkdtemp(prefix="llmdock-ssh-"))  # 0700: the socket is root on that host
        self.proc = subprocess.Popen(
            ssh_argv(self.host, self.known_hosts, self.socket, first=self.first),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + READY_S
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                reason = self._reason()
                self.close()
                raise RuntimeUnavailable(
                    f"host {self.host.name} ({self.host.user}@{self.host.address}:{self.host.port}) "
                    f"is not reachable: {reason}",
                    reach_hint(self.host),
                )
            time.sleep(0.02)
        return self

    def _reason(self) -> str:
        if self.proc is None:
            return "ssh did not start"
        if self.proc.poll() is None:
            return f"no answer within {READY_S:.0f}s"
        assert self.proc.stderr is not None
        lines = [ln.strip() for ln in self.proc.stderr.read().decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("Warning: Permanently added")]
        if any("REMOTE HOST IDENTIFICATION HAS CHANGED" in ln or "verification failed" in ln for ln in lines):
            return "its SSH host key is not the one recorded on `hosts add` (refused)"
        return lines[-1][:300] if lines else f"ssh exited with status {self.proc.returncode}"

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def fingerprints(known_hosts: Path) -> list[str]:
    """``SHA256:… (ED25519)`` for each key in ``known_hosts`` (``ssh-keygen -lf``)."""
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(known_hosts)], capture_output=True, text=True, check=False, timeout=10
    )
    found = []
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            found.append(f"{parts[1]} {parts[-1]}")
    return found
