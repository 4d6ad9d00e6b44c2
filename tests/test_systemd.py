"""The systemd units and their configs: `systemd-analyze verify` passes without a warning, the example
configs are read by `dsfs mount --config`, and every command line in the units parses."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from dsfs.cli.main import cli
from dsfs.daemon.config import mount_config, read_env_file
from dsfs.errors import UsageError
from servers import unavailable

UNITS = os.path.join(os.path.dirname(__file__), "..", "systemd")
INSTALLED = "/usr/local/bin/dsfs"


def _unit(name: str) -> str:
    return open(os.path.join(UNITS, name)).read()


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        reason = "systemd-analyze is not installed (Debian package systemd)"
        unavailable(reason, "scripts/setup.sh installs the systemd package")
    dsfs_bin = os.path.join(os.path.dirname(sys.executable), "dsfs")
    for name in ("dsfs-mount@.service", "dsfs-download@.service"):
        # verify checks that executables exist: point the units at this checkout's dsfs
        (tmp_path / name).write_text(_unit(name).replace(INSTALLED, dsfs_bin))
    proc = subprocess.run([tool, "verify", str(tmp_path / "dsfs-mount@cats.service"),
                           str(tmp_path / "dsfs-download@cats.service")], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_units_declare_what_the_design_asks():
    mount = _unit("dsfs-mount@.service")
    for line in ("Type=notify", "Restart=on-failure", "EnvironmentFile=/etc/dsfs/mounts/%i.conf",
                 f"ExecStart={INSTALLED} mount --foreground --config /etc/dsfs/mounts/%i.conf",
                 f"ExecStopPost=-{INSTALLED} unmount --force --config /etc/dsfs/mounts/%i.conf"):
        assert line in mount.splitlines(), line
    download = _unit("dsfs-download@.service")
    assert "Type=oneshot" in download and "EnvironmentFile=/etc/dsfs/downloads/%i.conf" in download


def _exec_lines(unit: str, env: dict) -> list[list[str]]:
    """The unit's Exec* command lines that run dsfs, with %i and $VARS expanded as systemd would."""
    out = []
    for line in unit.splitlines():
        key, _, value = line.partition("=")
        if not key.startswith("Exec") or INSTALLED not in value:
            continue
        value = value.lstrip("-").replace("%i", "example")
        args = []
        for word in shlex.split(value)[1:]:
            if word.startswith("${"):
                args.append(env.get(word[2:-1], ""))
            elif word.startswith("$"):
                args.extend(env.get(word[1:], "").split())  # $VAR: split at spaces, empty -> nothing
            else:
                args.append(word)
        out.append(args)
    return out


@pytest.mark.parametrize("unit, config", [("dsfs-mount@.service", "example-mount.conf"),
                                          ("dsfs-download@.service", "example-download.conf")])
def test_unit_command_lines_parse(unit, config):
    env = read_env_file(os.path.join(UNITS, config))
    lines = _exec_lines(_unit(unit), env)
    assert lines
    for args in lines:
        ctx = cli.make_context("dsfs", list(args), resilient_parsing=False)
        command = cli.get_command(ctx, args[0])
        command.make_context(args[0], [a.replace("/etc/dsfs/mounts/example.conf", os.path.join(UNITS, config))
                                       for a in args[1:]])  # raises on an unknown option or argument


def test_example_mount_config():
    options = mount_config(os.path.join(UNITS, "example-mount.conf"))
    assert options == {"dataset": "vision/cats@1.2.0", "mountpoint": "/data/cats", "store": "s3://ml-datasets/dsfs",
                       "cache_dir": "/var/cache/dsfs", "cache_size": "200G", "read_ahead": 4096,
                       "allow_other": True, "prefetch": False, "log_level": "info"}


def test_config_errors(tmp_path):
    config = tmp_path / "c.conf"
    for text, message in (("DSFS_DATSET=x\n", "unknown key DSFS_DATSET"), ("just words\n", "expected KEY=VALUE"),
                          ("DSFS_ALLOW_OTHER=maybe\n", "yes or no"), ("DSFS_READ_AHEAD=4M\n", "number of KiB")):
        config.write_text(text)
        with pytest.raises(UsageError, match=message):
            mount_config(str(config))
    with pytest.raises(UsageError, match="cannot read config"):
        mount_config(str(tmp_path / "missing.conf"))
    config.write_text("DSFS_INCLUDE='train/* val'\nDSFS_TARGET=/x\nOTHER=1\n; comment\n")
    assert mount_config(str(config)) == {"include": ["train/*", "val"]}
