"""The `dsfs` command line: parses arguments, calls the Python API, prints tables or JSON.

Errors are converted here and only here: a `DsfsError` becomes one line on stderr and its exit code,
never a traceback. Commands that act on a dataset default to the last created or used one
(clearml-data's stateful style); `--id` takes an id or `project/name[@version]`.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from dsfs import Dataset
from dsfs.dataset import open_store
from dsfs.errors import DsfsError
from dsfs.errors import UsageError as DsfsUsage
from dsfs.model import VersionInfo


class MultiOption(click.Option):
    """An option that takes every following argument up to the next option: `--files a b c`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("multiple", True)
        super().__init__(*args, **kwargs)

    def add_to_parser(self, parser, ctx):
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            opt = parser._long_opt.get(name) or parser._short_opt.get(name)
            if opt is None:
                continue
            original = opt.process

            def process(value, state, original=original):
                values = [value]
                while state.rargs and not state.rargs[0].startswith("-"):
                    values.append(state.rargs.pop(0))
                for v in values:
                    original(v, state)

            opt.process = process


def multi(*names, **kwargs):
    return click.option(*names, cls=MultiOption, **kwargs)


# Not a terminal: never truncate or wrap (scripts grep ids and paths out of tables).
stdout = Console(soft_wrap=True) if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _table(columns, rows) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=column in ("id", "path", "version", "size"))
    for row in rows:
        table.add_row(*(str(c) for c in row))
    stdout.print(table)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _dataset(ctx, ref: str | None) -> Dataset:
    store = ctx.obj.get("store")
    if ref:
        ds = Dataset.get(ref, include_drafts=True, store=store)
        ds.make_current()
        return ds
    return Dataset.current(store)


id_option = click.option("--id", "ref", metavar="DATASET", help="Dataset id or project/name[@version] (default: the current one).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", envvar="DSFS_STORE", metavar="URL",
              help="Store URL (file://, s3://, gs://, az://, memory://). Default: $DSFS_STORE, else the embedded local store.")
@click.version_option(package_name="dsfs")
@click.pass_context
def cli(ctx, store):
    """dsfs: versioned datasets in object storage, mounted or materialized on compute nodes."""
    ctx.obj = {"store": store}


@cli.command()
@click.option("--project", required=True, help="Project (may contain '/').")
@click.option("--name", required=True, help="Dataset name.")
@click.option("--version", default=None, help="Semantic version (default: latest + patch, first 1.0.0).")
@multi("--parents", metavar="ID", help="Parent versions (ids or project/name[@version]), merged in order.")
@multi("--tags", metavar="TAG", help="Tags.")
@click.option("--description", default="", help="Free text.")
@click.pass_context
def create(ctx, project, name, version, parents, tags, description):
    """Create a draft version and make it the current dataset; prints its id."""
    ds = Dataset.create(project, name, version=version, parents=list(parents), tags=list(tags),
                        description=description, store=ctx.obj["store"])
    click.echo(ds.id)
    click.echo(f"created {ds.info.ref} (draft); add files with `dsfs add --files ...`", err=True)


