"""`dsfs mount`, `dsfs unmount`, `dsfs mounts`: the command line of dsfs.daemon.

Registered on the main group in cli/main.py. This module does not import cli.main (which imports
it): `python -m dsfs.cli.main` would otherwise load main.py twice. dsfs.daemon is imported by the
commands, not here: `dsfs --help` does not load it.
"""

from __future__ import annotations

import os
import sys

import click

from dsfs.cli.output import emit_json, json_option, say, wants_json
from dsfs.cli.refs import ID_HELP, one_ref
from dsfs.errors import UsageError

LOG_LEVELS = ("debug", "info", "warning", "error")


def _merge(config_file: str | None, given: dict) -> dict:
    """Options from --config, overridden by those given on the command line (None: not given)."""
    from dsfs.daemon.config import mount_config

    options = mount_config(config_file) if config_file else {}
    options.update({k: v for k, v in given.items() if v is not None and v != ()})
    return options


@click.command()
@click.argument("dataset", metavar="DATASET", required=False)
@click.argument("mountpoint", metavar="MOUNTPOINT", required=False)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Read DSFS_DATASET, DSFS_MOUNTPOINT, DSFS_STORE... from this file (systemd EnvironmentFile format).")
@click.option("--allow-other", is_flag=True, default=None,
              help="Let other users read the mount (adds default_permissions; "
                   "needs user_allow_other in /etc/fuse.conf).")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Cache folder (default: $DSFS_CACHE_DIR, else $XDG_CACHE_HOME/dsfs).")
@click.option("--cache-size", default=None, metavar="SIZE",
              help="Cache budget, e.g. 50G (default: $DSFS_CACHE_SIZE, else half the free disk).")
@click.option("--read-ahead", type=click.IntRange(0, 1 << 20), default=None, metavar="KIB",
              help="Kernel readahead of the mount in KiB, where permitted (default 4096; 0: kernel default).")
@click.option("--prefetch", is_flag=True, default=None, help="Warm the whole dataset into the cache in the background.")
@click.option("--include", multiple=True, metavar="GLOB", help="With --prefetch: only these paths (repeatable).")
@click.option("--foreground", is_flag=True, help="Serve in this process, log to stderr (systemd Type=notify).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None, help="Default: info.")
@click.option("--id", "id_option", metavar="DATASET", help=ID_HELP)
@click.pass_context
def mount(ctx, dataset, mountpoint, config_file, foreground, id_option, **given):
    """Mount a final version read-only at MOUNTPOINT (an empty folder); returns once it serves.

    Example: `dsfs mount p/n /data` (or `dsfs mount --id p/n /data`)."""
    if id_option and mountpoint is None:  # `mount --id X MOUNTPOINT`: the one argument is the mountpoint
        dataset, mountpoint = None, dataset
    dataset = one_ref(dataset, id_option)
    options = _merge(config_file, {"dataset": dataset, "mountpoint": mountpoint, **given})
    dataset, mountpoint = options.pop("dataset", None), options.pop("mountpoint", None)
    if not dataset or not mountpoint:
        raise UsageError("name a DATASET and a MOUNTPOINT (or DSFS_DATASET and DSFS_MOUNTPOINT in --config)")
    store = ctx.obj.get("store") or options.pop("store", None)
    options.pop("store", None)
    from dsfs import daemon
    from dsfs.dataset import Dataset
    from dsfs.store import datastores

    if dataset.startswith(datastores.PREFIX) and "/" in dataset:  # plain files: mount their snapshot
        snapshot = Dataset.get(dataset, store=store)
        dataset, store = snapshot.id, snapshot.store.ref
    if foreground:
        from dsfs.daemon.service import serve, setup_logging

        spec = daemon.resolve_spec(dataset, mountpoint, store, **options)
        setup_logging(spec)
        sys.exit(serve(spec))
    handle = daemon.mount(dataset, mountpoint, store, **options)
    if wants_json(ctx):
        return emit_json({"id": handle.dataset_id, "ref": handle.ref, "mountpoint": handle.mountpoint,
                          "pid": handle.pid, "log": handle.log})
    click.echo(f"mounted {handle.ref} ({handle.dataset_id}) at {handle.mountpoint} "
               f"(pid {handle.pid}, log {handle.log})")


@click.command()
@click.argument("mountpoint", metavar="MOUNTPOINT", required=False)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Take MOUNTPOINT from DSFS_MOUNTPOINT in this file.")
@click.option("--force", is_flag=True, help="Lazy unmount: detach even while files are open there.")
@click.pass_context
def unmount(ctx, mountpoint, config_file, force):
    """Unmount a dsfs mount and stop its daemon; also clears a mount left by a killed daemon.

    Example: `dsfs unmount /data`"""
    mountpoint = mountpoint or _merge(config_file, {}).get("mountpoint")
    if not mountpoint:
        raise UsageError("name a MOUNTPOINT (or DSFS_MOUNTPOINT in --config)")
    from dsfs import daemon

    said = daemon.unmount(mountpoint, force=force)
    say(ctx, {"mountpoint": os.path.abspath(mountpoint), "result": said}, said)


@click.command()
@json_option
def mounts(as_json):
    """List this user's dsfs mounts; stale entries (daemon gone) are cleaned up.

    Example: `dsfs mounts --json`"""
    import json

    from dsfs import daemon

    live, stale = daemon.list_mounts()
    for record in stale:
        click.echo(f"removed stale entry: {record.get('ref')} at {record['mountpoint']} "
                   f"(daemon pid {record.get('pid')} is gone)", err=True)
    live = daemon.with_cache_use(live)
    if as_json:
        click.echo(json.dumps(live, indent=2, sort_keys=True))
        return
    if not live:
        click.echo("no dsfs mounts", err=True)
        return
    rows = [("dataset", "version", "id", "mountpoint", "pid", "cache")]
    rows += [(r["dataset"], r["version"], r["dataset_id"], r["mountpoint"], str(r["pid"]),
              f"{r['cache_bytes'] / 2**30:.2f} / {r['cache_budget'] / 2**30:.0f} GiB") for r in live]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
