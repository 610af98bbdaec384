"""Hosts: names and URLs, the ssh argv, facts parsing, placement across hosts, engine keys — pure
functions table-driven, lifecycle over in-memory runtimes standing in for each host's Docker."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from llmdock import settings
from llmdock.errors import InvalidSpec, NotFound
from llmdock.gateway.supervisor import DockerSource
from llmdock.hosts import Host, check_name, member_key, parse_url, split_member
from llmdock.hosts.facts import HostFacts, parse_cpu_list, parse_df, parse_proc
from llmdock.hosts.keys import EngineKeys
from llmdock.hosts.ssh import ssh_argv
from llmdock.lifecycle import Lifecycle
from llmdock.planning.container import ContainerConfig
from llmdock.planning.hosts import HostOption, choose_host
from llmdock.planning.inventory import Gpu
from llmdock.runtimes.base import Deployment
from llmdock.runtimes.multi import Runtimes
from llmdock.spec import DeploymentSpec
from llmdock.state import Store
from tests.support.memruntime import MemoryRuntime

GiB = 1 << 30
VLLM_CPU = settings.KEYS["image.vllm-cpu"].default
VLLM = settings.KEYS["image.vllm"].default


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("ssh://ops@gpu1", ("ops", "gpu1", 22)),
        ("ssh://root@10.0.0.7:2222", ("root", "10.0.0.7", 2222)),
        (" ssh://a@b.example.com/ ", ("a", "b.example.com", 22)),
    ],
)
def test_ssh_urls(url: str, parsed: tuple[str, str, int]) -> None:
    assert parse_url(url) == parsed


@pytest.mark.parametrize(
    "url",
    ["gpu1", "http://ops@gpu1", "ssh://gpu1", "ssh://ops:pw@gpu1", "ssh://ops@gpu1/x", "ssh://-oProxy@x",
     "ssh://ops@gpu1:99999", "ssh://ops@gpu1?x=1"],
)  # fmt: skip
def test_bad_ssh_urls_say_how_to_write_one(url: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        parse_url(url)
    assert "ssh://USER@HOST" in e.value.hint


@pytest.mark.parametrize("name", ["../a", "a/b", "", ".x", "-x", "local", "a b", "x" * 33])
def test_host_names_cannot_escape_or_shadow(name: str) -> None:
    with pytest.raises(InvalidSpec):
        check_name(name)


def test_host_create_checks_its_paths(tmp_path: Path) -> None:
    assert Host.create("gpu-1", "ssh://ops@h").docker_socket == "/var/run/docker.sock"
    with pytest.raises(InvalidSpec, match="no such file"):
        Host.create("gpu1", "ssh://ops@h", identity=str(tmp_path / "missing"))
    with pytest.raises(InvalidSpec, match="absolute"):
        Host.create("gpu1", "ssh://ops@h", docker_socket="docker.sock")
    key = tmp_path / "id"
    key.write_text("k")
    assert Host.create("gpu1", "ssh://ops@h", identity=str(key)).identity == str(key.resolve())


def test_member_keys_round_trip() -> None:
    assert member_key("docker", "local") == "docker" and split_member("docker") == ("docker", "local")
    assert member_key("docker", "b") == "docker@b" and split_member("docker@b") == ("docker", "b")


def test_ssh_argv_pins_the_key_and_the_host_key(tmp_path: Path) -> None:
    host = Host("b", "ssh://ops@10.0.0.7:2222", identity="/k/id", docker_socket="/run/d.sock")
    argv = ssh_argv(host, tmp_path / "kh", tmp_path / "l.sock")
    assert argv[0] == "ssh" and argv[-1] == "ops@10.0.0.7"
    assert argv[argv.index("-L") + 1] == f"{tmp_path / 'l.sock'}:/run/d.sock"
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == "/k/id"
    options = {
        argv[i + 1].split("=")[0]: argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv) if a == "-o"
    }
    assert options["StrictHostKeyChecking"] == "yes" and options["BatchMode"] == "yes"
    assert options["UserKnownHostsFile"] == str(tmp_path / "kh") and options["IdentitiesOnly"] == "yes"
    assert int(options["ConnectTimeout"]) <= 5
    first = ssh_argv(host, tmp_path / "kh", tmp_path / "l.sock", first=True)
    assert "StrictHostKeyChecking=accept-new" in first  # only `hosts add` trusts a key it meets


PROC = """\
/proc/net/tcp:  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
/proc/net/tcp:   0: 0200D50A:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
/proc/net/tcp:   1: 0100007F:1F41 0100007F:0016 01 00000000:00000000 00:00000000 00000000     0        0 2 1
/proc/net/tcp6:  sl  local_address                         remote_address                        st
/proc/net/tcp6:   0: 00000000000000000000000000000000:1F42 00000000000000000000000000000000:0000 0A 0
/proc/meminfo:MemTotal:       32768000 kB
/proc/meminfo:MemAvailable:   16384000 kB
/proc/sys/net/ipv4/ip_local_port_range:32768\t60999
/sys/devices/system/cpu/online:0-3,8
"""


def test_facts_from_the_probe_output() -> None:
    facts = parse_proc(PROC)
    assert facts["listening_ports"] == {22, 8002}  # 8001 is a connection, not a listener
    assert (
        facts["memory_total_bytes"] == 32768000 * 1024 and facts["memory_available_bytes"] == 16384000 * 1024
    )
    assert facts["ephemeral_ports"] == (32768, 60999) and facts["cpus"] == (0, 1, 2, 3, 8)
    df = (
        "Filesystem     1-blocks        Used   Available Capacity Mounted on\n/dev/sda1 1000 400 600 40% /m\n"
    )
    assert parse_df(df) == (600, 1000) and parse_df("df: /m: No such file") is None
    assert parse_cpu_list("x") == ()
    back = HostFacts.from_dict(json.loads(json.dumps(HostFacts(gpus=(Gpu(0, "u", "H100", 8, 4),)).to_dict())))
    assert back.gpus == (Gpu(0, "u", "H100", 8, 4),)


def option(host: str, free: int, kinds: tuple[str, ...] = (), gpus: int = 1) -> HostOption:
    n = gpus

    class P:  # the fields placement reads
        problems = tuple(f"{k} problem" for k in kinds)
        problem_kinds = kinds
        gpus = tuple(range(n))

    return HostOption(host, P(), free)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("placement", "options", "chosen"),
    [
        ("binpack", [option("local", 0, ("GpuUnavailable",)), option("a", 70), option("b", 10)], "b"),
        ("spread", [option("local", 0, ("GpuUnavailable",)), option("a", 70), option("b", 10)], "a"),
        ("binpack", [option("a", 10), option("b", 10)], "a"),  # a tie: the first listed
        ("binpack", [option("a", 5, ("ImageMissing",)), option("b", 9)], "a"),  # the image can be loaded
        ("binpack", [option("a", 5, ("DoesNotFit",)), option("b", 9, ("RuntimeUnavailable",))], None),
        # fewest GPUs first: 4 × 40 GB left with less free memory than 2 × 80 GB, and still not chosen
        ("binpack", [option("a100", 20, gpus=4), option("h100", 90, gpus=2)], "h100"),
        ("spread", [option("a100", 200, gpus=4), option("h100", 90, gpus=2)], "h100"),
        ("spread", [option("a", 30, gpus=2), option("b", 90, gpus=2)], "b"),
    ],
)
def test_choose_host(placement: str, options: list[HostOption], chosen: str | None) -> None:
    picked, notes = choose_host(options, placement)
    assert (picked.host if picked else None) == chosen
    refused = [o.host for o in options if o.plan.problem_kinds and o.plan.problem_kinds != ("ImageMissing",)]
    assert [n.split(":")[0] for n in notes if not n.startswith("placed")] == [f"host {h}" for h in refused]


class Recording(MemoryRuntime):
    """A host's Docker in memory that keeps the container configs it was given."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.configs: list[ContainerConfig] = []

    def create(self, cfg: ContainerConfig) -> Deployment:
        self.configs.append(cfg)
        return super().create(cfg)


