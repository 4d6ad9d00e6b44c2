"""What every command prints with: JSON for scripts, tables (sizes: dsfs.units.human).

Its own module so that cli.main and the command modules it registers (cli.datastore, ...) share it
without importing each other. rich is loaded only to draw a table on a terminal: a pipe gets plain
columns, and `dsfs --help` never pays for it.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterable
from operator import methodcaller

import click

SPOOL_ROWS = 4096  # lines written to a spool at once ...
SPOOL_READ = 1 << 18  # ... and characters read back at once (1 MiB: +8 MB of peak RSS)
BATCH = 4096  # rows written to stdout at once by the streaming forms

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


def wants_json(ctx: click.Context) -> bool:
    """--json given to the group (`dsfs --json close`) or after any command (dsfs.cli.main)."""
    return bool(ctx.obj and ctx.obj.get("json"))


def say(ctx: click.Context, data: dict, text: str, err: bool = False) -> None:
    """An action's result: `data` as JSON under --json, else `text` (on stderr if err)."""
    if wants_json(ctx):
        emit_json(data)
    else:
        click.echo(text, err=err)


json_option = click.option("--json", "as_json", is_flag=True, callback=lambda ctx, _, value: value or wants_json(ctx),
                           help="Print JSON for scripts (also `dsfs --json COMMAND`).")


def emit_json_rows(rows: Iterable) -> None:
    """A JSON array written row by row as the rows come: the same text `emit_json` prints for their
    list, without holding them all (a listing of millions of files)."""
    import json
    from json.encoder import encode_basestring_ascii as quote  # C: what json.dumps does to a str

    encode = json.JSONEncoder(default=str).encode  # one encoder for the other values
    batch: list[str] = []
    first = True
    for row in rows:
        if _flat(row):
            # laid out by hand as json.dumps(indent=2, sort_keys=True) lays it out in an array: json.dumps
            # per row (indent= makes it pure Python) was slower than for the whole list at once
            text = "{\n" + ",\n".join(
                f"    {quote(k)}: {quote(v) if type(v) is str else v if type(v) is int else encode(v)}"
                for k, v in sorted(row.items())) + "\n  }"
        else:
            text = json.dumps(row, indent=2, sort_keys=True, default=str).replace("\n", "\n  ")
        batch.append(("[\n  " if first else ",\n  ") + text)
        first = False
        if len(batch) >= BATCH:
            click.echo("".join(batch), nl=False)
            batch = []
    batch.append("[]" if first else "\n]")
    click.echo("".join(batch))


def emit_json_object(scalars: dict, arrays: dict[str, Iterable[str]]) -> None:
    """One JSON object of scalar fields and arrays of strings, written as json.dumps(indent=2,
    sort_keys=True) writes it, the arrays' items as they come (from a spool, say): memory stays flat
    whatever their length."""
    import json

    fields = sorted([*scalars, *arrays])
    click.echo("{", nl=False)
    for n, key in enumerate(fields):
        click.echo(("," if n else "") + f"\n  {json.dumps(key)}: ", nl=False)
        if key in scalars:
            click.echo(json.dumps(scalars[key], sort_keys=True, default=str), nl=False)
            continue
        batch, first = [], True
        for item in arrays[key]:
            batch.append(("[\n    " if first else ",\n    ") + json.dumps(item))
            first = False
            if len(batch) >= BATCH:
                click.echo("".join(batch), nl=False)
                batch = []
        batch.append("[]" if first else "\n  ]")
        click.echo("".join(batch), nl=False)
    click.echo("\n}" if fields else "}")


def emit_json_lines(rows: Iterable) -> None:
    """One compact JSON document per line, keys sorted, written as the rows come (JSON Lines: what a
    script reads a row at a time)."""
    import json

    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode
    batch: list[str] = []
    for row in rows:
        batch.append(encode(row))
        if len(batch) >= BATCH:
            click.echo("\n".join(batch))
            batch = []
    if batch:
        click.echo("\n".join(batch))


def _flat(row) -> bool:
    """A non-empty dict of str keys and values that are neither dicts nor lists."""
    return (isinstance(row, dict) and bool(row) and all(isinstance(k, str) for k in row)
            and not any(isinstance(v, dict | list | tuple) for v in row.values()))


