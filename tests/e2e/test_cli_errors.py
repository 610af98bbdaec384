"""Bad input on the command line: one clear line and a hint, the right exit code, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--timeout", "-5"], 2, "Invalid value for '--timeout'"),
        (["--runtime", "local", "--env", "nosuchenv"], 1, "engine environment 'nosuchenv' does not exist"),
        (["--cpus", "0-99999", "--gpus", "none"], 1, "which this host does not have"),
        (
            ["--kv-cache-space", "2", "--gpus", "all"],
            1,
            "--kv-cache-space sizes the KV cache of vLLM on the CPU",
        ),
    ],
)
def test_up_refuses_with_one_line(home: Path, model: str, args: list[str], code: int, fragment: str) -> None:
    done = cli("up", model, "--name", "x", *args)
    assert done.returncode == code and fragment in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("up", "KEY=VALUE"),
        ("plan", "SECONDS"),
        ("serve", "MODEL=URL"),
        ("pull", "GLOB"),
        ("apply", "SECONDS"),
    ],
)
def test_help_shows_what_to_write_not_python_types(command: str, shown: str) -> None:
    done = cli(*command.split(), "--help")
    assert done.returncode == 0 and shown in done.stdout
    assert "<list[str]>" not in done.stdout and "float range" not in done.stdout


@pytest.mark.parametrize(("shell", "var"), [("bash", "complete_bash"), ("zsh", "complete_zsh")])
def test_shell_completion_completes_up_flags(shell: str, var: str) -> None:
    script = cli("--show-completion", shell, env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0 and "_LLMDOCK_COMPLETE" in script.stdout
    words = (
        {"COMP_WORDS": "llmdock up --tens", "COMP_CWORD": "2"}
        if shell == "bash"
        else {"_TYPER_COMPLETE_ARGS": "llmdock up --tens"}
    )
    done = cli(env={"_LLMDOCK_COMPLETE": var, **words})
    assert "--tensor-parallel-size" in done.stdout


def test_a_what_if_plan_works_with_docker_down_and_says_what_it_could_not_see(
    home: Path, tmp_path: Path
) -> None:
    import json

    from tests.support.modelconfigs import config

    model = tmp_path / "Qwen2.5-7B-Instruct"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config("Qwen--Qwen2.5-7B-Instruct")))
    down = {"LLMDOCK_DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = cli("plan", str(model), "--assume-gpus", "2x80GiB", env=down)
    assert done.returncode == 0, done.stderr
    assert "would deploy" in done.stdout and "not checked" in done.stdout and "fit: TP 1" in done.stdout