def fleet_lifecycle(home: Path, **hosts: HostFacts) -> tuple[Lifecycle, dict[str, Recording]]:
    """A Lifecycle over this host and ``hosts`` (each a Docker in memory, its facts in the cache)."""
    s = settings.load({"LLMDOCK_HOME": str(home)})
    images = {VLLM_CPU: "sha256:cpu", VLLM: "sha256:gpu"}
    rts = {"docker": Recording(images=images)} | {
        f"docker@{name}": Recording(images=images, gpu_runtime=f.gpu_runtime) for name, f in hosts.items()
    }
    for rt in rts.values():
        rt.versions = {VLLM_CPU: "0.32.0", VLLM: "0.34.0"}
    lc = Lifecycle(s, dict(rts), Store(s.db_path))
    for name, f in hosts.items():
        lc.hosts.add(Host.create(name, f"ssh://ops@10.0.0.{len(name)}"))
        lc.hosts.save_facts(name, f)
    return lc, rts


def cpu_host() -> HostFacts:
    import time

    return HostFacts(
        memory_total_bytes=64 * GiB, memory_available_bytes=60 * GiB, cpus=(0, 1, 2, 3), read_at=time.time()
    )


def gpu_host(*free_gib: int) -> HostFacts:
    gpus = tuple(
        Gpu(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", 80 * GiB, f * GiB) for i, f in enumerate(free_gib)
    )
    return HostFacts(**{**vars(cpu_host()), "gpu_runtime": True, "gpus": gpus})


def test_a_deployment_on_another_host_gets_its_own_key_which_no_plan_shows(
    tmp_path: Path, model: str
) -> None:
    lc, rts = fleet_lifecycle(tmp_path / "home", b=cpu_host())
    spec = DeploymentSpec.create(model, name="q", engine="vllm", gpus="none", host="b")
    result = lc.up(spec, wait=False)
    assert result.plan.host == "b" and not rts["docker"].configs
    cfg = rts["docker@b"].configs[0]
    key = cfg.env["VLLM_API_KEY"]
    assert key.startswith("sk-engine-") and key not in json.dumps(result.to_dict())
    assert cfg.command[cfg.command.index("--host") + 1] == "0.0.0.0"  # reachable from the gateway
    path = tmp_path / "home" / "engine-keys" / "q"
    assert path.read_text().strip() == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    auth = lc.inspect("q")["engine_auth"]
    assert auth.startswith("key-protected: the engine on b") and key not in auth
    assert lc.up(spec, wait=False).action == "unchanged"  # the same request, on the host it runs on

    dep = lc.get("q")
    source = DockerSource(Runtimes({"docker@b": rts["docker@b"]}), lc.keys)
    [target] = source.targets()
    assert target.api_key == key and target.base_url == f"http://{dep.address}:{dep.port}"
    lc.rm("q", force=True)
    assert not path.exists() and source.targets() == []

    here = lc.up(DeploymentSpec.create(model, name="h", engine="vllm", gpus="none", host="local"), wait=False)
    assert here.plan.host == "local" and "VLLM_API_KEY" not in rts["docker"].configs[0].env
    assert lc.inspect("h")["engine_auth"] == "listens on this host only (loopback)"


def test_placement_takes_the_host_with_room_and_says_why_not_the_others(tmp_path: Path, model: str) -> None:
    lc, _ = fleet_lifecycle(tmp_path / "home", a=gpu_host(10, 10), b=gpu_host(70), c=cpu_host())
    gpu = DeploymentSpec.create(model, name="g", engine="vllm")
    packed = lc.plan(gpu, strict=False)
    assert packed.host == "a"  # binpack: the least free GPU memory that still takes it
    assert any(n.startswith("host c:") and "NVIDIA runtime" in n for n in packed.notes), packed.notes
    spread = lc.plan(DeploymentSpec.create(model, name="g", engine="vllm", placement="spread"), strict=False)
    assert spread.host == "b"
    pinned = lc.plan(DeploymentSpec.create(model, name="g", engine="vllm", host="c"), strict=False)
    assert pinned.host == "c" and any("NVIDIA runtime" in p for p in pinned.problems)
    with pytest.raises(NotFound, match=r"no host named 'z' \(known: local, a, b, c\)"):
        lc.plan(DeploymentSpec.create(model, name="g", host="z"), strict=False)


def test_an_unknown_host_is_named_before_any_hub_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: asking it fails
    lc, rts = fleet_lifecycle(tmp_path / "home", a=cpu_host())
    spec = DeploymentSpec.create("Qwen/Qwen2.5-0.5B-Instruct", name="g", host="z")
    for run in (lambda: lc.up(spec, wait=False), lambda: lc.plan(spec, strict=False)):
        with pytest.raises(NotFound, match=r"no host named 'z' \(known: local, a\)"):
            run()
    assert not any(rt.configs for rt in rts.values())


def test_a_host_that_cannot_be_read_is_left_out_of_placement(tmp_path: Path, model: str) -> None:
    lc, _ = fleet_lifecycle(tmp_path / "home", b=gpu_host(70))
    lc.hosts.store.db.execute("DELETE FROM host_facts")  # stale: must be read, and cannot be here
    plan = lc.plan(DeploymentSpec.create(model, name="g", engine="vllm", gpus="none"), strict=False)
    assert plan.host == "local" and any(n.startswith("host b left out:") for n in plan.notes)


def test_engine_keys_are_per_deployment_and_owner_only(tmp_path: Path) -> None:
    keys = EngineKeys(tmp_path / "k")
    one, two = keys.issue("a"), keys.issue("b")
    assert one != two and keys.read("a") == one and keys.issue("a") != one
    keys.remove("a")
    assert keys.read("a") is None and keys.read("../etc/passwd") is None
    with pytest.raises(ValueError):
        keys.path("../x")


def test_a_host_whose_models_disk_cannot_hold_the_weights_is_left_out(tmp_path: Path, model: str) -> None:
    small = HostFacts(**{**vars(gpu_host(70)), "disk_free_bytes": 1})
    lc, _ = fleet_lifecycle(tmp_path / "home", a=small, b=gpu_host(70, 70))
    plan = lc.plan(DeploymentSpec.create(model, name="g", engine="vllm"), strict=False)
    assert plan.host == "b"
    assert any(n.startswith("host a left out: 0.0 GiB free in its models dir") for n in plan.notes), (
        plan.notes
    )
