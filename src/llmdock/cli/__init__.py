"""Command line: typer app, one module per command group. Heavy imports happen inside commands."""
