"""The fleet end to end: two "hosts" (network namespaces, each with its own dockerd and sshd, reached
over real SSH with a generated key; :mod:`tests.support.fleet`) and the real command line.

Host ``a`` has Docker's NVIDIA runtime and two H100s as nvidia-smi reports them (GPU 0 all but
full); host ``b`` has no GPU and the CPU engine image. The tests run in order on one set of hosts
and one llmdock home: add hosts, list them, place a GPU model on the host with room, run the tiny
model on ``b`` and chat with it through ``llmdock serve``, manage it there, then lose host ``a``.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli, own_home
from tests.support.fleet import Fleet, fleet
from tests.support.gateway import serve

pytestmark = [pytest.mark.docker, pytest.mark.slow]

MiB = 1 << 20
H100 = 81559  # MiB, as nvidia-smi reports an H100 80GB
GPUS_A = (
    f"0, GPU-7f1a2b3c-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, {H100}, 100\n"
    f"1, GPU-7f1a2b3c-0000-0000-0000-000000000001, NVIDIA H100 80GB HBM3, {H100}, 81079\n"
)
NAME = "fleet-tiny"


@pytest.fixture(scope="session")
def hosts(docker_client: Any, engine_image: str) -> Iterator[Fleet]:
    from llmdock.demo.image import BASE_TAG, ensure_base

    ensure_base(docker_client, log=lambda _: None)
    with fleet(docker_client, {"a": (GPUS_A, (BASE_TAG,)), "b": ("", (engine_image,))}) as built:
        yield built


@pytest.fixture(scope="module")
def fleet_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with own_home(tmp_path_factory.mktemp("fleet") / "home") as home:
        yield home


def add_args(f: Fleet, name: str, probe_image: str) -> list[str]:
    h = f.hosts[name]
    return [
        "hosts", "add", name, h.url, "--identity", str(f.identity), "--docker-socket", h.socket,
        "--probe-image", probe_image, "--models-dir", str(h.models_dir),
    ]  # fmt: skip


def ls(**kw: Any) -> dict[str, dict[str, Any]]:
    done = cli("hosts", "ls", "--json", **kw)
    assert done.returncode == 0, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)}


def test_add_hosts_and_list_what_they_have(hosts: Fleet, fleet_home: Path, engine_image: str) -> None:
    bad = cli("hosts", "add", "../a", hosts.hosts["a"].url)
    assert bad.returncode == 1 and "host name '../a' is not allowed" in bad.stderr
    bad = cli("hosts", "add", "a", f"http://{hosts.hosts['a'].address}")
    assert bad.returncode == 1 and "is not an ssh://USER@HOST URL" in bad.stderr
    a = hosts.hosts["a"]
    t0 = time.monotonic()
    down = cli("hosts", "add", "c", f"ssh://root@{a.address}:2222", "--identity", str(hosts.identity))
    assert down.returncode == 1 and time.monotonic() - t0 < 10
    assert (
        f"host c (root@{a.address}:2222) is not reachable:" in down.stderr
        and "Connection refused" in down.stderr
    )
    assert list(ls()) == ["local"]  # nothing was added
    assert not (fleet_home / "hosts" / "c").exists()

    done = cli(*add_args(hosts, "a", hosts.hosts["a"].probe_image))
    assert done.returncode == 0, done.stderr
    version = hosts.hosts["a"].client.version()["Version"]
    assert f"added a ({a.url}): Docker {version}, NVIDIA runtime present" in done.stdout
    assert "host key SHA256:" in done.stdout
    known = fleet_home / "hosts" / "a" / "known_hosts"  # the key sshd really has, owner-only
    host_key = (hosts.hosts["a"].root / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert stat.S_IMODE(known.stat().st_mode) == 0o600 and host_key in known.read_text()
    done = cli(*add_args(hosts, "b", engine_image))
    assert done.returncode == 0, done.stderr
    assert "no NVIDIA runtime" in done.stdout
    again = cli(*add_args(hosts, "b", engine_image))
    assert again.returncode == 1 and "a host named 'b' exists" in again.stderr

    rows = ls()
    assert list(rows) == ["local", "a", "b"]
    a, b = rows["a"], rows["b"]
    assert a["reachable"] and a["nvidia_runtime"] and a["docker_version"] == version
    assert [(g["index"], g["free_bytes"] // MiB, g["total_bytes"] // MiB) for g in a["gpus"]] == [
        (0, 100, H100),
        (1, 81079, H100),
    ]
    assert b["reachable"] and not b["nvidia_runtime"] and b["gpus"] == []
    for row in (a, b):  # the models dir there, read through that host's Docker
        assert row["disk_free_bytes"] > 0 and row["disk_total_bytes"] >= row["disk_free_bytes"]
    text = cli("hosts", "ls")
    assert "2× NVIDIA H100 80GB HBM3" in text.stdout and "0: 0.1/79.6, 1: 79.2/79.6 GiB" in text.stdout


def test_a_gpu_model_is_placed_on_the_host_with_room(
    hosts: Fleet, fleet_home: Path, tiny_model: Path
) -> None:
    done = cli("plan", str(tiny_model), "--engine", "vllm", "--name", "fleet-gpu", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["host"] == "a" and plan["gpus"] == [1]  # GPU 0 is full; no other host has a GPU
    assert any("host b:" in n and "NVIDIA runtime" in n for n in plan["notes"]), plan["notes"]
    pinned = cli("plan", str(tiny_model), "--engine", "vllm", "--host", "b", "--name", "fleet-gpu")
    assert pinned.returncode == 0 and "NVIDIA runtime" in pinned.stdout  # what-if: said, not raised
    unknown = cli("plan", str(tiny_model), "--host", "nowhere")
    assert unknown.returncode == 1 and "no host named 'nowhere' (known: local, a, b)" in unknown.stderr


def test_up_on_a_remote_host_serves_through_the_gateway(
    hosts: Fleet, fleet_home: Path, tiny_model: Path, tmp_path: Path, docker_client: Any
) -> None:
    import docker
    from openai import OpenAI

    up = ["up", str(tiny_model), "--engine", "transformers", "--host", "b", "--name", NAME]
    done = cli(*up, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    b = hosts.hosts["b"]
    assert result["host"] == "b" and result["url"].startswith(f"http://{b.address}:")
    container = hosts.hosts["b"].client.containers.get(NAME)  # on b's own Docker, labelled
    assert container.labels["io.llmdock.name"] == NAME and container.status == "running"
    copied = hosts.hosts["b"].models_dir / tiny_model.name  # the weights, copied to b's models dir
    assert [m["Source"] for m in container.attrs["Mounts"]] == [str(copied)]
    for f in tiny_model.iterdir():
        assert (copied / f.name).read_bytes() == f.read_bytes()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(NAME)  # and not on this host's
    again = cli(*up)
    assert again.returncode == 0 and "already running" in again.stdout
    kinds = [e["kind"] for e in json.loads(cli("inspect", NAME).stdout)["events"]]
    assert kinds.count("weights-copied") == 1, kinds

    ps = json.loads(cli("ps", "--json").stdout)
    mine = [d for d in ps if d["name"] == NAME]
    assert [(d["host"], d["address"], d["state"]) for d in mine] == [("b", b.address, "running")]
    table = cli("ps").stdout
    assert "HOST" in table and any(line.split()[:2] == [NAME, "b"] for line in table.splitlines())
    assert cli("logs", NAME, "--all").stdout.strip()
    auth = json.loads(cli("inspect", NAME).stdout)["engine_auth"]
    assert auth.startswith("not key-protected: the transformers engine takes no API key")

    with serve(tmp_path) as gw:
        gw.wait_ready(timeout=30)
        with OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=60) as client:
            reply = client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=4
            )
        assert reply.choices[0].message.content is not None

    stopped = cli("stop", NAME, "--timeout", "5")
    assert stopped.returncode == 0, stopped.stderr
    assert hosts.hosts["b"].client.containers.get(NAME).status == "exited"
    started = cli("start", NAME, "--no-wait")  # (its engine was seen serving above: not again)
    assert started.returncode == 0 and "started" in started.stdout, started.stderr
    assert hosts.hosts["b"].client.containers.get(NAME).status == "running"
    refused = cli("hosts", "rm", "b")
    assert refused.returncode == 1 and f"host b still has deployments: {NAME}" in refused.stderr
    assert f"llmdock rm -f {NAME}" in refused.stderr


def test_a_host_whose_key_changed_is_refused(hosts: Fleet, fleet_home: Path) -> None:
    hosts.hosts["a"].new_host_key()
    done = cli("hosts", "ls")
    assert done.returncode == 0
    a = hosts.hosts["a"]
    assert f"a: host a (root@{a.address}:22) is not reachable: its SSH host key is not the one recorded" in (
        " ".join(done.stderr.split())
    ), done.stderr


def test_a_host_that_goes_away_is_one_line_and_stalls_nothing(hosts: Fleet, fleet_home: Path) -> None:
    hosts.hosts["a"].stop_sshd()
    t0 = time.monotonic()
    done = cli("ps")
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    assert NAME in done.stdout  # b's deployment is still listed
    notes = [line for line in done.stderr.splitlines() if "host a" in line]
    assert len(notes) == 1 and "not reachable" in notes[0] and "Connection refused" in notes[0], done.stderr
    assert took < 8, f"ps took {took:.1f}s with a host down"

    rows = ls()
    assert not rows["a"]["reachable"] and "Connection refused" in rows["a"]["error"]
    assert rows["b"]["reachable"]
    rm = cli("hosts", "rm", "a")
    assert rm.returncode == 1 and "hosts rm -f a" in rm.stderr
    assert cli("hosts", "rm", "-f", "a").returncode == 0
    assert list(ls()) == ["local", "b"]

    assert cli("rm", "-f", NAME).returncode == 0
    assert not [c for c in hosts.hosts["b"].client.containers.list(all=True) if c.name == NAME]
    assert cli("hosts", "rm", "b").returncode == 0
    assert os.listdir(fleet_home / "hosts") == []
