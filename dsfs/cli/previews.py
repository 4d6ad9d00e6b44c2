"""`dsfs preview` and `dsfs stats`: a version's previews and statistics (dsfs.authoring.previews) on
the terminal, or as JSON; `dsfs project`: a project's default preview mode (dsfs.authoring.projects)."""

from __future__ import annotations

import click

from dsfs.cli.output import emit_json, json_option, table
from dsfs.cli.refs import dataset_ref
from dsfs.units import human

BAR = 40  # characters of the longest histogram bar


def _dataset(ctx, ref):
    from dsfs.dataset import Dataset

    store = ctx.obj.get("store")
    return Dataset.get(ref, include_drafts=True, store=store) if ref else Dataset.current(store)


@click.command()
@dataset_ref
@json_option
@click.pass_context
def preview(ctx, ref, as_json):
    """Show a version's previews: tables, histograms, scalars, texts, images and media
    (reported with get_logger) and its file statistics.

    Example: `dsfs preview vision/cats --json`"""
    ds = _dataset(ctx, ref)
    items = ds.previews()
    if as_json:
        return emit_json({"id": ds.id, "previews": items})
    if not items:
        click.echo(f"no previews of {ds.info.ref} ({ds.id})")
        return
    for item in items:
        heading = " / ".join(x for x in (item.get("title"), item.get("series")) if x)
        click.echo(f"\n[{item['kind']}] {heading}")
        _show(item)


def _show(item: dict) -> None:
    kind = item["kind"]
    if kind == "statistics":
        _show_statistics(item.get("statistics", {}))
    elif kind == "table":
        table([str(c) for c in item.get("columns", [])], [["" if v is None else v for v in row]
                                                          for row in item.get("rows", [])])
        if item.get("truncated"):
            click.echo("(first rows only)")
    elif kind == "histogram":
        values = item.get("values") or []
        labels = item.get("xlabels") or list(range(len(values)))
        _bars([(str(label), value) for label, value in zip(labels, values, strict=False)])
    elif kind == "scalar":
        click.echo(f"{item.get('value')} (iteration {item.get('iteration', 0)})")
    elif kind == "text":
        click.echo(item.get("text", ""))
    else:  # image, media: listed; their bytes are in the store (Dataset.preview_blob)
        click.echo(f"{item.get('name', '')}  {item.get('mime', '')}  {human(item.get('bytes', 0))}  "
                   f"blob {item.get('blob', '')[:16]}")


def _bars(rows: list[tuple[str, float]]) -> None:
    numbers = [v for _, v in rows if isinstance(v, int | float)]
    top = max(numbers, default=0) or 1
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        n = value if isinstance(value, int | float) else 0
        click.echo(f"{label.ljust(width)}  {'#' * round(BAR * n / top):<{BAR}}  {value}")


def _show_statistics(stats: dict) -> None:
    click.echo(f"{stats.get('files', 0)} file(s), {human(stats.get('bytes', 0))}; changes against the parents: "
               + (", ".join(f"{k} {v}" for k, v in sorted(stats.get("changes", {}).items())) or "-"))
    for key, title in (("by_extension", "extension"), ("by_folder", "top-level folder")):
        table([title, "files", "bytes"], [(r["name"], r["files"], human(r["bytes"])) for r in stats.get(key, [])])
    click.echo("file sizes:")
    _bars([(f"< {human(b['to'])}", b["files"]) for b in stats.get("size_histogram", [])])


@click.command()
@dataset_ref
@click.option("--recompute", is_flag=True, help="Make them again from the version's file table.")
@json_option
@click.pass_context
def stats(ctx, ref, recompute, as_json):
    """A version's file statistics: files and bytes by extension and top-level folder, file sizes,
    changes against its parents. Made at close from the file list (no file is read).

    Example: `dsfs stats vision/cats --recompute`"""
    ds = _dataset(ctx, ref)
    found = ds.statistics(recompute=recompute)
    if as_json:
        return emit_json({"id": ds.id, "statistics": found})
    _show_statistics(found)


@click.group()
def project():
    """A project's settings, kept in the store for every author: its default preview mode."""


@project.command(name="show")
@click.argument("name")
@json_option
@click.pass_context
def project_show(ctx, name, as_json):
    """The preview mode a version closed in project NAME gets, and the project that sets it.

    Example: `dsfs project show vision/2024`"""
    from dsfs import paths
    from dsfs.authoring import projects
    from dsfs.catalog import open_store

    store = open_store(ctx.obj.get("store"))
    mode, owner = projects.preview_mode(store, paths.label("project", name))
    if as_json:
        return emit_json({"project": name, "preview": mode, "set_by": owner})
    where = f"set by project {owner}" if owner else "the default: no project above sets one"
    click.echo(f"preview: {mode} ({where})")


@project.command(name="set")
@click.argument("name")
@click.option("--preview", "mode", required=True, type=click.Choice(["auto", "stats", "none", "inherit"]),
              help="The default of `dsfs close --preview` for versions of this project and the projects "
                   "inside it; stats: no sample of the data is stored; inherit: remove the setting.")
@click.pass_context
def project_set(ctx, name, mode):
    """Set project NAME's default preview mode (an author's `close --preview` still overrides it).

    Example: `dsfs project set medical --preview stats`"""
    from dsfs.authoring import projects
    from dsfs.catalog import open_store

    store = open_store(ctx.obj.get("store"), create=True)  # set before the project's first version
    projects.set_preview_mode(store, name, None if mode == "inherit" else mode)
    shown, owner = projects.preview_mode(store, name)
    click.echo(f"project {name}: preview {shown}" + (f" (inherited from {owner})" if owner and owner != name else ""))
