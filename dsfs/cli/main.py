"""The `dsfs` command line: parses arguments, calls the Python API, prints tables or JSON.

Errors are converted here and only here: a `DsfsError` becomes one line on stderr and its exit code,
never a traceback. Commands that act on a dataset default to the last created or used one
(clearml-data's stateful style); `--id` takes an id or `project/name[@version]`.

Start-up: at module level this imports click and light modules only; a command imports what it
needs when it runs, so `dsfs --help` and `dsfs --version` load no store, fsspec, LMDB or rich
(tests/test_startup.py; bench/bench_startup.py times it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from typing import TYPE_CHECKING

import click

from dsfs.cli import installed_version
from dsfs.cli.datastore import datastore, push, store_ref
from dsfs.cli.output import emit_json as _emit_json
from dsfs.cli.output import emit_json_lines, emit_json_object, emit_json_rows, json_option
from dsfs.cli.output import say as _say
from dsfs.cli.output import table as _table
from dsfs.cli.output import wants_json as _json
from dsfs.cli.refs import ID_HELP, dataset_ref, id_too, one_ref
from dsfs.errors import CorruptData, DatasetNotFound, DsfsError
from dsfs.errors import UsageError as DsfsUsage
from dsfs.units import human as _human

if TYPE_CHECKING:
    from dsfs.dataset import Dataset
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


class _Deferred:
    """A class of the API, imported on its first attribute access (`Dataset.get(...)`): the commands
    below name `Dataset` as before, and loading it (the store, fsspec, LMDB: ~0.3 s) waits for a
    command that uses it."""

    def __init__(self, module: str, name: str):
        self._module, self._name = module, name

    def __getattr__(self, attr: str):
        return getattr(getattr(importlib.import_module(self._module), self._name), attr)


if not TYPE_CHECKING:
    Dataset = _Deferred("dsfs.dataset", "Dataset")


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"{ctx.find_root().info_name}, version {installed_version()}")  # click.version_option's words
        ctx.exit()


version_option = click.option("--version", is_flag=True, expose_value=False, is_eager=True,
                              callback=_print_version, help="Show the version and exit.")


def _dataset(ctx, ref: str | None) -> Dataset:
    store = ctx.obj.get("store")
    if ref:
        ds = Dataset.get(ref, include_drafts=True, store=store)
        ds.make_current()
        return ds
    return Dataset.current(store)



id_option = click.option("--id", "ref", metavar="DATASET",
                         help="Dataset id or project/name[@version] (default: the current one).")
storage_option = click.option("--storage", default=None, metavar="STORE",
                              help="Also put the closed version in this store (URL or datastore name), with the "
                                   "ancestors it needs, as `dsfs push` does.")


def executor_options(command=None, *, work: str = "Chunk, hash and pack", files: str = " files"):
    """--workers N and --dask ADDRESS: where upload, close and sync chunk, hash and pack (`work`:
    what check --read-data and verify do there instead; `files`: what the workers must see)."""
    if command is None:
        return functools.partial(executor_options, work=work, files=files)
    see = f"; every worker must see the{files} at the same paths" if files else ""
    command = click.option("--dask", metavar="ADDRESS", envvar="DSFS_DASK_SCHEDULER", default=None,
                           help=f"{work} on the workers of this Dask cluster, e.g. --dask tcp://scheduler:8786 "
                                f"(needs `pip install 'dsfs[dask]'`{see}). Default: $DSFS_DASK_SCHEDULER.")(command)
    return click.option("--workers", type=click.IntRange(1, 256), default=None, metavar="N",
                        help=f"{work} in N processes on this machine, e.g. --workers 8 "
                             f"(default: in this process).")(command)


@contextlib.contextmanager
def _executor(ctx: click.Context, workers: int | None, dask: str | None):
    """The executor --workers or --dask asks for (None: this process), shut down after the command."""
    from click.core import ParameterSource

    if workers and dask and ctx.get_parameter_source("dask") is not ParameterSource.ENVIRONMENT:
        raise DsfsUsage("--workers and --dask both say where to work: pass one of them")
    if workers:
        from dsfs.store.executors import process_pool

        with process_pool(workers) as pool:
            yield pool
    elif dask:
        from dsfs.store.executors import dask_executor

        with dask_executor(dask) as executor:
            yield executor
    else:
        yield None


def _pushed(result: dict | None) -> None:
    if result is not None:
        click.echo(f"pushed to {result['to']}: {result['versions_sent']} version(s), "
                   f"{result['packs_sent']} pack(s) ({_human(result['bytes_sent'])}) sent", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", envvar="DSFS_STORE", metavar="URL",
              help="Store URL (file://, s3://, gs://, az://, memory://). "
                   "Default: $DSFS_STORE, else the default datastore.")
@click.option("--datastore", envvar="DSFS_DATASTORE", metavar="NAME",
              help="Named datastore (`dsfs datastore list`) instead of --store. Default: $DSFS_DATASTORE.")
@click.option("-v", "--verbose", count=True, help="Log to stderr: -v what dsfs does, -vv every fetch and retry.")
@click.option("--json", "as_json", is_flag=True, help="Print every command's result as JSON.")
@version_option
@click.pass_context
def cli(ctx, store, datastore, verbose, as_json):
    """dsfs: versioned datasets in object storage, mounted or materialized on compute nodes."""
    _set_verbosity(verbose)
    ctx.obj = {"store": store_ref(ctx, store, datastore), "json": as_json}


def _set_verbosity(verbose: int) -> None:
    import logging

    # Without -v the dsfs loggers write nothing (not even logging's last-resort WARNING lines):
    # commands print their own one-line errors. Replaced, not added to: main() may run many times.
    handler = logging.StreamHandler() if verbose else logging.NullHandler()
    handler.setFormatter(logging.Formatter("dsfs: %(message)s"))
    logging.getLogger("dsfs").handlers[:] = [handler]
    if verbose:
        logging.getLogger("dsfs").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


@cli.command()
@click.option("--project", required=True, help="Project (may contain '/').")
@click.option("--name", required=True, help="Dataset name.")
@click.option("--version", default=None, help="Semantic version (default: latest + patch, first 1.0.0).")
@multi("--parents", metavar="ID", help="Parent versions (ids or project/name[@version]), merged in order.")
@multi("--tags", metavar="TAG", help="Tags.")
@click.option("--description", default="", help="Free text.")
@click.option("--from-datastore", "from_datastore", default=None, metavar="NAME/PATH",
              help="Add the plain files at this datastore path as external files (nothing is copied).")
@click.pass_context
def create(ctx, project, name, version, parents, tags, description, from_datastore):
    """Create a draft version and make it the current dataset; prints its id.

    Example: `dsfs create --project vision --name cats --parents vision/cats --tags raw`"""
    ds = Dataset.create(project, name, version=version, parents=list(parents), tags=list(tags),
                        description=description, store=ctx.obj["store"])
    if from_datastore:
        try:
            count = ds.add_external_files(f"datastore:{from_datastore.removeprefix('datastore:')}")
        except BaseException:
            Dataset.delete(ds.id, store=ds.store)  # a failed create leaves nothing behind
            raise
        click.echo(f"{count} external file(s) from datastore:{from_datastore}; close with `dsfs close`", err=True)
    if _json(ctx):
        return _emit_json(ds.info.to_json())
    click.echo(ds.id)
    click.echo(f"created {ds.info.ref} (draft); add files with `dsfs add --files ...`", err=True)


@cli.command()
@multi("--files", metavar="PATH", help="Local files, folders or globs, or objects to copy in (s3://bucket/prefix/, "
                                       "gs://, az://, datastore:NAME/PATH).")
@multi("--links", metavar="URL",
       help="External objects or prefixes (s3://, gs://, az://, file://) that stay where they are.")
@click.option("--dataset-folder", default=None, help="Folder inside the dataset to put them in.")
@click.option("--wildcard", "wildcards", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--non-recursive", is_flag=True, help="Do not descend into sub-folders.")
@click.option("--follow-symlinks", is_flag=True,
              help="Follow symlinks in folders that point outside them (default: skipped, with a warning).")
@dataset_ref
@click.pass_context
def add(ctx, files, links, dataset_folder, wildcards, non_recursive, follow_symlinks, ref):
    """Add local files (read at upload) or external links to the current draft.

    Example: `dsfs add --files data/ --dataset-folder images --wildcard '*.jpg'`"""
    if not files and not links:
        raise DsfsUsage("pass --files and/or --links")
    ds = _dataset(ctx, ref)
    options = {"wildcard": list(wildcards) or None, "recursive": not non_recursive, "dataset_path": dataset_folder}
    total = (sum(ds.add_files(f, follow_symlinks=follow_symlinks, **options) for f in files)
             + sum(ds.add_external_files(u, **options) for u in links))
    _say(ctx, {"id": ds.id, "ref": ds.info.ref, "added": total}, f"{total} file(s) added to {ds.info.ref}")


@cli.command()
@multi("--files", required=True, metavar="PATH", help="Dataset paths or globs.")
@click.option("--non-recursive", is_flag=True, help="A folder pattern does not take its sub-folders.")
@dataset_ref
@click.pass_context
def remove(ctx, files, non_recursive, ref):
    """Remove files from the current draft (including files its parents have).

    Example: `dsfs remove --files 'images/bad_*'`"""
    ds = _dataset(ctx, ref)
    total = sum(ds.remove_files(f, recursive=not non_recursive) for f in files)
    _say(ctx, {"id": ds.id, "ref": ds.info.ref, "removed": total}, f"{total} file(s) removed from {ds.info.ref}")


@cli.command()
@click.option("--max-workers", type=click.IntRange(1, 64), default=None,
              help="Parallel pack uploads (default 4; with --workers or --dask, per task, default 2).")
@click.option("--storage", default=None, metavar="STORE",
              help="Put the version in this store too (URL or datastore name) when it is closed.")
@executor_options
@dataset_ref
@click.pass_context
def upload(ctx, max_workers, storage, workers, dask, ref):
    """Upload the added files' new chunks (resumable).

    Example: `dsfs upload --max-workers 8`"""
    ds = _dataset(ctx, ref)
    executor = ctx.with_resource(_executor(ctx, workers, dask))
    result = ds.upload(max_workers=max_workers, push_to=storage, executor=executor)
    _say(ctx, {"id": ds.id, "ref": ds.info.ref, **result},
         f"uploaded {ds.info.ref}: {result['files']} file(s), {result['packs_sent']} pack(s) sent, "
         f"{_human(result['new_bytes'])} new")


@cli.command()
@click.option("--max-workers", type=click.IntRange(1, 64), default=None, help="Parallel pack uploads.")
@click.option("--disable-upload", is_flag=True, help="Refuse to close while files are not uploaded (`dsfs upload`).")
@storage_option
@executor_options
@click.option("--preview", type=click.Choice(["auto", "stats", "none"]), default=None,
              help="auto: file statistics and previews of the first table, image and media files; stats: the "
                   "statistics only (no sample of the data is stored); none: neither (`dsfs preview` shows "
                   "them). Default: the project's (`dsfs project set --preview`), else auto.")
@dataset_ref
@click.pass_context
def close(ctx, max_workers, disable_upload, storage, workers, dask, preview, ref):
    """Upload what is left and finalize the version (immutable from then on).

    Example: `dsfs close --storage s3://team-bucket/datasets --preview stats`"""
    ds = _dataset(ctx, ref)
    executor = ctx.with_resource(_executor(ctx, workers, dask))
    pushed = ds.finalize(auto_upload=not disable_upload, max_workers=max_workers, push_to=storage,
                         executor=executor, preview=preview)
    stats = ds.info.stats
    if _json(ctx):
        return _emit_json({**ds.info.to_json(), "pushed": pushed})
    click.echo(f"closed {ds.info.ref} ({ds.id}): {stats['files']} file(s), {_human(stats['bytes'])}; "
               f"+{stats['added']} ~{stats['modified']} -{stats['removed']}, {_human(stats['new_bytes'])} new")
    _pushed(pushed)


@cli.command()
@dataset_ref
@click.pass_context
def publish(ctx, ref):
    """Mark a final version as published.

    Example: `dsfs publish vision/cats@1.2.0`"""
    ds = _dataset(ctx, ref)
    ds.publish()
    _say(ctx, ds.info.to_json(), f"published {ds.info.ref} ({ds.id})")


@cli.command(name="list")
@dataset_ref
@multi("--filter", "filters", metavar="GLOB", help="Only paths matching these globs.")
@click.option("--modified", is_flag=True, help="Only this version's added, modified and removed files.")
@json_option
@click.option("--jsonl", "as_jsonl", is_flag=True, help="Print one JSON object per line (a file each).")
@click.option("--project", default=None, help="With --name: the latest final version of project/name.")
@click.option("--name", default=None, help="With --project (clearml-data's way of naming a dataset).")
@click.pass_context
def list_(ctx, ref, filters, modified, as_json, as_jsonl, project, name):
    """List the files of a version's merged view.

    Example: `dsfs list vision/cats --filter 'images/*' --json`."""
    if as_json and as_jsonl:
        raise DsfsUsage("--json and --jsonl: choose one")
    if project or name:
        if not (project and name) or ref:
            raise DsfsUsage("name the dataset once: --project with --name, or DATASET/--id")
        ref = f"{project}/{name}"
    ds = _dataset(ctx, ref)
    from dsfs import paths

    if modified:
        added, changed, removed = ds._own_changes()
        rows = [("added", p) for p in added] + [("modified", p) for p in changed] + [("removed", p) for p in removed]
        rows = sorted((r for r in rows if not filters or paths.matches(r[1], filters)), key=lambda r: r[1])
        if as_json:
            return _emit_json([{"change": c, "path": p} for c, p in rows])
        if as_jsonl:
            return emit_json_lines({"change": c, "path": p} for c, p in rows)
        return _table(["change", "path"], rows)
    # streamed (a version of millions of files is never in memory), without chunk refs: none is shown
    entries = ds.iter_entries(list(filters) or None, chunks=False)
    if as_json or as_jsonl:
        emit = emit_json_rows if as_json else emit_json_lines
        return emit({"path": e.path, "size": e.size, "mode": e.mode, "mtime_ns": e.mtime_ns, "digest": e.digest.hex()}
                    for e in entries)
    count = total = 0

    def rows():
        nonlocal count, total
        for e in entries:
            count += 1
            total += e.size
            yield e.size, e.path

    _table(["size", "path"], rows())
    click.echo(f"{count} file(s), {_human(total)}", err=True)


def _warn_unreadable(unreadable: dict[str, str]) -> None:
    """A listing left out records that cannot be read: say so (stderr), they may be what was sought."""
    for message in sorted(unreadable.values()):
        click.echo(f"dsfs: warning: not listed (it may match): {message}; see `dsfs check`", err=True)


def _info_row(v: VersionInfo):
    return (v.id, v.project, v.name, v.version, v.state, ",".join(v.tags), v.stats.get("files", ""),
            _human(v.stats["bytes"]) if "bytes" in v.stats else "", v.created)


@cli.command()
@click.option("--project", default=None, help="Project (glob).")
@click.option("--name", default=None, help="Name (glob, or without wildcards a part of the name).")
@multi("--tags", metavar="TAG", help="All of these tags.")
@multi("--any-tags", metavar="TAG", help="At least one of these tags.")
@click.option("--state", type=click.Choice(["draft", "final", "published"]), default=None,
              help="Only drafts, only final versions (published or not), or only published ones.")
@click.option("--since", metavar="DATE", default=None, help="Created at or after DATE (ISO 8601; UTC if no zone).")
@click.option("--sort", type=click.Choice(["version", "date"]), default="version", show_default=True,
              help="version: by project, name and version number, oldest first; date: newest first.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N versions.")
@multi("--ids", metavar="ID", help="Only these ids.")
@json_option
@click.pass_context
def search(ctx, project, name, tags, any_tags, state, since, sort, limit, ids, as_json):
    """Find versions by project, name, tags, state, date or ids.

    Example: `dsfs search --project vision --name cat --tags raw --since 2026-11-01 --sort date --limit 5`"""
    from dsfs.catalog import parse_since

    unreadable = {}
    found = Dataset.search(project=project, name=name, tags=list(tags), ids=list(ids), store=ctx.obj["store"],
                           unreadable=unreadable, any_tags=list(any_tags), state=state,
                           since=parse_since(since) if since else None, sort=sort, limit=limit)
    _warn_unreadable(unreadable)
    if as_json:
        return _emit_json([v.to_json() for v in found])
    _table(["id", "project", "name", "version", "state", "tags", "files", "size", "created"], map(_info_row, found))


@cli.command()
@click.argument("ref", metavar="DATASET", required=False)
@json_option
@id_too
@click.pass_context
def show(ctx, ref, as_json):
    """Show a version's record (default: the current dataset).

    Example: `dsfs show vision/cats --json`"""
    import json

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
    if ds.info.is_final:
        from dsfs.authoring.previews import summary

        data["previews"] = summary(ds.previews()) + " (dsfs preview)"
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
    """Set KEY to VALUE (JSON if it parses, else a string).

    Example: `dsfs metadata set classes '["cat", "dog"]' --id vision/cats`"""
    import json

    ds = _dataset(ctx, ref)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    ds.set_metadata({key: parsed})
    _say(ctx, {"id": ds.id, "ref": ds.info.ref, "key": key, "value": parsed},
         f"{ds.info.ref}: {key} set", err=True)


@metadata.command(name="get")
@click.argument("key", required=False)
@id_option
@json_option
@click.pass_context
def metadata_get(ctx, key, ref, as_json):
    """Print one key, or all metadata.

    Example: `dsfs metadata get classes --id vision/cats`"""
    import json

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
    """Rename every version of project/name.

    Example: `dsfs rename --project vision --name cats --new-name felines`"""
    n = Dataset.rename(new_name, project, name, store=ctx.obj["store"])
    _say(ctx, {"renamed": n, "project": project, "name": new_name},
         f"renamed {n} version(s) of {project}/{name} to {project}/{new_name}")


@cli.command()
@click.option("--project", required=True)
@click.option("--name", required=True)
@click.option("--new-project", required=True)
@click.pass_context
def move(ctx, project, name, new_project):
    """Move every version of project/name to another project.

    Example: `dsfs move --project vision --name felines --new-project zoo`"""
    n = Dataset.move_to_project(new_project, project, name, store=ctx.obj["store"])
    _say(ctx, {"moved": n, "project": new_project, "name": name},
         f"moved {n} version(s) of {project}/{name} to {new_project}/{name}")


@cli.command()
@dataset_ref
@click.option("--force", is_flag=True, help="Delete even if other versions inherit from it.")
@click.pass_context
def delete(ctx, ref, force):
    """Delete a version's records (its files' data stays until `dsfs gc`: other versions may share it).

    Example: `dsfs delete vision/cats@1.0.0`"""
    if not ref:
        ref = Dataset.current(ctx.obj["store"]).id
    try:
        unreadable, borrowers = Dataset.dependents(ref, store=ctx.obj["store"]) if force else ([], [])
    except CorruptData:  # a damaged record: `delete --force` by id removes it, and names nothing
        unreadable, borrowers = [], []
    info = Dataset.delete(ref, force=force, store=ctx.obj["store"])
    what = f"{info.ref} ({info.id})" if info.project else f"the damaged version {info.id}"
    _say(ctx, {"deleted": info.id, "ref": info.ref if info.project else None,
               "unreadable": [v.id for v in unreadable], "borrowers": [v.id for v in borrowers]},
         f"deleted {what}; run `dsfs gc` to reclaim space no version uses")
    if unreadable:
        click.echo(f"dsfs: warning: {len(unreadable)} version(s) inherit from it and can no longer be read: "
                   + ", ".join(f"{v.ref} ({v.id})" for v in unreadable), err=True)
    if borrowers:
        click.echo(f"dsfs: {len(borrowers)} squashed version(s) borrow its packs and stay readable: "
                   + ", ".join(v.ref for v in borrowers), err=True)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("--grace", default="24h", show_default=True, metavar="DURATION",
              help="Never delete a pack younger than this (an upload may be about to use it): 30m, 24h, 7d, 0.")
@json_option
@click.pass_context
def gc(ctx, dry_run, grace, as_json):
    """Reclaim the space of packs no final version references (mark and sweep; one gc at a time).

    Example: `dsfs gc --dry-run`"""
    from dsfs.dataset import open_store
    from dsfs.lifecycle import sweep

    report = sweep.gc(open_store(ctx.obj["store"]), grace=sweep.parse_duration(grace), dry_run=dry_run)
    if as_json:
        return _emit_json(report.to_json())
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {report.deleted_packs} pack(s), {_human(report.deleted_bytes)}; "
               f"kept {report.referenced_packs} referenced by {report.versions} final version(s)")
    if report.kept_young_packs or report.kept_session_packs:
        click.echo(f"kept {report.kept_young_packs} unreferenced pack(s) younger than {grace} "
                   f"({_human(report.kept_young_bytes)}) and {report.kept_session_packs} used by "
                   f"{report.live_sessions} upload(s) in progress")
    if report.temp_files_removed:
        click.echo(f"removed {report.temp_files_removed} temp file(s) of killed pack writes "
                   f"({_human(report.temp_bytes_removed)})")
    if report.partly_referenced_packs:
        click.echo(f"{_human(report.unreferenced_bytes_in_kept_packs)} unreferenced inside "
                   f"{report.partly_referenced_packs} partly used pack(s) (kept whole: packs are never rewritten)")


@cli.command()
@click.argument("path")
@id_option
@click.pass_context
def cat(ctx, path, ref):
    """Write one file of a final version to stdout (bytes verified).

    Example: `dsfs cat images/0001.jpg --id vision/cats > 0001.jpg`"""
    ds = _dataset(ctx, ref)
    data = ds.read_file(path)
    if _json(ctx):  # the bytes in JSON: base64
        import base64

        return _emit_json({"id": ds.id, "path": path, "size": len(data),
                           "data_base64": base64.b64encode(data).decode()})
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _folder_and_wildcard(folder: str) -> tuple[str, str | None]:
    """`--folder ~/data/*.jpg`: the folder ~/data, only its files matching *.jpg (clearml-data's
    wildcard selection). The wildcard may hold folders too (~/data/imgs/*.jpg: relative to ~/data/imgs)."""
    from dsfs.paths import is_glob

    folder = os.path.expanduser(folder)
    if not is_glob(folder):
        return folder, None
    parts = folder.rstrip("/").split("/")
    first = next(i for i, part in enumerate(parts) if is_glob(part))
    return "/".join(parts[:first]) or ("/" if folder.startswith("/") else "."), "/".join(parts[first:])


@cli.command()
@click.option("--folder", required=True, type=click.Path(),
              help="Local folder to turn into a version; a wildcard selects its files (data/*.jpg).")
@click.option("--project", default=None, help="Project (default: the first parent's).")
@click.option("--name", default=None, help="Name (default: the first parent's).")
@multi("--parents", metavar="ID", help="Parents (default: the latest final version of project/name).")
@multi("--tags", metavar="TAG")
@click.option("--dataset-folder", default=None, help="Folder inside the dataset the local folder maps to.")
@click.option("--skip-close", is_flag=True, help="Leave the new version as a draft.")
@click.option("--allow-empty", is_flag=True, help="Create a version even when nothing changed.")
@click.option("--max-workers", type=click.IntRange(1, 64), default=None)
@click.option("--follow-symlinks", is_flag=True,
              help="Follow symlinks in the folder that point outside it (default: skipped, with a warning).")
@storage_option
@click.option("--id", "ref", default=None, metavar="DRAFT",
              help="Sync into this existing draft instead of a new version.")
@executor_options
@click.pass_context
def sync(ctx, folder, project, name, parents, tags, dataset_folder, skip_close, allow_empty, max_workers,
         follow_symlinks, storage, ref, workers, dask):
    """Create a new version from a folder: added, modified and removed files against the parent.

    Example: `dsfs sync --folder data/ --project vision --name cats`"""
    if storage and skip_close:
        raise DsfsUsage("--storage puts the closed version there: drop --skip-close, or pass --storage to `dsfs close`")
    folder, wildcard = _folder_and_wildcard(folder)
    if ref and (project or name or parents or tags):
        raise DsfsUsage("--id syncs into that draft, whose project, name, parents and tags are its own: "
                        "drop --project/--name/--parents/--tags, or --id for a new version")
    executor = None if skip_close else ctx.with_resource(_executor(ctx, workers, dask))
    if ref:
        draft = _dataset(ctx, ref)
        changes = draft.sync_folder(folder, dataset_folder, follow_symlinks, wildcard)
        pushed = None if skip_close else draft.finalize(max_workers=max_workers, push_to=storage, executor=executor)
        if _json(ctx):
            return _emit_json({**draft.info.to_json(), "changes": vars(changes), "pushed": pushed})
        click.echo(draft.id)
        click.echo(f"{draft.info.ref} {'closed' if draft.is_final else 'draft'}: {changes.added} added, "
                   f"{changes.modified} modified, {changes.removed} removed, {changes.unchanged} unchanged", err=True)
        _pushed(pushed)
        return
    if not (project and name):
        if not parents:
            raise DsfsUsage("pass --project and --name, or --parents")
        first = Dataset.get(parents[0], include_drafts=True, store=ctx.obj["store"]).info
        project, name = project or first.project, name or first.name
    ds, changes = Dataset.sync(folder, project, name, parents=list(parents) or None, tags=list(tags),
                               dataset_path=dataset_folder, close=not skip_close, allow_empty=allow_empty,
                               max_workers=max_workers, store=ctx.obj["store"], follow_symlinks=follow_symlinks,
                               wildcard=wildcard, executor=executor)
    summary = (f"{changes.added} added, {changes.modified} modified, {changes.removed} removed, "
               f"{changes.unchanged} unchanged")
    pushed = {**ds.push(storage, max_workers), "to": storage} if ds is not None and storage else None
    if _json(ctx):
        return _emit_json({**(ds.info.to_json() if ds else {"id": None}), "changes": vars(changes), "pushed": pushed})
    if ds is None:
        click.echo(f"no change in {folder} against {project}/{name}; no version created ({summary})")
        return
    click.echo(ds.id)
    click.echo(f"{ds.info.ref} {'closed' if ds.is_final else 'draft'}: {summary}", err=True)
    _pushed(pushed)


@cli.command()
@click.option("--source", required=True, metavar="DATASET")
@click.option("--target", required=True, metavar="DATASET")
@click.option("--verbose", is_flag=True, help="List every changed path.")
@json_option
@click.pass_context
def compare(ctx, source, target, verbose, as_json):
    """What changed from one version to another (related or not).

    Example: `dsfs compare --source vision/cats@1.0.0 --target vision/cats --verbose`"""
    import tempfile

    summary = {"added": 0, "removed": 0, "modified": 0, "unchanged": 0,
               "added_bytes": 0, "removed_bytes": 0, "modified_bytes": 0}

    def changed():  # every difference, counted as it streams by (in path order)
        for change, path, old, new in Dataset.differences(source, target, store=ctx.obj["store"]):
            summary[change] += 1
            if change != "unchanged":
                summary[f"{change}_bytes"] += old if change == "removed" else new
                yield change, path, old, new

    if as_json:  # the paths of each kind wait in a spool: the counts come first in the object
        spools = {kind: tempfile.SpooledTemporaryFile(8 << 20, mode="w+") for kind in ("added", "removed", "modified")}
        for change, path, _, _ in changed():
            spools[change].write(path + "\0")

        def spooled_paths(spool):
            spool.seek(0)
            text = ""
            while piece := spool.read(1 << 20):
                *done, text = (text + piece).split("\0")
                yield from done

        return emit_json_object(summary, {f"{kind}_paths": spooled_paths(spool) for kind, spool in spools.items()})
    if verbose:
        sizes = {"added": lambda old, new: _human(new), "removed": lambda old, new: _human(old),
                 "modified": lambda old, new: f"{_human(old)} -> {_human(new)}"}
        _table(["change", "path", "size"], ((c, p, sizes[c](old, new)) for c, p, old, new in changed()))
    else:
        for _ in changed():
            pass
    click.echo(f"{summary['added']} files added ({_human(summary['added_bytes'])}), "
               f"{summary['removed']} removed ({_human(summary['removed_bytes'])}), "
               f"{summary['modified']} modified ({_human(summary['modified_bytes'])}), "
               f"{summary['unchanged']} unchanged")


@cli.command()
@click.option("--name", required=True)
@click.option("--project", default=None, help="Default: the first version's project.")
@click.option("--version", default=None)
@multi("--ids", required=True, metavar="DATASET", help="Versions to merge, in order (a later one wins).")
@multi("--tags", metavar="TAG")
@storage_option
@click.pass_context
def squash(ctx, name, project, version, ids, tags, storage):
    """A new flat version equal to the given versions merged, made from existing chunks.

    Example: `dsfs squash --name cats-flat --ids vision/cats`"""
    ds = Dataset.squash(name, list(ids), project=project, version=version, tags=list(tags), store=ctx.obj["store"])
    pushed = {**ds.push(storage), "to": storage} if storage else None
    if _json(ctx):
        return _emit_json({**ds.info.to_json(), "pushed": pushed})
    click.echo(ds.id)
    click.echo(f"squashed {len(ids)} version(s) into {ds.info.ref}: {ds.info.stats['files']} file(s), "
               f"{_human(ds.info.stats['bytes'])}, no chunk bytes moved", err=True)
    _pushed(pushed)


@cli.command()
@click.argument("ref", metavar="PROJECT/NAME", required=False)
@json_option
@id_too
@click.pass_context
def versions(ctx, ref, as_json):
    """The versions of a dataset: lineage, states, dates, sizes and new bytes.

    Example: `dsfs versions vision/cats`"""
    if not ref:
        raise DsfsUsage("name the dataset: PROJECT/NAME (or --id PROJECT/NAME)")
    if "/" not in ref:
        raise DsfsUsage(f"{ref!r}: expected PROJECT/NAME")
    project, name = ref.split("@")[0].rsplit("/", 1)
    from dsfs.catalog import open_store, versions_of

    unreadable = {}
    found = versions_of(open_store(ctx.obj["store"]), project, name, unreadable)
    _warn_unreadable(unreadable)
    if not found:
        raise DatasetNotFound(f"no dataset {project}/{name}")
    if as_json:
        return _emit_json([v.to_json() for v in found])
    short = {v.id: v.version for v in found}
    _table(["version", "id", "state", "parents", "created", "files", "size", "new"],
           [(v.version, v.id, v.state, ",".join(short.get(p, p[:8]) for p in v.parents) or "-", v.created,
             v.stats.get("files", ""), _human(v.stats["bytes"]) if "bytes" in v.stats else "",
             _human(v.stats["new_bytes"]) if "new_bytes" in v.stats else "") for v in found])


@cli.command()
@click.option("--read-data", is_flag=True, help="Also fetch every chunk and re-hash it.")
@click.option("--read-data-subset", "subset", metavar="N%|n/t", default=None,
              help="Like --read-data for part of the packs, by pack id: the first N% of the id space "
                   "(the same packs every run), or its n-th of t slices (t runs read every pack once).")
@executor_options(work="Fetch and re-hash the packs (with --read-data)", files="")
@json_option
@click.pass_context
def check(ctx, read_data, subset, workers, dask, as_json):
    """Prove the store: records, change-sets, chunk refs (and chunk bytes with --read-data).
    Exit 1 listing every damaged version and file.

    Example: `dsfs check --read-data-subset 10%`"""
    from dsfs.dataset import open_store
    from dsfs.lifecycle.check import check_store

    if read_data and subset:
        raise DsfsUsage("--read-data and --read-data-subset exclude each other")
    store = open_store(ctx.obj["store"])
    executor = ctx.with_resource(_executor(ctx, workers, dask)) if read_data or subset else None
    report = check_store(store, read_data=subset or read_data, executor=executor)
    if as_json:
        _emit_json(report.as_dict())
    else:
        if report.problems:
            _table(["version", "path", "problem"],
                   [(p.ref or p.version, p.path or "-", p.message) for p in report.problems])
        for line in _check_summary(report):
            click.echo(line, err=True)
    if not report.ok:
        sys.exit(1)


def _check_summary(report) -> list[str]:
    lines = [f"{report.versions} version(s) ({report.final} final, {report.drafts} draft), {report.files} file(s), "
             f"{report.chunk_refs} chunk ref(s) checked against {report.packs} pack(s) ({_human(report.pack_bytes)})"]
    if report.subset is not None:
        lo, hi = report.subset
        part = "" if (lo, hi) == (0.0, 1.0) else f" (the packs whose id lies in {lo:.4g}-{hi:.4g} of the id space)"
        lines.append(f"read and re-hashed {report.data_chunks} chunk(s), {_human(report.data_bytes)} "
                     f"in {report.data_packs} pack(s){part}")
    if report.unreferenced_packs:
        lines.append(f"{report.unreferenced_packs} pack(s) ({_human(report.unreferenced_bytes)}) no final version "
                     f"uses: uploads in progress, or space `dsfs gc` reclaims")
    lines.append("no problems found" if report.ok else
                 f"{len(report.problems)} problem(s) in {len(report.damaged)} version(s)")
    if report.affected:
        lines.append(f"{len(report.affected)} more version(s) build on a damaged one (the damaged files they "
                     f"inherit cannot be read either): " + ", ".join(sorted(report.affected.values())))
    return lines


@cli.command(name="export")
@click.argument("ref", metavar="DATASET", required=False)
@id_too
@click.option("--format", "fmt", type=click.Choice(["tar", "zip", "manifest-json"]), default="tar", show_default=True)
@multi("--include", metavar="GLOB", help="Only paths matching these globs.")
@click.option("-o", "--output", required=True, help="Output file, or - for stdout.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Cache folder (default: $DSFS_CACHE_DIR, else $XDG_CACHE_HOME/dsfs).")
@click.pass_context
def export_(ctx, ref, fmt, include, output, overwrite, cache_dir):
    """Write a version as a streamed tar or zip archive, or its file list as JSON.

    Example: `dsfs export vision/cats --format zip -o cats.zip`"""
    from dsfs.node.cache import Cache
    from dsfs.node.export import export_to
    from dsfs.node.view import View

    if output == "-" and _json(ctx):
        raise DsfsUsage("--json and -o -: the archive is the output; write it to a file with -o FILE")
    if output == "-" and fmt != "manifest-json" and sys.stdout.isatty():
        raise DsfsUsage("refusing to write a binary archive to a terminal; redirect it or use -o FILE")
    ds = Dataset.get(ref, store=ctx.obj["store"]) if ref else Dataset.current(ctx.obj["store"])
    view = View(ds.store, Cache(cache_dir), ds.id)  # the cache the user chose: its chunks are used and kept
    try:
        count = export_to(view, output, fmt, list(include) or None, overwrite)
    finally:
        view.close()
    _say(ctx, {"id": ds.id, "ref": ds.info.ref, "files": count, "format": fmt, "output": os.path.abspath(output)},
         f"exported {count} file(s) of {ds.info.ref} as {fmt}" + ("" if output == "-" else f" to {output}"), err=True)


def cache_options(fn):
    fn = click.option("--cache-size", default=None, metavar="SIZE",
                      help="Cache budget, e.g. 50G (default: $DSFS_CACHE_SIZE, else half the free disk).")(fn)
    fn = click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                      help="Cache folder (default: $DSFS_CACHE_DIR, else $XDG_CACHE_HOME/dsfs).")(fn)
    return fn


def _consumer(ctx, ref, cache_dir, cache_size) -> Dataset:
    """A final version to consume, with the node cache."""
    from dsfs.node.cache import Cache

    if ref:  # consumers resolve names to final versions only; an explicit id may still be a draft
        ds = Dataset.get(ref, store=ctx.obj["store"])
        ds.make_current()
    else:
        ds = Dataset.current(ctx.obj["store"])
    return ds.use_cache(Cache(cache_dir, cache_size))


@cli.command()
@click.argument("ref", metavar="[DATASET]", required=False)
@click.argument("target", type=click.Path(file_okay=False), required=False)
@click.option("--id", "id_option", metavar="DATASET", help=ID_HELP)
@multi("--include", metavar="GLOB", help="Only paths matching these globs (a folder name takes its subtree).")
@multi("--exclude", metavar="GLOB", help="Skip paths matching these globs.")
@click.option("--max-workers", type=click.IntRange(1, 64), default=8, show_default=True, help="Parallel ranged GETs.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty folder, replacing files of the same name.")
@cache_options
@click.pass_context
def download(ctx, ref, target, id_option, include, exclude, max_workers, overwrite, cache_dir, cache_size):
    """Materialize a version (or part of it) into TARGET. Resumable.

    Example: `dsfs download p/n ./data` (or `dsfs download --id p/n ./data`)."""
    if id_option and target is None:  # `download --id X TARGET`: the one argument is the target
        ref, target = None, ref
    if target is None:
        raise DsfsUsage("name the TARGET folder: dsfs download [DATASET] TARGET")
    ds = _consumer(ctx, one_ref(ref, id_option), cache_dir, cache_size)
    result = ds.download(target, list(include) or None, list(exclude) or None, max_workers, overwrite)
    if _json(ctx):
        return _emit_json({"id": ds.id, "ref": ds.info.ref, "target": os.path.abspath(target),
                           "written": result.written, "skipped": result.skipped, "bytes": result.bytes})
    click.echo(f"{ds.info.ref}: {result.written} file(s) written ({_human(result.bytes)}), "
               f"{result.skipped} already complete, in {target}")


@cli.command()
@click.argument("ref", metavar="DATASET", required=False)
@id_too
@click.option("--copy", "copy_to", type=click.Path(file_okay=False), default=None, help="Make a mutable copy in DIR.")
@click.option("--link", "link_to", type=click.Path(), default=None, help="Make DIR a symlink to the cached copy.")
@click.option("--overwrite", is_flag=True, help="Allow a non-empty --copy DIR / an existing --link.")
@click.option("--max-workers", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--part", type=click.IntRange(0), default=None,
              help="Only this share of the files (0 to --num-parts - 1), for data-parallel jobs.")
@click.option("--num-parts", type=click.IntRange(1), default=None,
              help="How many even shares of the files, in path order, --part counts in.")
@cache_options
@click.pass_context
def get(ctx, ref, copy_to, link_to, overwrite, max_workers, part, num_parts, cache_dir, cache_size):
    """Print the path of a read-only cached copy of a version (materialized once).

    Example: `dsfs get p/n --part 0 --num-parts 4` on the first of four workers."""

    from dsfs import settings
    from dsfs.model import ID_RE
    from dsfs.node.copies import intact, register_link

    if (part is None) != (num_parts is None):
        raise DsfsUsage("pass --part and --num-parts together")
    if copy_to and link_to:
        raise DsfsUsage("--copy makes a mutable copy, --link a symlink to the cached one: choose one")
    if ref and ID_RE.match(ref) and not (copy_to or link_to or num_parts):
        # A final version never changes: a cached copy of this id that stats as it was laid out is
        # the answer, no store round trip (most of a second `get` was opening the store).
        cached = os.path.join(os.path.abspath(cache_dir or settings.cache_dir()), "copies", ref)
        if intact(cached):
            return _say(ctx, {"id": ref, "path": cached}, cached)
    ds = _consumer(ctx, ref, cache_dir, cache_size)
    if copy_to and num_parts:
        ds.download(copy_to, max_workers=max_workers, overwrite=overwrite, shard=(part, num_parts))
        return _say(ctx, {"id": ds.id, "path": os.path.abspath(copy_to)}, os.path.abspath(copy_to))
    if copy_to:
        copied = ds.get_mutable_local_copy(copy_to, overwrite, max_workers)
        return _say(ctx, {"id": ds.id, "path": copied}, copied)
    path = ds.get_local_copy(max_workers, part=part, num_parts=num_parts)
    if link_to:
        link_to = os.path.abspath(link_to)
        if os.path.lexists(link_to):
            if not (overwrite and (os.path.islink(link_to) or (os.path.isdir(link_to) and not os.listdir(link_to)))):
                raise DsfsUsage(f"{link_to} exists; pass --overwrite to replace it (a symlink or an empty folder)")
            os.unlink(link_to) if os.path.islink(link_to) else os.rmdir(link_to)
        os.symlink(path, link_to)
        register_link(ds.cache, link_to)  # so that `cache clear` does not leave it dangling unannounced
        path = link_to
    _say(ctx, {"id": ds.id, "path": path}, path)


@cli.command()
@dataset_ref
@click.option("--folder", type=click.Path(file_okay=False, exists=True), default=None,
              help="Folder to check (default: the cached copy).")
@click.option("--filesize", is_flag=True, help="Compare sizes only, do not hash.")
@executor_options(work="Hash the files", files=" folder")
@json_option
@cache_options
@click.pass_context
def verify(ctx, ref, folder, filesize, workers, dask, as_json, cache_dir, cache_size):
    """Compare a folder with a version's manifest; exit 1 on any missing, extra or different file.

    Example: `dsfs verify vision/cats --folder ./cats`"""
    ds = _consumer(ctx, ref, cache_dir, cache_size)
    executor = None if filesize else ctx.with_resource(_executor(ctx, workers, dask))
    report = ds.verify_dataset_hash(folder, skip_hash=filesize, executor=executor)
    if as_json:
        _emit_json(report.as_dict())
    else:
        for kind in ("missing", "extra", "different", "stale"):
            for path in getattr(report, kind):
                click.echo(f"{kind:9}  {path}")
        click.echo(f"{report.checked} file(s) checked: " + ("OK" if report.ok else
                   f"{len(report.missing)} missing, {len(report.extra)} extra, {len(report.different)} different"
                   + (f", {len(report.stale)} external changed at their source" if report.stale else "")),
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
    """Chunks, copies, their bytes (together in `bytes`) and the budget of the cache.

    Example: `dsfs cache stats --json`"""
    from dsfs.node.cache import Cache

    stats = Cache(cache_dir, cache_size).stats()
    if as_json:
        return _emit_json(stats)
    _table(["field", "value"],
           [(k, _human(v) if k.endswith("bytes") or k == "budget" else v) for k, v in stats.items()])


@cache.command(name="prune")
@click.option("--to", "to_size", default=None, metavar="SIZE",
              help="Target size of chunks and copies together (default: the low watermark).")
@cache_options
@click.pass_context
def cache_prune(ctx, to_size, cache_dir, cache_size):
    """Evict least recently used chunks, then copies, down to SIZE (copies `get --link` points to stay).

    Example: `dsfs cache prune --to 20G`"""
    from dsfs.node import copies
    from dsfs.node.cache import LOW_WATERMARK, Cache, parse_size

    c = Cache(cache_dir, cache_size)
    target = parse_size(to_size) if to_size is not None else int(c.budget * LOW_WATERMARK)
    pruned = copies.prune(c, target)
    freed = pruned.freed + c.sweep_temp()
    held = c.stats()["bytes"]
    _say(ctx, {"freed": freed, "bytes": held, "kept_links": pruned.kept},
         f"freed {_human(freed)}; cache holds {_human(held)}")
    if pruned.kept:
        click.echo(f"kept {len(set(pruned.kept.values()))} copy(ies) that `dsfs get --link` symlinks point to: "
                   + ", ".join(sorted(pruned.kept)) + "; `dsfs cache clear --force` removes them", err=True)


@cache.command(name="clear")
@click.option("--force", is_flag=True, help="Clear even while `get --link` symlinks point into the copies.")
@cache_options
@click.pass_context
def cache_clear(ctx, force, cache_dir, cache_size):
    """Drop every cached chunk, view and copy (refused while `get --link` symlinks point in).

    Example: `dsfs cache clear`"""
    from dsfs.node import copies
    from dsfs.node.cache import Cache

    c = Cache(cache_dir, cache_size)
    freed, broken = copies.clear(c, force)  # first: a refusal leaves everything in place
    freed += c.clear()
    _say(ctx, {"freed": freed, "dangling_links": broken}, f"freed {_human(freed)}")
    if broken:
        click.echo(f"left {len(broken)} symlink(s) made by `dsfs get --link` dangling: "
                   + ", ".join(f"{link} -> {copy_id}" for link, copy_id in sorted(broken.items())), err=True)


@cli.command(name="init-store", hidden=True)
@click.pass_context
def init_store(ctx):
    """Create the store marker at --store if missing.

    Example: `dsfs --store s3://team-bucket/datasets init-store`"""
    from dsfs.dataset import open_store

    store = open_store(ctx.obj["store"], create=True)
    _say(ctx, {"store": store.display_url}, store.display_url)


from dsfs.cli.run import env_, run  # noqa: E402 - registered after the group exists

cli.add_command(run)
cli.add_command(env_)
cli.add_command(datastore)
cli.add_command(push)
from dsfs.cli.mount import mount, mounts, unmount  # noqa: E402
from dsfs.cli.previews import preview, project, stats  # noqa: E402

cli.add_command(preview)
cli.add_command(project)
cli.add_command(stats)
cli.add_command(mount)
cli.add_command(unmount)
cli.add_command(mounts)
from dsfs.cli.ui import ui  # noqa: E402

cli.add_command(ui)


def _store_after(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.obj["store"] = value


def _datastore_after(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        from dsfs.store import datastores

        ctx.obj["store"] = datastores.store_ref(None, value)


def _json_after(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.obj["json"] = True


def _verbose_after(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        _set_verbosity(value)


# The group's options, accepted after the command too (`dsfs create --store X` as `dsfs --store X
# create`; clearml-data takes --verbose on every command): given there, they win over the group's.
_GLOBAL_AFTER = [
    click.Option(["--store"], metavar="URL", expose_value=False, callback=_store_after,
                 help="As `dsfs --store URL`, given after the command."),
    click.Option(["--datastore"], metavar="NAME", expose_value=False, callback=_datastore_after,
                 help="As `dsfs --datastore NAME`, given after the command."),
    click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_verbose_after,
                 help="As `dsfs -v`: log what dsfs does to stderr (-vv: every fetch and retry)."),
    click.Option(["--json"], is_flag=True, expose_value=False, callback=_json_after,
                 help="Print the result as JSON (as `dsfs --json COMMAND`)."),
]


NO_JSON = {"run"}  # its output is the job's


def _accept_global_options(group: click.Group) -> None:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_global_options(command)
            continue
        taken = {name for param in command.params for name in getattr(param, "opts", [])}
        if command.name in NO_JSON:
            taken.add("--json")
        command.params += [option for option in _GLOBAL_AFTER if not taken & set(option.opts)]


_accept_global_options(cli)


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
