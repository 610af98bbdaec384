#!/usr/bin/env python3
"""A stand-in for micromamba (which cannot be installed here) answering the commands llmdock uses,
with micromamba's JSON: ``--version``, ``env list --json``, ``create -y -n NAME python=VER``,
``run -n NAME ARGV…``, ``env remove -y -n NAME``. Environments go to ``$MAMBA_ROOT_PREFIX/envs/NAME``.

``create`` makes a venv of the Python running this script *with its site-packages visible*, so the
engine pip would install is already there and pip returns at once (a test shortcut; a real micromamba
environment is a separate Python). The requested Python version is recorded in ``conda-meta/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(os.environ.get("MAMBA_ROOT_PREFIX", str(Path.home() / "micromamba")))


def envs() -> list[str]:
    d = ROOT / "envs"
    return [str(ROOT), *sorted(str(p) for p in d.iterdir() if p.is_dir())] if d.is_dir() else [str(ROOT)]


def name_of(args: list[str]) -> str:
    return args[args.index("-n") + 1]


def main(args: list[str]) -> int:
    if args == ["--version"]:
        print("2.0.5")
        return 0
    if args[:2] == ["env", "list"] and "--json" in args:
        print(json.dumps({"envs": envs()}, indent=2))
        return 0
    if args[:1] == ["create"]:
        name = name_of(args)
        python = next((a.split("=", 1)[1] for a in args if a.startswith("python=")), "")
        prefix = ROOT / "envs" / name
        if prefix.exists():
            print(f"critical libmamba Non-conda folder exists at prefix {prefix}", file=sys.stderr)
            return 1
        # The venv module follows sys.executable's own venv; base the env on the real site-packages.
        venv.EnvBuilder(system_site_packages=True, with_pip=False).create(prefix)
        site = next((prefix / "lib").glob("python3*/site-packages"))
        here = [p for p in sys.path if p.endswith("site-packages")]
        (site / "parent-site.pth").write_text("\n".join(here) + "\n")
        launcher = prefix / "bin" / "transformers"  # pip finds transformers installed: no script of its own
        launcher.write_text(
            f"#!{prefix / 'bin' / 'python'}\nimport sys\nfrom transformers.cli.transformers import main\nsys.exit(main())\n"
        )
        launcher.chmod(0o755)
        (prefix / "conda-meta").mkdir()
        (prefix / "conda-meta" / "history").write_text(f"# requested python={python}\n")
        return 0
    if args[:1] == ["run"]:
        prefix = ROOT / "envs" / name_of(args)
        argv = args[args.index("-n") + 2 :]
        env = {
            **os.environ,
            "PATH": f"{prefix / 'bin'}:{os.environ.get('PATH', '')}",
            "CONDA_PREFIX": str(prefix),
        }
        return subprocess.run(argv, env=env, check=False).returncode
    if args[:2] == ["env", "remove"]:
        prefix = ROOT / "envs" / name_of(args)
        if not prefix.exists():
            print(f"environment {name_of(args)} does not exist", file=sys.stderr)
            return 1
        shutil.rmtree(prefix)
        return 0
    print(f"fake micromamba: unsupported {args}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
