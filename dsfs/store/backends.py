"""What each fsspec backend needs from dsfs: URL checks, option defaults, a reachability probe, and
the translation of its exceptions into dsfs's typed errors.

`dsfs.store.layout.Store` is the only caller. Everything backend-specific (s3fs/botocore, adlfs/azure-core,
gcsfs/google-auth/aiohttp) lives here, so the store can speak of versions and packs.

Why a probe: on a dead endpoint the SDKs retry with backoff before they give up (azure-core about
90 s, gcsfs about 30 s, botocore about 13 s, measured here on a refused port). One TCP connect with
a short timeout before the first call turns that into an answer in seconds. It is skipped when a
proxy handles the endpoint (the proxy answers instead), and a reachable endpoint is remembered for
the life of the process.

Time limits: every store call answers within a limit (`run`), by default `DEFAULT_TIMEOUT` seconds
plus one second per MiB it moves (a datastore's `timeout` option sets the first part). The SDKs get
a connect timeout, a read timeout (time without a byte) of a third of the limit and, where they take
it, a small retry count, so that a stalled request is retried within the limit; `run` bounds the
whole call, their retries included, and cancels it when the limit passes. A store can also go away
after it was opened: while a call has not answered for `WATCH_INTERVAL` seconds its endpoint is
probed again, and a refused connect ends the call at once instead of after the SDK's retry schedule.

Secrets: messages are built from the exception's first line, with every secret option value and
any password in a URL scrubbed out, and exceptions are never chained, so no traceback or message
carries a key. The scrubbed text of the original exception is kept on the error (`cause`, which
`cause_of` makes) and logged at debug where the error is made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import re
import socket
import threading
import time
import types
import urllib.parse
import urllib.request
from typing import TypeVar

from dsfs.errors import AccessDenied, DsfsError, StoreReadOnly, StoreUnavailable, UsageError

CLOUD = {"s3": "bucket", "s3a": "bucket", "gs": "bucket", "gcs": "bucket",
         "az": "container", "abfs": "container", "abfss": "container"}
KNOWN = {"file", "local", "memory", *CLOUD}
URL_HELP = ("expected file://PATH, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], az://CONTAINER[/PREFIX] "
            "or memory://NAME")
PROBE_TIMEOUT = 3.0
CONNECT_TIMEOUT = 5
DEFAULT_TIMEOUT = 30.0  # seconds a store may take to answer one operation (a datastore's `timeout` option)
SECONDS_PER_MIB = 1.0  # ... plus this per MiB the operation moves: transfers slower than 1 MiB/s fail
WATCH_INTERVAL = 3.0  # a call unanswered this long has its endpoint probed again (then every as long)
SDK_ATTEMPTS = 3  # botocore's attempts per request (its default is 5 with backoff: ~13 s on a refused port)

SECRET_KEY_RE = re.compile(r"secret|key|token|passw|connection_string|sas|credential|auth", re.I)
URL_USERINFO_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://([^/\s@'\"]+)@")
QUERY_SECRET_RE = re.compile(r"([?&](?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
                             r"access_token|token|key|code)=)[^&\s'\"]+", re.I)

log = logging.getLogger(__name__)

# What to set when a backend finds no credentials at all.
CREDENTIAL_HELP = {
    "s3": "set the datastore options key and secret (e.g. --option key=env:AWS_ACCESS_KEY_ID "
          "--option secret=env:AWS_SECRET_ACCESS_KEY), or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
          "or anon=true for a public bucket",
    "gs": "set the datastore option token (a service-account JSON file, e.g. --option token=env:"
          "GOOGLE_APPLICATION_CREDENTIALS), or GOOGLE_APPLICATION_CREDENTIALS, or token=anon for a public bucket",
    "az": "set the datastore option account_name with account_key or sas_token, or connection_string "
          "(e.g. --option connection_string=env:AZURE_STORAGE_CONNECTION_STRING), or anon=true for a "
          "public container",
}


CONNECTION_STRING_SECRETS = {"accountkey", "sharedaccesssignature", "sharedaccesskey"}


def family(protocol: str) -> str:
    """s3, gs, az, or the protocol itself for local ones."""
    return {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az"}.get(protocol, protocol)


EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "az": ("adlfs", "azure")}  # family -> library, extra


def missing_library(protocol: str, exc: ImportError) -> UsageError:
    """A cloud library that is not installed: which extra brings it (a usage error: nothing is
    unreachable, the install is short of a part)."""
    library, extra = EXTRAS.get(family(protocol), (getattr(exc, "name", None) or "a library", None))
    how = f"pip install 'dsfs[{extra}]'" if extra else "install it"
    return UsageError(f"{protocol}:// needs the {library} library, which is not installed: {how}")


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY_RE.search(key))


def secret_values(options: dict) -> list[str]:
    """Every secret-looking option value (nested dicts included), longest first for scrubbing."""
    found = []
    for key, value in options.items():
        if isinstance(value, dict):
            found += secret_values(value)
        elif isinstance(value, str) and value and is_secret_key(key):
            found.append(value)
            found += [part.split("=", 1)[1] for part in value.split(";")  # Azure connection strings
                      if part.split("=", 1)[0].strip().lower() in CONNECTION_STRING_SECRETS]
    return sorted({v for v in found if len(v) >= 4}, key=len, reverse=True)


def scrub(text: str, secrets: list[str]) -> str:
    """`text` without the secret values, URL passwords (user:password@; adlfs's az://container@account
    is kept) and signature or token query parameters."""
    for value in secrets:
        text = text.replace(value, "***")
    text = URL_USERINFO_RE.sub(lambda m: m[0] if family(m[1]) == "az" else f"{m[1]}://***@", text)
    return QUERY_SECRET_RE.sub(r"\1***", text)


def cause_of(exc: BaseException, secrets: list[str]) -> str:
    """A scrubbed text of `exc` and what it wraps (first lines), for the debug log: DsfsError.cause."""
    parts = []
    for e in _causes(exc)[:4]:
        first = str(e).splitlines()[0][:300] if str(e) else ""
        parts.append(f"{type(e).__name__}: {first}" if first else type(e).__name__)
    return scrub(" <- ".join(parts), secrets)


E = TypeVar("E", bound=DsfsError)


def caused(error: E, exc: BaseException, secrets: list[str]) -> E:
    """`error` with the scrubbed text of `exc` as its cause, logged at debug; raise it `from None`."""
    error.cause = cause_of(exc, secrets)
    log.debug("%s: %s (cause: %s)", type(error).__name__, error, error.cause)
    return error


def check_url(url: str) -> tuple[str, str]:
    """(protocol, bucket or '') of a store URL, or UsageError saying what a store URL looks like."""
    if "://" not in url:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url):
            raise UsageError(f"malformed store URL {url!r}: {URL_HELP}")
        return "file", ""  # a plain path
    protocol, rest = url.split("://", 1)
    if protocol not in KNOWN:
        raise UsageError(f"malformed store URL {redact_url(url)!r}: unknown scheme {protocol!r}; {URL_HELP}")
    if protocol not in CLOUD:
        return protocol, ""
    bucket = rest.split("/", 1)[0]
    if "@" in bucket:  # adlfs's az://container@account; elsewhere user:password@bucket
        bucket = bucket.split("@", 1)[0] if family(protocol) == "az" else bucket.rsplit("@", 1)[1]
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]", bucket):
        raise UsageError(f"malformed store URL {redact_url(url)!r}: {bucket or 'no'} {CLOUD[protocol]} name "
                         f"(3-63 lower-case letters, digits, '-', '.', '_'); {URL_HELP}")
    return protocol, bucket


def redact_url(url: str) -> str:
    """A URL without user:password@ or query secrets, safe for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc if family(parts.scheme) == "az" else parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def timeout_option(options: dict) -> float:
    """Remove dsfs's own `timeout` option from `options` (it is not the backend's) and return it:
    the seconds one store operation may take, DEFAULT_TIMEOUT when not given."""
    value = options.pop("timeout", None)
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if not 0 < seconds < 86400:
        raise UsageError(f"invalid store option timeout={value!r}: a number of seconds, e.g. timeout=30")
    return seconds


