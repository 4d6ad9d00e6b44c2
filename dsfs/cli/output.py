"""What every command prints with: JSON for scripts, tables, human sizes.

Its own module so that cli.main and the command modules it registers (cli.datastore, ...) share it
without importing each other. rich is loaded only to draw a table on a terminal: a pipe gets plain
columns, and `dsfs --help` never pays for it.
"""

from __future__ import annotations

import sys

import click

_console = None


def stdout():
    """The rich console for tables on a terminal (made on first use)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(soft_wrap=True)
    return _console


def emit_json(data) -> None:
    import json  # not at start-up: most commands print no JSON

    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def table(columns, rows) -> None:
    rows = [[str(c) for c in row] for row in rows]
    if not sys.stdout.isatty():
        # plain aligned columns: what scripts and pipes expect, and 5x faster than rich for 10,000 rows
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                 for line in [list(columns), *rows]]
        click.echo("\n".join(lines))
        return
    from rich.table import Table

    grid = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(column, no_wrap=column in ("id", "path", "version", "size"))
    for row in rows:
        grid.add_row(*row)
    stdout().print(grid)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
