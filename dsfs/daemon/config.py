"""Config files of the systemd units: `/etc/dsfs/mounts/<name>.conf`, `/etc/dsfs/downloads/<name>.conf`.

The format is systemd's EnvironmentFile: `KEY=VALUE` lines, `#` or `;` comments, values optionally
in single or double quotes. The units load the file as the service's environment (so credentials
such as AWS_ACCESS_KEY_ID or DSFS_STORE reach dsfs and fsspec), and `dsfs mount --config FILE`
reads its DSFS_* keys as options, so the same file works by hand. A DSFS_* key dsfs does not know
is an error (a typo must not silently drop an option); other keys are only environment.

    DSFS_DATASET=vision/cats@1.2.0       dataset id or project/name[@version]
    DSFS_MOUNTPOINT=/data/cats           (mounts)
    DSFS_TARGET=/scratch/cats            (downloads)
    DSFS_STORE=s3://bucket/dsfs          store URL (default: the embedded local store)
    DSFS_CACHE_DIR=/var/cache/dsfs       DSFS_CACHE_SIZE=200G
    DSFS_READ_AHEAD=4096                 KiB
    DSFS_ALLOW_OTHER=yes                 DSFS_PREFETCH=no        DSFS_INCLUDE=train/* val/*
    DSFS_LOG_LEVEL=info
    DSFS_DOWNLOAD_ARGS=--include train   extra `dsfs download` arguments (downloads)
"""

from __future__ import annotations

from dsfs.errors import UsageError

MOUNT_KEYS = {
    "DSFS_DATASET": "dataset", "DSFS_MOUNTPOINT": "mountpoint", "DSFS_STORE": "store",
    "DSFS_CACHE_DIR": "cache_dir", "DSFS_CACHE_SIZE": "cache_size", "DSFS_READ_AHEAD": "read_ahead",
    "DSFS_ALLOW_OTHER": "allow_other", "DSFS_PREFETCH": "prefetch", "DSFS_INCLUDE": "include",
    "DSFS_LOG_LEVEL": "log_level",
}
OTHER_KEYS = {"DSFS_TARGET", "DSFS_DOWNLOAD_ARGS", "DSFS_RUNTIME_DIR"}
_BOOLS = {"1": True, "yes": True, "true": True, "on": True, "0": False, "no": False, "false": False, "off": False}


def read_env_file(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror}") from None
    values = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise UsageError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def mount_config(path: str) -> dict:
    """The mount options a config file sets, as keyword arguments of `dsfs.daemon.mount`."""
    options: dict[str, bool | int | str | list[str]] = {}
    for key, value in read_env_file(path).items():
        if not key.startswith("DSFS_"):
            continue
        if key not in MOUNT_KEYS:
            if key in OTHER_KEYS:
                continue
            raise UsageError(f"{path}: unknown key {key} (known: {', '.join(sorted(MOUNT_KEYS))})")
        name = MOUNT_KEYS[key]
        if name in ("allow_other", "prefetch"):
            if value.lower() not in _BOOLS:
                raise UsageError(f"{path}: {key} must be yes or no, not {value!r}")
            options[name] = _BOOLS[value.lower()]
        elif name == "read_ahead":
            if not value.isdigit():
                raise UsageError(f"{path}: {key} must be a number of KiB, not {value!r}")
            options[name] = int(value)
        elif name == "include":
            options[name] = value.split()
        elif value:
            options[name] = value
    return options