@cli.command()
@multi("--files", required=True, metavar="PATH", help="Local files, folders or globs.")
@click.option("--dataset-folder", default=None, help="Folder inside the dataset to put them in.")
@click.option("--wildcard", "wildcards", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--non-recursive", is_flag=True, help="Do not descend into sub-folders.")
@id_option
@click.pass_context
def add(ctx, files, dataset_folder, wildcards, non_recursive, ref):
    """Add local files to the current draft (read at upload)."""
    ds = _dataset(ctx, ref)
    total = sum(ds.add_files(f, wildcard=list(wildcards) or None, recursive=not non_recursive,
                             dataset_path=dataset_folder) for f in files)
    click.echo(f"{total} file(s) added to {ds.info.ref}")


@cli.command()
@multi("--files", required=True, metavar="PATH", help="Dataset paths or globs.")
@click.option("--non-recursive", is_flag=True, help="A folder pattern does not take its sub-folders.")
@id_option
@click.pass_context
def remove(ctx, files, non_recursive, ref):
    """Remove files from the current draft (including files its parents have)."""
    ds = _dataset(ctx, ref)
    total = sum(ds.remove_files(f, recursive=not non_recursive) for f in files)
    click.echo(f"{total} file(s) removed from {ds.info.ref}")


@cli.command()
@click.option("--max-workers", type=click.IntRange(1, 64), default=None, help="Parallel pack uploads (default 4).")
@id_option
@click.pass_context
def upload(ctx, max_workers, ref):
    """Upload the added files' new chunks (resumable)."""
    ds = _dataset(ctx, ref)
    result = ds.upload(max_workers=max_workers)
    click.echo(f"uploaded {ds.info.ref}: {result['files']} file(s), {result['packs_sent']} pack(s) sent, "
               f"{_human(result['new_bytes'])} new")


@cli.command()
@click.option("--max-workers", type=click.IntRange(1, 64), default=None, help="Parallel pack uploads.")
@id_option
@click.pass_context
def close(ctx, max_workers, ref):
    """Upload what is left and finalize the version (immutable from then on)."""
    ds = _dataset(ctx, ref)
    ds.finalize(max_workers=max_workers)
    stats = ds.info.stats
    click.echo(f"closed {ds.info.ref} ({ds.id}): {stats['files']} file(s), {_human(stats['bytes'])}; "
               f"+{stats['added']} ~{stats['modified']} -{stats['removed']}, {_human(stats['new_bytes'])} new")


@cli.command()
@id_option
@click.pass_context
def publish(ctx, ref):
    """Mark a final version as published."""
    ds = _dataset(ctx, ref)
    ds.publish()
    click.echo(f"published {ds.info.ref} ({ds.id})")


@cli.command(name="list")
@id_option
@multi("--filter", "filters", metavar="GLOB", help="Only paths matching these globs.")
@click.option("--modified", is_flag=True, help="Only this version's added, modified and removed files.")
@json_option
@click.pass_context
def list_(ctx, ref, filters, modified, as_json):
    """List the files of a version's merged view."""
    ds = _dataset(ctx, ref)
    from dsfs import paths

    if modified:
        added, changed, removed = ds._own_changes()
        rows = [("added", p) for p in added] + [("modified", p) for p in changed] + [("removed", p) for p in removed]
        rows = sorted((r for r in rows if not filters or paths.matches(r[1], filters)), key=lambda r: r[1])
        if as_json:
            return _emit_json([{"change": c, "path": p} for c, p in rows])
        return _table(["change", "path"], rows)
    entries = ds.file_entries(list(filters) or None)
    if as_json:
        return _emit_json([{"path": e.path, "size": e.size, "mode": oct(e.mode), "digest": e.digest.hex()}
                           for e in entries])
    _table(["size", "path"], [(e.size, e.path) for e in entries])
    click.echo(f"{len(entries)} file(s), {_human(sum(e.size for e in entries))}", err=True)


def _info_row(v: VersionInfo):
    return (v.id, v.project, v.name, v.version, v.state, ",".join(v.tags), v.stats.get("files", ""),
            _human(v.stats["bytes"]) if "bytes" in v.stats else "", v.created)


@cli.command()
@click.option("--project", default=None, help="Project (glob).")
@click.option("--name", default=None, help="Name (glob).")
@multi("--tags", metavar="TAG", help="All of these tags.")
@multi("--ids", metavar="ID", help="Only these ids.")
@json_option
@click.pass_context
def search(ctx, project, name, tags, ids, as_json):
    """Find versions by project, name, tags or ids."""
    found = Dataset.search(project=project, name=name, tags=list(tags), ids=list(ids), store=ctx.obj["store"])
    if as_json:
        return _emit_json([v.to_json() for v in found])
    _table(["id", "project", "name", "version", "state", "tags", "files", "size", "created"], map(_info_row, found))


@cli.command()
@click.argument("ref", metavar="DATASET", required=False)
@json_option
@click.pass_context
def show(ctx, ref, as_json):
    """Show a version's record (default: the current dataset)."""
    ds = _dataset(ctx, ref)
    data = ds.info.to_json()
    if as_json:
        return _emit_json(data)
    stats = data.pop("stats")
    data.pop("changes")
    data["parents"] = ", ".join(data["parents"]) or "-"
    data["tags"] = ", ".join(data["tags"]) or "-"
    data["metadata"] = json.dumps(data["metadata"]) if data["metadata"] else "-"
    for key in ("files", "bytes", "added", "modified", "removed", "new_bytes"):
        if key in stats:
            data[key] = _human(stats[key]) if "bytes" in key else stats[key]
    _table(["field", "value"], [(k, v) for k, v in data.items() if k != "format"])


@cli.group()
def metadata():
    """Read and write a version's metadata (labels; allowed on final versions)."""


@metadata.command(name="set")
@click.argument("key")
@click.argument("value")
@id_option
@click.pass_context
def metadata_set(ctx, key, value, ref):
    """Set KEY to VALUE (JSON if it parses, else a string)."""
    ds = _dataset(ctx, ref)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    ds.set_metadata({key: parsed})


@metadata.command(name="get")
@click.argument("key", required=False)
@id_option
@json_option
@click.pass_context
def metadata_get(ctx, key, ref, as_json):
    """Print one key, or all metadata."""
    ds = _dataset(ctx, ref)
    value = ds.get_metadata(key)
    if as_json or key is None:
        return _emit_json(value)
    click.echo(value if isinstance(value, str) else json.dumps(value))


@cli.command()
@click.option("--project", required=True)
@click.option("--name", required=True)
@click.option("--new-name", required=True)
@click.pass_context
def rename(ctx, project, name, new_name):
    """Rename every version of project/name."""
    n = Dataset.rename(new_name, project, name, store=ctx.obj["store"])
    click.echo(f"renamed {n} version(s) of {project}/{name} to {project}/{new_name}")


@cli.command()
@click.option("--project", required=True)
@click.option("--name", required=True)
@click.option("--new-project", required=True)
@click.pass_context
def move(ctx, project, name, new_project):
    """Move every version of project/name to another project."""
    n = Dataset.move_to_project(new_project, project, name, store=ctx.obj["store"])
    click.echo(f"moved {n} version(s) of {project}/{name} to {new_project}/{name}")


@cli.command()
@id_option
@click.option("--force", is_flag=True, help="Delete even if other versions inherit from it.")
@click.pass_context
def delete(ctx, ref, force):
    """Delete a version and the packs it added."""
    if not ref:
        ref = Dataset.current(ctx.obj["store"]).id
    info = Dataset.delete(ref, force=force, store=ctx.obj["store"])
    click.echo(f"deleted {info.ref} ({info.id})")


@cli.command()
@click.argument("path")
@id_option
@click.pass_context
def cat(ctx, path, ref):
    """Write one file of a final version to stdout (bytes verified)."""
    ds = _dataset(ctx, ref)
    sys.stdout.buffer.write(ds.read_file(path))
    sys.stdout.buffer.flush()


def cache_options(fn):
    fn = click.option("--cache-size", default=None, metavar="SIZE",
                      help="Cache budget, e.g. 50G (default: $DSFS_CACHE_SIZE, else half the free disk).")(fn)
    fn = click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                      help="Cache folder (default: $DSFS_CACHE_DIR, else $XDG_CACHE_HOME/dsfs).")(fn)
    return fn


