"""Named datastores (AzureML's Datastore idea): a name for a store URL and the fsspec options that
reach it, kept in `$XDG_CONFIG_HOME/dsfs/config.toml`, and the one place that turns "which store?"
into a `Store`.

    default = "lake"

    [datastores.lake]
    url = "s3://ml-data/dsfs"
    options = { endpoint_url = "https://minio.internal:9000", key = "env:LAKE_KEY", secret = "env:LAKE_SECRET" }

- `local` is built in: the embedded default store (`dsfs.store.layout.default_store_url()`); it needs no
  configuration, cannot be registered over or removed, and is the default unless `default` names
  another datastore.
- An option value `env:VAR` is read from the environment each time the datastore is opened, so the
  file can hold no secret at all. A missing variable is an error naming the variable.
- One option is dsfs's own, not the backend's: `timeout`, the seconds one store operation may take
  before it is reported as unreachable (default 30; a second per MiB moved is added: see
  `dsfs.store.layout.Store.time_limit`). It is checked when the datastore is registered.
- Secrets (options whose key looks like secret/key/token/password/connection_string/sas/credential)
  are shown as `***` by `public()` and never copied into a store; `env:VAR` references are shown as
  they are. The file is written 0600; a file that holds literal secrets and is readable by group or
  others is refused (`chmod 600` fixes it), like ssh does with private keys.

A store reference, wherever dsfs takes one (`open_store`, `--store`, `store=` in the Python API), is
a URL or `datastore:NAME`; `None` means `$DSFS_STORE`, else `$DSFS_DATASTORE`, else the default
datastore. A store opened through a datastore remembers `datastore:NAME` as its `ref`, so the
"current dataset" state reopens it with its options, never with secrets written down.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field

import tomli_w

from dsfs import settings
from dsfs.errors import Conflict, DatastoreError, UsageError
from dsfs.fsutil import atomic_write
from dsfs.store import backends
from dsfs.store.layout import Store, default_store_url, redact

log = logging.getLogger(__name__)

LOCAL = "local"
PREFIX = "datastore:"
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
ENV_RE = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)")
MASK = "***"


@dataclass
class Datastore:
    """One named store: its URL and its fsspec options as configured (env:VAR not yet read)."""

    name: str
    url: str
    options: dict = field(default_factory=dict)
    default: bool = False

    @property
    def builtin(self) -> bool:
        return self.name == LOCAL

    @property
    def ref(self) -> str:
        return PREFIX + self.name

    def resolved_options(self) -> dict:
        """The options with every `env:VAR` read from the environment now."""
        return _resolve(self.options, self.name)

    def store(self) -> Store:
        """A Store for this datastore, not yet contacted."""
        store = Store(self.url, **self.resolved_options())
        store.ref = self.ref
        return store

    def open(self, create: bool = False) -> Store:
        """The dsfs store in this datastore (`create`: write its marker if missing; `local` always may)."""
        store = self.store()
        store.check(create=create or self.builtin)
        return store

    def public(self) -> dict:
        """What `show` and `list` print: secrets masked, URL credentials removed."""
        return {"name": self.name, "url": redact(self.url), "options": mask(self.options),
                "default": self.default, "builtin": self.builtin}


def _resolve(options: dict, name: str) -> dict:
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out[key] = _resolve(value, name)
            continue
        match = ENV_RE.fullmatch(value) if isinstance(value, str) else None
        if match:
            var = match.group(1)
            if var not in os.environ:
                raise DatastoreError(f"datastore {name!r}: option {key} reads the environment variable "
                                     f"{var}, which is not set; export {var}")
            value = os.environ[var]
        out[key] = value
    return out


def mask(options: dict) -> dict:
    """Options with literal secret values replaced by ***; env:VAR references kept."""
    out: dict = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out[key] = mask(value)
        elif backends.is_secret_key(key) and not (isinstance(value, str) and ENV_RE.fullmatch(value)):
            out[key] = MASK
        else:
            out[key] = value
    return out


def _has_literal_secret(options: dict) -> bool:
    return mask(options) != options


# -- the config file ---------------------------------------------------------------------------


def _load() -> dict:
    path = settings.config_path()
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DatastoreError(f"{path} is not valid TOML ({exc}); fix or remove it") from None
    stores = data.get("datastores", {})
    if not isinstance(stores, dict) or not all(isinstance(v, dict) and isinstance(v.get("url"), str)
                                               for v in stores.values()):
        raise DatastoreError(f"{path}: every [datastores.NAME] table needs a url string")
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and any(
            _has_literal_secret(v.get("options", {})) or redact(v["url"]) != v["url"] for v in stores.values()):
        raise DatastoreError(f"{path} holds secrets and is readable by other users; "
                             f"run `chmod 600 {path}` (or use env:VAR values)")
    return data


def _save(data: dict) -> None:
    atomic_write(settings.config_path(), tomli_w.dumps(data).encode(), mode=0o600)


def default_name() -> str:
    return _load().get("default") or LOCAL


def get(name: str) -> Datastore:
    """The datastore called `name`, or DatastoreError listing the known ones."""
    data = _load()
    default = data.get("default") or LOCAL
    if name == LOCAL:
        return Datastore(LOCAL, default_store_url(), {}, default == LOCAL)
    entry = data.get("datastores", {}).get(name)
    if entry is None:
        known = ", ".join([LOCAL, *sorted(data.get("datastores", {}))])
        raise DatastoreError(f"unknown datastore {name!r} (known: {known}); "
                             f"register it with `dsfs datastore register {name} URL`")
    return Datastore(name, entry["url"], dict(entry.get("options", {})), default == name)


def all_datastores() -> list[Datastore]:
    data = _load()
    return [get(LOCAL)] + [get(name) for name in sorted(data.get("datastores", {}))]


def register(name: str, url: str, options: dict | None = None, default: bool = False,
             overwrite: bool = False) -> Datastore:
    """Add (or with overwrite, replace) a datastore. Nothing is contacted."""
    if not NAME_RE.fullmatch(name or ""):
        raise DatastoreError(f"invalid datastore name {name!r}: a letter, then letters, digits, '_', '-', '.'")
    if name == LOCAL:
        raise DatastoreError("'local' is the built-in datastore (the embedded default store); choose another name")
    backends.check_url(url)
    literal = {k: v for k, v in (options or {}).items() if not (isinstance(v, str) and ENV_RE.fullmatch(v))}
    backends.timeout_option(literal)  # a bad timeout fails now, not at first use
    data = _load()
    stores = data.setdefault("datastores", {})
    if name in stores and not overwrite:
        raise Conflict(f"datastore {name!r} exists; remove it first or pass --overwrite")
    if default:
        _require_environment(name, options or {})
    stores[name] = {"url": url, **({"options": dict(options)} if options else {})}
    if default:
        data["default"] = name
    _save(data)
    return get(name)


def _require_environment(name: str, options: dict) -> None:
    """A datastore made the default must be usable in this shell: every `env:VAR` it reads is set
    (else every later command would fail on it, far from the cause)."""
    unset = sorted(m.group(1) for v in options.values() if isinstance(v, str)
                   for m in [ENV_RE.fullmatch(v)] if m and m.group(1) not in os.environ)
    if unset:
        raise DatastoreError(f"datastore {name!r} reads {', '.join(unset)} from the environment, which "
                             f"{'is' if len(unset) == 1 else 'are'} not set here; set "
                             f"{'it' if len(unset) == 1 else 'them'} before making it the default")


def remove(name: str) -> None:
    if name == LOCAL:
        raise DatastoreError("the built-in datastore 'local' cannot be removed")
    get(name)  # unknown -> error
    data = _load()
    del data["datastores"][name]
    if data.get("default") == name:
        del data["default"]
    _save(data)


def set_default(name: str) -> None:
    store = get(name)
    _require_environment(name, store.options)
    data = _load()
    if name == LOCAL:
        data.pop("default", None)
    else:
        data["default"] = name
    _save(data)


def parse_option(text: str) -> tuple[str, object]:
    """`KEY=VALUE` from the command line. VALUE is read as a TOML value when it is one (true, 3,
    {a = 1}), else kept as a string; a secret is always a string."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise UsageError(f"invalid --option {key or text!r}: use KEY=VALUE, e.g. endpoint_url=http://host:9000")
    if backends.is_secret_key(key):
        return key, value
    try:
        return key, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


