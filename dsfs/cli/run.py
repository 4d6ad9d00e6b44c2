"""`dsfs run` and `dsfs env`: hand datasets to a job through DSFS_DATAREFERENCE_<NAME>.

The commands import what they use (subprocess, shutil, the API): `dsfs --help` loads none of it."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from dsfs.cli.output import emit_json, wants_json
from dsfs.errors import UsageError

if TYPE_CHECKING:
    from dsfs.datarefs import DataReference


def _references(ctx, inputs) -> list[DataReference]:
    """Parse and resolve every input before anything is set up: a bad one changes nothing."""
    from dsfs.datarefs import DataReference, parse_input
    from dsfs.dataset import Dataset

    specs = [parse_input(spec) for spec in inputs]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"input names must be distinct: {', '.join(names)}")
    return [DataReference(Dataset.get(s.dataset, store=ctx.obj["store"]), s.mode, s.path_on_compute, s.name)
            for s in specs]


def _setup_all(refs: list[DataReference]) -> dict[str, str]:
    """`dsfs env`: set up every input, for good (the job is someone else's)."""
    env = {}
    for ref in refs:
        ref.setup()
        env.update(ref.env)
    return env


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--input", "inputs", multiple=True, required=True, metavar="NAME=DATASET[:mount|:download][:PATH]",
              help="A dataset for the job; repeatable. PATH: none -> a temporary folder, relative -> under the cwd.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
@click.pass_context
def run(ctx, inputs, command):
    """Make the inputs available, run COMMAND with DSFS_DATAREFERENCE_<NAME> set, clean up, and exit
    with the command's exit code. `$DSFS_DATAREFERENCE_<NAME>` in the arguments is expanded.

    Example: `dsfs run --input train=vision/cats:mount -- python train.py --data '$DSFS_DATAREFERENCE_train'`"""
    import shutil

    from dsfs.datarefs import Interrupted, run_job

    refs = _references(ctx, inputs)
    if shutil.which(command[0]) is None:
        raise UsageError(f"command not found: {command[0]}")
    try:
        code = run_job(refs, list(command))
    except Interrupted as exc:
        click.echo(f"dsfs: interrupted during setup (signal {exc.signum}); cleaned up", err=True)
        code = 128 + exc.signum
    sys.exit(code)


@click.command(name="env")
@click.option("--input", "inputs", multiple=True, required=True, metavar="NAME=DATASET[:mount|:download][:PATH]")
@click.pass_context
def env_(ctx, inputs):
    """Set up the inputs and print `export` lines, for schedulers that run the job themselves.
    Mounts stay until `dsfs unmount`; downloaded folders stay.

    Example: `eval "$(dsfs env --input train=vision/cats:mount)"`"""
    import shlex

    refs = _references(ctx, inputs)
    try:
        env = _setup_all(refs)
    except BaseException:
        for ref in reversed(refs):
            ref.cleanup()
        raise
    if wants_json(ctx):
        return emit_json(env)
    for key, value in env.items():
        click.echo(f"export {key}={shlex.quote(value)}")
