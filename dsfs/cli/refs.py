"""How a command names the dataset it works on: positionally (`dsfs show p/n`) or as `--id p/n`
(clearml-data's way), the same either way, defaulting to the current dataset where the command
says so. Naming it twice, differently, is a usage error."""

from __future__ import annotations

import functools

import click

from dsfs.errors import UsageError

ID_HELP = "Dataset id or project/name[@version], as the DATASET argument (default: the current one)."


def one_ref(positional: str | None, option: str | None) -> str | None:
    if positional and option and positional != option:
        raise UsageError(f"name the dataset once: DATASET {positional!r} and --id {option!r} differ")
    return option or positional


def dataset_ref(fn):
    """For a command with no other argument: an optional DATASET argument and --id, passed as `ref`."""

    @functools.wraps(fn)
    def merged(*args, ref=None, ref_argument=None, **kwargs):
        return fn(*args, ref=one_ref(ref_argument, ref), **kwargs)

    merged = click.option("--id", "ref", metavar="DATASET", help=ID_HELP)(merged)
    return click.argument("ref_argument", metavar="[DATASET]", required=False)(merged)


def id_too(fn):
    """For a command whose DATASET argument is `ref`: --id as well, merged into `ref`."""

    @functools.wraps(fn)
    def merged(*args, ref=None, id_option=None, **kwargs):
        return fn(*args, ref=one_ref(ref, id_option), **kwargs)

    return click.option("--id", "id_option", metavar="DATASET", help=ID_HELP)(merged)