# -- which store? ------------------------------------------------------------------------------


def open_store(ref: str | None = None, create: bool = False) -> Store:
    """The Store named by a URL, `datastore:NAME`, or None (see the module docstring)."""
    if ref is None:
        env_store = settings.env_store()
        env_datastore = settings.env_datastore()
        if env_store and env_datastore:
            raise UsageError("both DSFS_STORE and DSFS_DATASTORE are set; unset one")
        ref = env_store or (PREFIX + env_datastore if env_datastore else PREFIX + default_name())
    if ref.startswith(PREFIX):
        datastore = get(ref[len(PREFIX):])
        log.debug("opening datastore %s at %s", datastore.name, redact(datastore.url))
        return datastore.open(create=create)
    log.debug("opening store %s", redact(ref))
    return Store.open(ref, create=create)


def path_url(ref: str) -> str:
    """`datastore:NAME/PATH` -> the URL of PATH inside that datastore (plain files, not the store)."""
    name, _, path = ref[len(PREFIX):].partition("/")
    if not path.strip("/"):
        raise UsageError(f"{ref!r}: expected datastore:NAME/PATH")
    return get(name).url.rstrip("/") + "/" + path.strip("/")


def for_url(url: str) -> Datastore | None:
    """The registered datastore whose URL is the longest prefix of `url` (its options reach it)."""
    best = None
    for ds in all_datastores():
        root = ds.url.rstrip("/") + "/"
        if url.startswith(root) and (best is None or len(root) > len(best.url)):
            best = ds
    return best


def store_ref(store: str | None, datastore: str | None) -> str | None:
    """The store reference for `--store URL` / `--datastore NAME` (at most one may be given)."""
    if store and datastore:
        raise UsageError("--store and --datastore name the same thing: give only one")
    if datastore:  # an unknown name fails when the store is opened (`datastore register` must still run)
        return PREFIX + datastore
    return store
