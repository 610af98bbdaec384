"""Rendering helpers shared by commands (rich is imported here, lazily by callers)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from llmdock.errors import EngineFailed, LlmdockError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(e: LlmdockError) -> None:
    if isinstance(e, EngineFailed) and e.log_tail:
        err.print("[dim]--- last engine log lines ---[/dim]")
        for line in e.log_tail[-25:]:
            err.print(escape(line), style="dim")
        err.print("[dim]------------------------------[/dim]")
    err.print(f"[bold red]error:[/bold red] {escape(e.message)}")
    if e.hint:
        err.print(f"[yellow]hint:[/yellow] {escape(e.hint)}")
    for alternative in getattr(e, "alternatives", ())[1:]:
        err.print(f"[yellow]  or:[/yellow] {escape(alternative)}")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
