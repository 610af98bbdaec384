"""Docker "hosts" on this machine for the fleet tests: each a network namespace with its own dockerd
and sshd, reached over real SSH with a generated key.

A fleet takes a free *slot* ``S`` (1-30, claimed by pid in ``/run/llmdock-fleet/slotS.owner``), so
that two test runs on one machine never share a namespace, an address or a socket; a slot whose owner
died is cleaned and taken again. Per host ``NAME`` (index ``i``, 1-4; ``N = 100 + 4 (S - 1) + i``):

- network namespace ``llmdock-fleet-sS-NAME``, joined to this host by a veth pair: ``10.213.N.1/24``
  on this side (``lfSNAME``), ``10.213.N.2/24`` inside;
- ``dockerd`` run with ``nsenter --net=…`` (not ``ip netns exec``, which remounts /sys so dockerd
  finds no devices cgroup) with its own data-root, exec-root and socket
  (``/run/llmdock-fleet/sS-NAME/docker.sock``), no bridge and no iptables: containers use the namespace's
  host network, as llmdock runs engines;
- ``sshd`` (Debian's openssh-server) in the namespace, listening on ``10.213.N.2:22``, root login by
  the generated key only.

A host built with ``gpus=CSV`` pretends to have NVIDIA GPUs the way a real one does as far as llmdock
can see: its dockerd has a runtime named ``nvidia`` (runc under that name, as
``nvidia-ctk runtime configure`` registers the real one) and a probe image whose ``nvidia-smi`` prints
``CSV`` in the real ``--query-gpu … --format=csv,noheader,nounits`` format (the real toolkit injects
the driver's nvidia-smi into any container; this is the one boundary fake). Such a host cannot start
a container on a GPU; the tests only plan there.

Everything is removed on :meth:`Fleet.close`, also after a failed test (containers, sshd, dockerd,
namespace, keys); leftovers of a run that was killed are removed before a new one starts. Each
host's image store (``/var/lib/llmdock-fleet/sS-NAME/data``) is kept, as Docker keeps its own images:
the next run then skips the ``docker load`` (checked by image ID); deleting its ~1.5 GB of small
files takes longer than loading it. ``remove_leftovers(S, NAME, purge=True)`` removes it too.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "llmdock-fleet"
STATE = Path("/var/lib") / PREFIX
RUN = Path("/run") / PREFIX
FAKE_GPU_IMAGE = "llmdock-fleet/fake-gpu:1"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


@dataclass
class FleetHost:
    name: str
    index: int
    root: Path  # ssh keys and configs of this host
    slot: int = 1
    gpus_csv: str = ""
    dockerd: subprocess.Popen[bytes] | None = None
    sshd: subprocess.Popen[bytes] | None = None
    client: Any = None

    @property
    def tag(self) -> str:
        return f"s{self.slot}-{self.name}"

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.tag}"

    @property
    def subnet(self) -> int:
        return 100 + 4 * (self.slot - 1) + self.index

    @property
    def address(self) -> str:
        return f"10.213.{self.subnet}.2"

    @property
    def url(self) -> str:
        return f"ssh://root@{self.address}"

    @property
    def run_dir(self) -> Path:
        return RUN / self.tag

    @property
    def socket(self) -> str:
        return str(self.run_dir / "docker.sock")

    @property
    def models_dir(self) -> Path:
        """A models dir for ``hosts add --models-dir`` that is this host's alone (removed with it)."""
        return self.root / "models"

    @property
    def probe_image(self) -> str:
        return FAKE_GPU_IMAGE if self.gpus_csv else ""

    def nsenter(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.netns}", *argv]

    # ---- network -------------------------------------------------------------------------------
    def make_netns(self) -> None:
        outside, inside = f"lf{self.slot}{self.name}", f"lf{self.slot}{self.name}n"
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        _run("ip", "link", "set", inside, "netns", self.netns)
        _run("ip", "addr", "add", f"10.213.{self.subnet}.1/24", "dev", outside)
        _run("ip", "link", "set", outside, "up")
        _run("ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", inside)
        _run("ip", "-n", self.netns, "link", "set", inside, "up")
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")

    # ---- dockerd -------------------------------------------------------------------------------
    def start_dockerd(self) -> None:
        import docker

        data = STATE / self.tag / "data"
        for d in (data, self.run_dir / "exec"):
            d.mkdir(parents=True, exist_ok=True)
        argv = self.nsenter(
            "dockerd",
            "--data-root",
            str(data),
            "--exec-root",
            str(self.run_dir / "exec"),
            "-H",
            f"unix://{self.socket}",
            "--pidfile",
            str(self.run_dir / "docker.pid"),
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
        )
        if self.gpus_csv:
            argv += ["--add-runtime", f"nvidia={shutil.which('runc') or '/usr/sbin/runc'}"]
        with (self.root / "dockerd.log").open("wb") as log:  # the child keeps its own descriptor
            self.dockerd = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.dockerd.poll() is not None:
                raise RuntimeError(
                    f"dockerd of {self.name} exited: {(self.root / 'dockerd.log').read_text()[-2000:]}"
                )
            if os.path.exists(self.socket):
                try:
                    client = docker.DockerClient(base_url=f"unix://{self.socket}", timeout=120)
                    client.ping()
                    self.client = client
                    return
                except docker.errors.DockerException:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd of {self.name} did not answer within 60 s")
            time.sleep(0.2)

    def load_image(self, main: Any, tag: str) -> None:
        """``docker save`` from the main daemon piped into this host's ``docker load`` (skipped when
        this host already holds the same image ID)."""
        import docker

        want = main.images.get(tag).id
        with contextlib.suppress(docker.errors.ImageNotFound):
            if self.client.images.get(tag).id == want:
                return
        save = subprocess.Popen(["docker", "save", tag], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "-H", f"unix://{self.socket}", "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            timeout=600,
            check=False,
        )
        assert save.stdout is not None
        save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            raise RuntimeError(f"loading {tag} into {self.name} failed: {load.stderr.decode()[-500:]}")

    def make_fake_gpu_image(self, base: str) -> None:
        """``base`` with an ``nvidia-smi`` that prints this host's GPU CSV (and no compute apps)."""
        script = (
            "#!/bin/sh\n"
            "# llmdock fleet test: answers like nvidia-smi --query-gpu/--query-compute-apps\n"
            'case "$*" in\n'
            "  *--query-gpu=*) cat <<'EOF'\n" + self.gpus_csv.strip() + "\nEOF\n;;\n"
            "  *--query-compute-apps=*) ;;\n"
            '  *) echo "fake nvidia-smi: $*" >&2; exit 2 ;;\n'
            "esac\n"
        ).encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("nvidia-smi")
            info.size, info.mode = len(script), 0o755
            tar.addfile(info, io.BytesIO(script))
        box = self.client.containers.create(base, command=["true"])
        try:
            box.put_archive("/usr/local/bin", buf.getvalue())
            repo, tag = FAKE_GPU_IMAGE.split(":")
            box.commit(repository=repo, tag=tag)
        finally:
            box.remove(force=True)

    # ---- sshd ----------------------------------------------------------------------------------
    def start_sshd(self, public_key: str) -> None:
        hostkey = self.root / "ssh_host_ed25519_key"
        if not hostkey.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey))
        (self.root / "authorized_keys").write_text(public_key)
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    "Port 22",
                    f"ListenAddress {self.address}",
                    f"HostKey {hostkey}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.root / 'authorized_keys'}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "AllowStreamLocalForwarding yes",
                    f"SetEnv DOCKER_HOST=unix://{self.socket}",
                ]
            )
            + "\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        with (self.root / "sshd.log").open("ab") as log:
            self.sshd = subprocess.Popen(
                self.nsenter("/usr/sbin/sshd", "-D", "-e", "-f", str(config)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.sshd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"sshd of {self.name} did not start: {(self.root / 'sshd.log').read_text()[-1000:]}"
                )
            time.sleep(0.05)

    def _listening(self) -> bool:
        import socket

        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((self.address, 22)) == 0

    def new_host_key(self) -> None:
        """sshd answers with another host key from its next start (a reinstalled or impersonated host)."""
        self.stop_sshd()
        for f in self.root.glob("ssh_host_ed25519_key*"):
            f.unlink()
        self.start_sshd((self.root / "authorized_keys").read_text())

    def stop_sshd(self) -> None:
        """The host "goes away" for llmdock: nothing answers SSH any more, open sessions are cut (its
        sshd and the per-connection sshd processes it forked; dockerd keeps running)."""
        if self.sshd is not None and self.sshd.poll() is None:
            sessions = _children(self.sshd.pid)
            self.sshd.terminate()
            self.sshd.wait(timeout=10)
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        self.sshd = None

    # ---- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        self.stop_sshd()
        if self.client is not None:
            with contextlib.suppress(Exception):
                for c in self.client.containers.list(all=True):
                    c.remove(force=True)
            self.client.close()
            self.client = None
        if self.dockerd is not None:
            self.dockerd.terminate()
            try:
                self.dockerd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.dockerd.kill()
                self.dockerd.wait(timeout=10)
            self.dockerd = None
        remove_leftovers(self.slot, self.name)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _stop(pid: int, wait_s: float = 30) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def remove_leftovers(slot: int, name: str, *, purge: bool = False) -> None:
    """What host ``name`` of ``slot`` left after an earlier, killed run: its dockerd (by its pidfile),
    namespace and run directory; with ``purge`` its image store too."""
    tag = f"s{slot}-{name}"
    pidfile = RUN / tag / "docker.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if b"dockerd" in Path(f"/proc/{pid}/cmdline").read_bytes():
            _stop(pid)
    netns = f"{PREFIX}-{tag}"
    if Path(f"/var/run/netns/{netns}").exists():
        _run("ip", "netns", "del", netns, check=False)
    _run("ip", "link", "del", f"lf{slot}{name}", check=False)
    for d in (RUN / tag, *([STATE / tag] if purge else [])):
        # Mounts dockerd leaves behind (its netns bind mount, a killed one's overlays), deepest first.
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m.startswith(f"{d}/")), key=len, reverse=True):
            _run("umount", "-l", m, check=False)
        shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_slot(names: list[str]) -> int:
    """A slot no live process holds; one whose owner died has its leftovers removed first."""
    RUN.mkdir(parents=True, exist_ok=True)
    for slot in range(1, 31):
        owner = RUN / f"slot{slot}.owner"
        try:
            fd = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError, ValueError):
                if _alive(int(owner.read_text().strip() or "0")):
                    continue
            for d in RUN.glob(f"s{slot}-*"):  # the dead owner's hosts
                remove_leftovers(slot, d.name.split("-", 1)[1])
            owner.unlink(missing_ok=True)
            try:
                fd = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue  # another run took it meanwhile
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        for name in names:
            remove_leftovers(slot, name)
        return slot
    raise RuntimeError("every fleet slot (1-30) is held by a live test run")