GCS_TOKEN_WORDS = {"anon", "google_default", "cache", "cloud", "browser"}  # gcsfs's token= words, not files


def _check_gcs_token(options: dict) -> None:
    """A service-account file named by the `token` option or GOOGLE_APPLICATION_CREDENTIALS that
    does not exist: a usage error naming it, before any request (gcsfs would try the network)."""
    token = options.get("token")
    named = [("the token option", token)] if isinstance(token, str) and token not in GCS_TOKEN_WORDS else []
    if token is None and os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        named.append(("GOOGLE_APPLICATION_CREDENTIALS", os.environ["GOOGLE_APPLICATION_CREDENTIALS"]))
    for where, path in named:
        if not os.path.isfile(os.path.expanduser(path)):
            raise UsageError(f"no credentials file {path} ({where}): name an existing service-account "
                             f"JSON file, or token=anon for a public bucket")


def prepare(protocol: str, options: dict, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Options with dsfs's defaults for this backend, its time limits derived from `timeout` (see
    the module docstring; options the user gave win). Called before the backend is imported."""
    kind = family(protocol)
    options = dict(options)
    connect = min(CONNECT_TIMEOUT, timeout)
    read = max(1.0, timeout / 3)
    if kind == "gs":
        # gcsfs 2026.10 otherwise probes a gRPC API first and stalls 60 s per call on emulators
        # and on plain buckets; must be set before gcsfs is imported (DESIGN 8).
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    if kind in ("s3", "gs", "az"):
        # Many writers share a store: a cached listing would hide their versions and claims.
        options.setdefault("use_listings_cache", False)
    if kind == "s3":
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", connect)
        config.setdefault("read_timeout", read)
        config.setdefault("retries", {"mode": "standard", "total_max_attempts": SDK_ATTEMPTS})
        options["config_kwargs"] = config
    elif kind == "az":
        options.setdefault("connection_timeout", connect)
        options.setdefault("read_timeout", read)
    elif kind == "gs":
        _check_gcs_token(options)
        import aiohttp  # gcsfs's transport; a ClientTimeout (not a number, which aiohttp takes as total)

        options.setdefault("requests_timeout", aiohttp.ClientTimeout(sock_connect=connect, sock_read=read))
    return options


def run(fs, fn, args: tuple, kwargs: dict, limit: float, endpoint_url: str | None, display_url: str):
    """fn(*args, **kwargs), where fn is a method of `fs`, answered within `limit` seconds.

    An async backend's method (fsspec's sync wrapper of a coroutine, which names it __wrapped__) runs
    on the backend's event loop while this thread waits; past the limit it is cancelled and
    TimeoutError raised. While it has not answered, the endpoint is probed every WATCH_INTERVAL: a
    refused connect cancels it and raises StoreUnavailable. Anything else (a local filesystem, or a
    helper such as atomic_write) is called directly: the kernel answers those."""
    coroutine = getattr(fn, "__wrapped__", None)
    if inspect.ismethod(fn) and coroutine is not None and not inspect.ismethod(coroutine):
        coroutine = types.MethodType(coroutine, fn.__self__)  # a wrapper defined in the class: bind it
    loop = getattr(fs, "loop", None)
    if loop is None or not inspect.iscoroutinefunction(coroutine):
        return fn(*args, **kwargs)
    future = asyncio.run_coroutine_threadsafe(coroutine(*args, **kwargs), loop)
    deadline = time.monotonic() + limit
    try:
        while True:
            left = deadline - time.monotonic()
            done, _ = concurrent.futures.wait([future], timeout=max(0.0, min(WATCH_INTERVAL, left)))
            if done:
                return future.result()
            if left <= WATCH_INTERVAL:
                raise TimeoutError(f"no answer within {limit:.0f} s")
            probe(endpoint_url, display_url, remember=False)
    finally:
        future.cancel()  # a no-op once it is done; otherwise the loop stops waiting for the store


def whole_read_options(protocol: str) -> dict:
    """Keyword arguments for reading a whole (small) object in one request. s3fs asks for the
    object's size first (a HEAD) to split big reads across connections; records and change-sets
    are small, and the HEAD doubled the requests of every scan of the store (1,000 versions on
    loopback S3: 4,007 requests for `check`)."""
    return {"max_concurrency": 1} if family(protocol) == "s3" else {}


def endpoint(protocol: str, fs) -> str | None:
    """The HTTP endpoint a cloud filesystem talks to, or None for local ones."""
    kind = family(protocol)
    try:
        if kind == "s3":
            return (getattr(fs, "endpoint_url", None) or (fs.client_kwargs or {}).get("endpoint_url")
                    or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                    or "https://s3.amazonaws.com")
        if kind == "gs":
            return getattr(fs, "_location", None) or "https://storage.googleapis.com"
        if kind == "az":
            return fs.service_client.url
    except AttributeError:
        return None
    return None


_reachable: set[tuple[str, int]] = set()
_reachable_lock = threading.Lock()


def probe(url: str | None, display_url: str, remember: bool = True) -> None:
    """Raise StoreUnavailable at once if nothing answers a TCP connect at `url`'s host and port.
    remember: skip an endpoint that answered before in this process (when opening a store); a store
    that stopped answering is probed with remember=False."""
    if not url:
        return
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    key = (parts.hostname, port)
    if (remember and key in _reachable) or _proxied(parts):
        return
    try:
        with socket.create_connection(key, timeout=PROBE_TIMEOUT):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise caused(StoreUnavailable(f"store {display_url} unreachable: cannot connect to "
                                      f"{parts.hostname}:{port} ({reason})"), exc, []) from None
    with _reachable_lock:
        _reachable.add(key)


def _proxied(parts: urllib.parse.SplitResult) -> bool:
    proxies = urllib.request.getproxies()
    if parts.scheme not in proxies and "all" not in proxies:
        return False
    if not parts.hostname:  # nothing to connect to (probe() returns before asking)
        return True
    return not urllib.request.proxy_bypass(parts.hostname)


def _causes(exc: BaseException):
    """The exception, what it wraps (cause, context, and exceptions among its args: adlfs's rm wraps
    the azure error in a RuntimeError's args)."""
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [exc]
    while stack and len(seen) < 10:
        e = stack.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        stack += [e.__cause__, e.__context__] + [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    return seen


def _status(e: BaseException) -> int | None:
    for attr in ("status_code", "status", "code"):
        value = getattr(e, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


MISSING_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError",
                       "CredentialUnavailableError")
BUCKET_MISSING = ("NoSuchBucket", "ContainerNotFound", "The specified bucket does not exist",
                  "The specified container does not exist")
DENIED = ("AccessDenied", "Access Denied", "Forbidden", "AuthorizationFailure", "AuthenticationFailed",
          "AuthorizationPermissionMismatch", "InvalidAccessKeyId", "SignatureDoesNotMatch",
          "InvalidClientTokenId", "AuthorizationError", "ClientAuthenticationError", "RefreshError")
WRITES = ("write", "delete")


def translate(exc: BaseException, what: str, protocol: str, display_url: str, bucket: str,
              secrets: list[str]) -> DsfsError:
    """The typed error for a backend failure while doing `what` (read, write, list, delete)."""
    kind = family(protocol)
    chain = _causes(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    if names & set(MISSING_CREDENTIALS):
        return AccessDenied(f"no credentials for store {display_url}: "
                            f"{CREDENTIAL_HELP.get(kind, 'set the datastore credentials')}")
    if any(s in text for s in BUCKET_MISSING):
        return bucket_missing(protocol, bucket, display_url)
    if denied(exc):
        if what in WRITES:
            return StoreReadOnly(f"store {display_url} refused to {what}: access denied "
                                 f"(the credentials may be wrong or only allow reading)")
        return AccessDenied(f"store {display_url} refused to {what}: access denied "
                            f"(check the datastore's credentials)")
    why = scrub(reason(exc), secrets)
    return StoreUnavailable(f"store {display_url} unreachable ({what}): {type(exc).__name__}: {why}")


def denied(exc: BaseException) -> bool:
    """Did the backend refuse (401/403, a permission error, missing or wrong credentials)? Such an
    answer is not retried (dsfs.retry): the same request would be refused again."""
    chain = _causes(exc)
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    statuses = {_status(e) for e in chain}
    return bool(403 in statuses or 401 in statuses or isinstance(exc, PermissionError)
                or names & set(DENIED + MISSING_CREDENTIALS) or any(s in text for s in DENIED))


def range_not_satisfiable(exc: BaseException) -> bool:
    """Is this a backend's answer to a ranged read that starts past the object's end (HTTP 416)?"""
    return any(_status(e) == 416 or "not satisfiable" in str(e) or "InvalidRange" in str(e)
               for e in _causes(exc))


def bucket_missing(protocol: str, bucket: str, display_url: str) -> StoreUnavailable:
    noun = CLOUD.get(protocol, "bucket")
    return StoreUnavailable(f"{noun} {bucket!r} does not exist (store {display_url}); create it first")


def reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


TAG_KEYS = ("VersionId", "version_id", "generation", "ETag", "etag", "mtime", "LastModified", "last_modified",
            "Last-Modified")  # the last: an HTTP server's, when it gives no ETag


def object_tag(info: dict) -> str:
    """What says an object changed, from a backend's `info`: its version, generation, ETag or
    modification time ("" if the backend gives none). External links and remote sources record it."""
    for key in TAG_KEYS:
        if info.get(key) not in (None, ""):
            return f"{key}:{info[key]}"
    return ""
