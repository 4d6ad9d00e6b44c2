"""`dsfs ui`: serve the web UI (dsfs.ui) on this node until Ctrl-C.

Registered on the main group in cli/main.py. Starlette, Jinja2 and uvicorn are imported when the
command runs (the `ui` extra), so `dsfs --help` does not load them.
"""

from __future__ import annotations

import secrets

import click

from dsfs.errors import UsageError


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address needs a token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--read-only", is_flag=True, help="No actions: the pages only look (editing, publishing and "
                                                "deleting are refused and not shown).")
@click.option("--token", default=None, envvar="DSFS_UI_TOKEN", metavar="TOKEN",
              help="Require this token (the first page sets a cookie from ?token=...; scripts send "
                   "Authorization: Bearer TOKEN). Default on a non-loopback host: a new random one, printed. "
                   "Default: $DSFS_UI_TOKEN.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
              help="Cache folder (default: $DSFS_CACHE_DIR, else $XDG_CACHE_HOME/dsfs).")
@click.option("--cache-size", default=None, metavar="SIZE",
              help="Cache budget, e.g. 50G (default: $DSFS_CACHE_SIZE, else half the free disk).")
@click.pass_context
def ui(ctx, host, port, read_only, token, cache_dir, cache_size):
    """Serve the web UI: datasets, versions and their files, previews, compare, actions.

    Example: `dsfs ui --port 8765` then open http://127.0.0.1:8765/"""
    try:
        import uvicorn

        from dsfs.ui.app import create_app, is_loopback
    except ImportError as exc:
        raise UsageError(f"the web UI needs its extra: pip install 'dsfs[ui]' ({exc.name} is missing)") from None
    from dsfs.catalog import open_store

    store = open_store(ctx.obj.get("store"))  # a store that cannot be opened is an error now, not a page later
    if not is_loopback(host) and not token:
        token = secrets.token_urlsafe(24)
    app = create_app(store, cache_dir=cache_dir, cache_size=cache_size, read_only=read_only, token=token, host=host)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    click.echo(f"dsfs ui: serving {store.display_url}{' (read-only)' if read_only else ''} at {url}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
