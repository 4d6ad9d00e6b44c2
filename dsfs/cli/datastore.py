"""`dsfs datastore ...` and `dsfs push`: naming stores, and moving data into them.

Like the rest of the CLI, a thin layer over the library (dsfs.store.datastores, dsfs.authoring.datastore_upload,
dsfs.lifecycle.push); errors are DsfsErrors converted by `dsfs.cli.main.main`. Nothing here prints a secret:
datastores are shown through `Datastore.public()`.
"""

from __future__ import annotations

import click
from click.core import ParameterSource

from dsfs.cli.output import emit_json as _emit_json
from dsfs.cli.output import json_option, say
from dsfs.cli.output import table as _table
from dsfs.cli.refs import id_too
from dsfs.errors import UsageError
from dsfs.units import human


def store_ref(ctx: click.Context, store: str | None, datastore: str | None) -> str | None:
    """The group's `--store` / `--datastore`: an option given on the command line beats the other's
    environment variable; both given the same way is an error."""
    given = {name: ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE for name in ("store", "datastore")}
    if store and datastore and not any(given.values()):
        raise UsageError("both DSFS_STORE and DSFS_DATASTORE are set; unset one")
    if given["datastore"] and not given["store"]:
        store = None
    elif given["store"] and not given["datastore"]:
        datastore = None
    if not datastore:  # what datastores.store_ref answers, without loading the store layer (fsspec)
        return store
    from dsfs.store import datastores

    return datastores.store_ref(store, datastore)


def _options_text(options: dict) -> str:
    import json

    return " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(options.items())) or "-"


@click.group()
def datastore():
    """Named stores (config: $XDG_CONFIG_HOME/dsfs/config.toml). `local` is built in."""


@datastore.command()
@click.argument("name")
@click.argument("url")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="An fsspec option (endpoint_url, anon, key, secret, account_name, connection_string, "
                   "sas_token, token, ...). VALUE env:VAR is read from the environment at use. Repeatable.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default datastore.")
@click.option("--overwrite", is_flag=True, help="Replace a datastore of that name.")
@click.pass_context
def register(ctx, name, url, options, make_default, overwrite):
    """Register URL (s3://BUCKET/PREFIX, gs://..., az://CONTAINER/..., file://PATH) as NAME.

    Example: `dsfs datastore register lake s3://team-bucket/lake -o endpoint_url=https://s3.example.com`"""
    from dsfs.store import datastores

    parsed = dict(datastores.parse_option(o) for o in options)
    ds = datastores.register(name, url, parsed, default=make_default, overwrite=overwrite)
    say(ctx, ds.public(),
        f"registered datastore {ds.name} -> {ds.public()['url']}" + (" (default)" if ds.default else ""))


@datastore.command(name="list")
@json_option
def list_(as_json):
    """List datastores (secrets shown as ***).

    Example: `dsfs datastore list --json`"""
    from dsfs.store import datastores

    found = [d.public() for d in datastores.all_datastores()]
    if as_json:
        return _emit_json(found)
    _table(["name", "url", "default", "options"],
           [(d["name"], d["url"], "*" if d["default"] else "", _options_text(d["options"])) for d in found])


@datastore.command()
@click.argument("name")
@json_option
def show(name, as_json):
    """Show one datastore (secrets shown as ***, env:VAR references as they are).

    Example: `dsfs datastore show lake`"""
    import json

    from dsfs.store import datastores

    data = datastores.get(name).public()
    if as_json:
        return _emit_json(data)
    rows = [("name", data["name"]), ("url", data["url"]), ("default", data["default"]),
            ("builtin", data["builtin"])]
    rows += [(f"option {k}", v if isinstance(v, str) else json.dumps(v)) for k, v in sorted(data["options"].items())]
    _table(["field", "value"], rows)


@datastore.command()
@click.argument("name")
@click.pass_context
def remove(ctx, name):
    """Forget a datastore (its data is not touched).

    Example: `dsfs datastore remove lake`"""
    from dsfs.store import datastores

    datastores.remove(name)
    say(ctx, {"removed": name}, f"removed datastore {name}")


@datastore.command(name="set-default")
@click.argument("name")
@click.pass_context
def set_default(ctx, name):
    """Make NAME the datastore used when no --store/--datastore is given.

    Example: `dsfs datastore set-default lake`"""
    from dsfs.store import datastores

    datastores.set_default(name)
    say(ctx, {"default": name}, f"default datastore: {name}")


@datastore.command()
@click.argument("name")
@click.argument("src_dir", type=click.Path(file_okay=False))
@click.option("--target-path", required=True, help="Folder in the datastore to put the files under.")
@click.option("--overwrite", is_flag=True, help="Replace files that already exist there.")
@click.option("--max-workers", type=click.IntRange(1, 64), default=None, help="Parallel uploads (default 8).")
@click.pass_context
def upload(ctx, name, src_dir, target_path, overwrite, max_workers):
    """Upload the files under SRC_DIR as they are (not as a dataset version).

    Example: `dsfs datastore upload lake ./raw --target-path inputs/2024`"""
    from dsfs.authoring.datastore_upload import upload as run
    from dsfs.store import datastores

    result = run(datastores.get(name), src_dir, target_path, overwrite=overwrite, max_workers=max_workers)
    say(ctx, result, f"uploaded {result['files']} file(s), {human(result['bytes'])} to {result['target']}"
        + (f" ({result['replaced']} replaced)" if result["replaced"] else ""))


@click.command()
@click.argument("ref", metavar="DATASET", required=False)
@id_too
@click.option("--to", "to", required=True, metavar="DATASTORE",
              help="Target datastore name (or a store URL).")
@click.option("--max-workers", type=click.IntRange(1, 64), default=None, help="Parallel pack copies (default 4).")
@json_option
@click.pass_context
def push(ctx, ref, to, max_workers, as_json):
    """Copy a final version, its missing ancestors and missing packs to another datastore.

    Example: `dsfs push vision/cats --to lake`"""
    from dsfs.dataset import Dataset

    ds = Dataset.get(ref, store=ctx.obj["store"]) if ref else Dataset.current(ctx.obj["store"])
    result = ds.push(to, max_workers=max_workers)
    if as_json:
        return _emit_json(result)
    click.echo(f"pushed {ds.info.ref} ({ds.id}) to {to}: {result['versions_sent']} version(s) sent, "
               f"{result['versions_present']} already there; {result['packs_sent']} pack(s) "
               f"({human(result['bytes_sent'])}) sent, {result['packs_present']} already there")