@dataclass
class Fleet:
    root: Path
    identity: Path
    slot: int
    hosts: dict[str, FleetHost] = field(default_factory=dict)

    def close(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.close()
        shutil.rmtree(self.root, ignore_errors=True)
        (RUN / f"slot{self.slot}.owner").unlink(missing_ok=True)


@contextlib.contextmanager
def fleet(main: Any, specs: dict[str, tuple[str, tuple[str, ...]]]) -> Iterator[Fleet]:
    """Build one host per ``specs`` entry ``NAME: (GPU_CSV or "", images to load)``; yield; remove all.

    Example::

        with fleet(docker_client, {"a": (H100_CSV, (BASE_TAG,)), "b": ("", (ENGINE_TAG,))}) as f:
            f.hosts["b"].url  # ssh://root@10.213.102.2 (in slot 1)
    """
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    identity = root / "id_ed25519"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "llmdock-fleet-test", "-f", str(identity))
    built = Fleet(root, identity, claim_slot(list(specs)))
    try:
        for i, (name, (gpus, images)) in enumerate(specs.items(), start=1):
            host = FleetHost(name, i, root / name, gpus_csv=gpus, slot=built.slot)
            host.root.mkdir()
            built.hosts[name] = host
            host.make_netns()
            host.start_dockerd()
            for tag in images:
                host.load_image(main, tag)
            if gpus:
                host.make_fake_gpu_image(images[0])
            host.start_sshd(Path(f"{identity}.pub").read_text())
        yield built
    finally:
        built.close()