def _consumer(ctx, ref, cache_dir, cache_size) -> Dataset:
    """A final version to consume, with the node cache."""
    from dsfs.cache import Cache

    if ref:  # consumers resolve names to final versions only; an explicit id may still be a draft
        ds = Dataset.get(ref, store=ctx.obj["store"])
        ds.make_current()
    else:
        ds = Dataset.current(ctx.obj["store"])
    return ds.use_cache(Cache(cache_dir, cache_size))


@cli.command()
@click.argument("ref", metavar="DATASET")
@click.argument("target", type=click.Path(file_okay=False))
@multi("--include", metavar="GLOB", help="Only paths matching these globs (a folder name takes its subtree).")
@multi("--exclude", metavar="GLOB", help="Skip paths matching these globs.")
@click.option("--max-workers", type=click.IntRange(1, 64), default=8, show_default=True, help="Parallel ranged GETs.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder, replacing files of the same name.")
@cache_options
@click.pass_context
def download(ctx, ref, target, include, exclude, max_workers, overwrite, cache_dir, cache_size):
    """Materialize a version (or part of it) into TARGET. Resumable."""
    ds = _consumer(ctx, ref, cache_dir, cache_size)
    result = ds.download(target, list(include) or None, list(exclude) or None, max_workers, overwrite)
    click.echo(f"{ds.info.ref}: {result.written} file(s) written ({_human(result.bytes)}), "
               f"{result.skipped} already complete, in {target}")


