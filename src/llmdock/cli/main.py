"""``llmdock``: the entry point. Errors are rendered here only: one red line, a hint, exit 1.

``--debug`` (anywhere on the command line) shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer

from llmdock.cli import apply as apply_cmd
from llmdock.cli import bundle as bundle_cmd
from llmdock.cli import config as config_cmd
from llmdock.cli import demo as demo_cmd
from llmdock.cli import deploy
from llmdock.cli import doctor as doctor_cmd
from llmdock.cli import envs as envs_cmd
from llmdock.cli import hosts as hosts_cmd
from llmdock.cli import models as models_cmd
from llmdock.cli import serve as serve_cmd

app = typer.Typer(
    name="llmdock",
    help="Deploy open-weight LLMs on your own GPU servers: weights -> plan -> container -> ready endpoint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion bash|zsh, --show-completion (typer)
    rich_markup_mode=None,
)
deploy.register(app)
app.command("pull")(models_cmd.pull_command)
app.add_typer(models_cmd.app, name="models")
models_cmd.set_used_by(deploy.deployments_using)
app.add_typer(config_cmd.app, name="config")
app.add_typer(envs_cmd.app, name="env")
hosts_cmd.register(app)
app.command("doctor")(doctor_cmd.doctor)
app.command("demo")(demo_cmd.demo)
serve_cmd.register(app)
apply_cmd.register(app)
bundle_cmd.register(app)


def run() -> None:
    debug = "--debug" in sys.argv[1:] or os.environ.get("LLMDOCK_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        app(prog_name="llmdock")  # also under `python -m llmdock.cli.main` (completion scripts name it)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # rendered here and nowhere else
        from llmdock.errors import LlmdockError

        if debug or not isinstance(e, LlmdockError):
            raise
        from llmdock.cli.render import print_error

        print_error(e)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    run()