def table(columns, rows: Iterable) -> None:
    """Rows under column headers: plain aligned columns on a pipe, a rich table on a terminal. Rows
    given as an iterator (not a list) are not held in memory on a pipe: they are spooled to a temp
    file while the widths are measured, then printed from it; their cells but the last must hold no
    tab or newline. A path, the last cell of `dsfs list`, may hold both (valid, if rare): a tab is
    printed as it is, and a newline splits the row's line, as `ls` prints such a name on a pipe
    (`--json` gives it exactly)."""
    if not sys.stdout.isatty():
        # plain aligned columns: what scripts and pipes expect, and 5x faster than rich for 10,000 rows
        if not isinstance(rows, list | tuple):
            _spooled_table(list(columns), rows)
            return
        rows = [[str(c) for c in row] for row in rows]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        click.echo("\n".join(_aligned(line, widths) for line in [list(columns), *rows]))
        return
    rows = [[str(c) for c in row] for row in rows]
    from rich.table import Table

    grid = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(column, no_wrap=column in ("id", "path", "version", "size"))
    for row in rows:
        grid.add_row(*row)
    stdout().print(grid)


def _aligned(cells, widths) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)).rstrip()


def _spooled_table(columns: list[str], rows: Iterable) -> None:
    """`table` on a pipe for rows given as an iterator: the lines of `_aligned`, made with one
    %-format per row (its widths known once the rows are spooled) instead of a ljust per cell
    (`dsfs list` of 1,000,000 files: 14.4 -> 12.4 s)."""
    if len(columns) == 2:
        _spooled_pairs(columns, rows)
        return
    widths = [len(c) for c in columns]
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n") as spool:
        write = spool.write
        for row in rows:
            cells = list(map(str, row))
            widths = list(map(max, widths, map(len, cells)))
            write("\t".join(cells) + "\n")
        spool.seek(0)
        line_format = "  ".join([*(f"%-{w}s" for w in widths[:-1]), "%s"])  # the last cell ends the line
        _echo_batches([_aligned(columns, widths)],
                      ((line_format % tuple(line[:-1].split("\t"))).rstrip() for line in spool))


def _spooled_pairs(columns: list[str], rows: Iterable) -> None:
    """`_spooled_table` of two columns (`dsfs list`: size, path), with the first column's width
    kept as the longest cell seen, not a list of widths rebuilt per row: 4.0 -> 1.6 us a row. The
    spool is written SPOOL_ROWS lines at a time and read back SPOOL_READ characters at a time: a
    text file's write and line iteration cost ~1 us a line between them."""
    width = len(columns[0])
    plain = True  # every row one line with one tab, no carriage return: the spool can be padded by expandtabs
    with tempfile.TemporaryFile("w+", encoding="utf-8", newline="\n") as spool:

        def write(lines: list[str]) -> None:
            nonlocal plain
            text = "".join(lines)
            plain = plain and text.count("\n") == text.count("\t") == len(lines) and "\r" not in text
            spool.write(text)

        lines: list[str] = []
        for first, last in rows:
            first = str(first)
            if len(first) > width:
                width = len(first)
            lines.append(f"{first}\t{last}\n")
            if len(lines) >= SPOOL_ROWS:
                write(lines)
                lines.clear()
        write(lines)
        spool.seek(0)
        click.echo(_aligned(columns, [width, len(columns[1])]))
        rest = ""
        while block := spool.read(SPOOL_READ):
            block, newline, rest = (rest + block).rpartition("\n")  # rest: a line the next block ends, or ""
            if not newline:
                continue
            if plain:
                # one tab a line, none in a cell: each line's tab padded to the path's column in C
                # (`first.ljust(width) + "  " + last`, 0.9 -> 0.1 s a million lines)
                click.echo(block.expandtabs(width + 2))
                continue
            click.echo("\n".join([first.ljust(width) + "  " + last
                                  for first, _, last in map(methodcaller("partition", "\t"), block.split("\n"))]))


def _echo_batches(lines: list[str], more: Iterable[str]) -> None:
    """Print lines, BATCH at a time (one write per batch, not per line)."""
    for line in more:
        lines.append(line)
        if len(lines) >= BATCH:
            click.echo("\n".join(lines))
            lines = []
    if lines:
        click.echo("\n".join(lines))