@cli.command()
@click.argument("ref", metavar="DATASET", required=False)
@click.option("--copy", "copy_to", type=click.Path(file_okay=False), default=None, help="Make a mutable copy in DIR.")
@click.option("--link", "link_to", type=click.Path(), default=None, help="Make DIR a symlink to the cached copy.")
@click.option("--overwrite", is_flag=True, help="Allow a non-empty --copy DIR / an existing --link.")
@click.option("--max-workers", type=click.IntRange(1, 64), default=8, show_default=True)
@cache_options
@click.pass_context
def get(ctx, ref, copy_to, link_to, overwrite, max_workers, cache_dir, cache_size):
    """Print the path of a read-only cached copy of a version (materialized once)."""
    import os

    ds = _consumer(ctx, ref, cache_dir, cache_size)
    if copy_to:
        click.echo(ds.get_mutable_local_copy(copy_to, overwrite, max_workers))
        return
    path = ds.get_local_copy(max_workers)
    if link_to:
        link_to = os.path.abspath(link_to)
        if os.path.lexists(link_to):
            if not (overwrite and (os.path.islink(link_to) or (os.path.isdir(link_to) and not os.listdir(link_to)))):
                raise DsfsUsage(f"{link_to} exists; pass --overwrite to replace it (a symlink or an empty folder)")
            os.unlink(link_to) if os.path.islink(link_to) else os.rmdir(link_to)
        os.symlink(path, link_to)
        path = link_to
    click.echo(path)


@cli.command()
@id_option
@click.option("--folder", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder to check (default: the cached copy).")
@click.option("--filesize", is_flag=True, help="Compare sizes only, do not hash.")
@json_option
@cache_options
@click.pass_context
def verify(ctx, ref, folder, filesize, as_json, cache_dir, cache_size):
    """Compare a folder with a version's manifest; exit 1 on any missing, extra or different file."""
    ds = _consumer(ctx, ref, cache_dir, cache_size)
    report = ds.verify_dataset_hash(folder, skip_hash=filesize)
    if as_json:
        _emit_json(report.as_dict())
    else:
        for kind in ("missing", "extra", "different"):
            for path in getattr(report, kind):
                click.echo(f"{kind:9}  {path}")
        click.echo(f"{report.checked} file(s) checked: " + ("OK" if report.ok else
                   f"{len(report.missing)} missing, {len(report.extra)} extra, {len(report.different)} different"),
                   err=True)
    if not report.ok:
        sys.exit(1)


@cli.group()
def cache():
    """Inspect and trim the node cache."""


@cache.command(name="stats")
@json_option
@cache_options
def cache_stats(as_json, cache_dir, cache_size):
    """Chunks, bytes and budget of the cache."""
    from dsfs.cache import Cache

    stats = Cache(cache_dir, cache_size).stats()
    if as_json:
        return _emit_json(stats)
    _table(["field", "value"], [(k, _human(v) if k in ("bytes", "budget") else v) for k, v in stats.items()])


@cache.command(name="prune")
@click.option("--to", "to_size", default=None, metavar="SIZE", help="Target size (default: the low watermark).")
@cache_options
def cache_prune(to_size, cache_dir, cache_size):
    """Evict least recently used chunks down to SIZE."""
    from dsfs.cache import LOW_WATERMARK, Cache, parse_size

    c = Cache(cache_dir, cache_size)
    target = parse_size(to_size) if to_size is not None else int(c.budget * LOW_WATERMARK)
    freed = c.evict(target, keep_recent=False)
    click.echo(f"freed {_human(freed)}; cache holds {_human(c.used_bytes())}")


@cache.command(name="clear")
@cache_options
def cache_clear(cache_dir, cache_size):
    """Drop every cached chunk, view and copy."""
    from dsfs.cache import Cache
    from dsfs.materialize import remove_copies

    c = Cache(cache_dir, cache_size)
    freed = c.clear() + remove_copies(c)
    click.echo(f"freed {_human(freed)}")


@cli.command(name="init-store", hidden=True)
@click.pass_context
def init_store(ctx):
    """Create the store marker at --store if missing."""
    store = open_store(ctx.obj["store"], create=True)
    click.echo(store.display_url)


from dsfs.cli.mount import mount, mounts, unmount  # noqa: E402

cli.add_command(mount)
cli.add_command(unmount)
cli.add_command(mounts)


def main(argv=None) -> None:
    try:
        code = cli.main(args=argv, prog_name="dsfs", standalone_mode=False)
        if isinstance(code, int):
            sys.exit(code)
    except DsfsError as exc:
        click.echo(f"dsfs: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("dsfs: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("dsfs: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(141)
    sys.exit(0)


if __name__ == "__main__":
    main()
