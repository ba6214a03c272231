"""Shards anywhere: a split read from a local folder, ``http(s)://``, ``s3://`` or another
fsspec URL, with retries, backoff and an optional verified on-disk cache.

- :func:`split_location` turns ``--shards`` text into a ``Path`` or a :class:`RemotePath`
  (a URL that joins with ``/`` like a path, so ``root / "train"`` works for both).
- :func:`open_source` gives the split's :class:`Source`: ``read(name, start, end)`` and
  ``size(name)`` of its objects (``manifest.json``, the shards), each retried with
  exponential backoff on transient failures (connection refused or reset, timeouts, 5xx,
  short bodies). A missing object (404, ``NoSuchKey``) is not transient and fails at once;
  every failure is a one-line ``DataError`` naming the URL.
- :class:`ShardCache` keeps whole shards on local disk under their manifest sha256: a shard
  is downloaded once, checked against the manifest's byte count and sha256, renamed into
  place (several worker processes may fill one cache; a lock per shard keeps them from
  downloading it twice), and the least recently used shards are removed past ``max_bytes``.

HTTP is read with the standard library (``urllib``, one ``Range`` request per read): fsspec's
HTTP backend needs aiohttp, which haloscope does not install, and a record-sized range read
needs nothing more. ``s3://`` is read with boto3, configured the usual boto3 way
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws``,
``AWS_ENDPOINT_URL_S3`` for an S3-compatible server); other URLs go through fsspec when the
protocol's backend is installed.

The cache's bound is ``HALOSCOPE_CACHE_MAX_GB`` (default 200 GiB). Retry settings come from
the environment (tests shorten them): ``HALOSCOPE_REMOTE_RETRIES``
(attempts, default 5), ``HALOSCOPE_REMOTE_BACKOFF_S`` (first wait, default 0.5 s, doubled
per attempt, at most 30 s) and ``HALOSCOPE_REMOTE_TIMEOUT_S`` (per request, default 60 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import random
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from haloscope.atomic import atomic_write_bytes
from haloscope.errors import ConfigError, DataError, MissingDataError

__all__ = [
    "RemotePath",
    "RetryPolicy",
    "Source",
    "LocalSource",
    "HttpSource",
    "S3Source",
    "FsspecSource",
    "ShardCache",
    "is_url",
    "split_location",
    "open_source",
    "DEFAULT_CACHE_BYTES",
    "cache_bytes_from_env",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.+)$")
DEFAULT_CACHE_BYTES = 200 * 2**30
"""Default bound of a shard cache (200 GiB); ``HALOSCOPE_CACHE_MAX_GB`` overrides it."""


def is_url(location: object) -> bool:
    """True for ``scheme://...`` text (or a :class:`RemotePath`), False for a local path."""
    return isinstance(location, RemotePath) or (
        isinstance(location, str) and _URL.match(location) is not None
    )


class RemotePath:
    """A URL that joins like a path: ``RemotePath("s3://b/shards") / "train"``."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        if not _URL.match(url):
            raise ConfigError(f"{url!r} is not a URL (scheme://...)")
        self.url = url.rstrip("/")

    @property
    def scheme(self) -> str:
        """``http``, ``https``, ``s3``, ... (lower case)."""
        return self.url.split("://", 1)[0].lower()

    @property
    def name(self) -> str:
        """The last component."""
        return self.url.rsplit("/", 1)[-1]

    def __truediv__(self, name: str) -> RemotePath:
        return RemotePath(f"{self.url}/{str(name).strip('/')}")

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)


def split_location(location: str | Path | RemotePath) -> Path | RemotePath:
    """``--shards`` text as a local ``Path`` or a :class:`RemotePath` (URLs)."""
    if isinstance(location, (Path, RemotePath)):
        return location
    return RemotePath(location) if is_url(location) else Path(location)


# ---------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a remote read is retried."""

    attempts: int = 5
    """Tries per read (1: no retry)."""
    backoff_s: float = 0.5
    """Wait before the second try; doubled per try, at most ``max_backoff_s``, +-25% jitter."""
    max_backoff_s: float = 30.0
    timeout_s: float = 60.0
    """Per-request socket timeout."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RetryPolicy:
        """The policy of ``HALOSCOPE_REMOTE_{RETRIES,BACKOFF_S,TIMEOUT_S}`` (else defaults).

        Raises:
            ConfigError: a variable that is not a number, or out of range.
        """
        env = dict(os.environ if env is None else env)
        try:
            policy = cls(
                attempts=int(env.get("HALOSCOPE_REMOTE_RETRIES", cls.attempts)),
                backoff_s=float(env.get("HALOSCOPE_REMOTE_BACKOFF_S", cls.backoff_s)),
                timeout_s=float(env.get("HALOSCOPE_REMOTE_TIMEOUT_S", cls.timeout_s)),
            )
        except ValueError as exc:
            raise ConfigError(f"HALOSCOPE_REMOTE_* must be numbers ({exc})") from None
        if policy.attempts < 1 or policy.backoff_s < 0 or policy.timeout_s <= 0:
            raise ConfigError(
                f"HALOSCOPE_REMOTE_RETRIES must be >= 1, BACKOFF_S >= 0 and "
                f"TIMEOUT_S > 0, got {policy}"
            )
        return policy

    def wait_s(self, attempt: int) -> float:
        """Seconds to wait after failed try ``attempt`` (0-based)."""
        base = min(self.backoff_s * 2**attempt, self.max_backoff_s)
        return base * random.uniform(0.75, 1.25)


class _Transient(Exception):
    """A failure worth retrying; its text ends up in the final error line."""


class _Missing(Exception):
    """The object does not exist (not retried)."""


def _retried(policy: RetryPolicy, what: str, call: Callable[[], T]) -> T:
    """``call()`` with retries on ``_Transient``; a ``DataError`` naming ``what`` at the end."""
    for attempt in range(policy.attempts):
        try:
            return call()
        except _Missing as exc:
            raise MissingDataError(
                f"{what}: not found ({exc}); the manifest lists it: is the URL "
                "right and the upload complete?"
            ) from None
        except _Transient as exc:
            if attempt + 1 == policy.attempts:
                raise DataError(
                    f"{what}: {exc} (gave up after {policy.attempts} attempts; "
                    "HALOSCOPE_REMOTE_RETRIES sets how many)"
                ) from None
            wait = policy.wait_s(attempt)
            log.warning(
                "%s: %s; retrying in %.1f s (attempt %d of %d)",
                what,
                exc,
                wait,
                attempt + 2,
                policy.attempts,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


def _check_length(data: bytes, start: int, end: int | None) -> bytes:
    if end is not None and len(data) != end - start:
        raise _Transient(f"short read: {len(data)} of {end - start} bytes (truncated transfer)")
    return data


# ---------------------------------------------------------------------------- sources
class Source:
    """Read access to the objects of one split location (``manifest.json``, shards).

    ``read`` and ``size`` retry transient failures and raise ``DataError`` naming the URL.
    """

    def __init__(self, root: Path | RemotePath, policy: RetryPolicy | None = None) -> None:
        self.root = root
        self.policy = policy or RetryPolicy.from_env()

    @property
    def is_remote(self) -> bool:
        """False for a local folder (memory-mapped directly)."""
        return True

    def describe(self, name: str) -> str:
        """The object's URL or path, for messages."""
        return str(self.root / name)

    def read(self, name: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of object ``name`` (``end`` None: to its end)."""
        what = self.describe(name)
        return _retried(
            self.policy, what, lambda: _check_length(self._read(name, start, end), start, end)
        )

    def size(self, name: str) -> int:
        """The object's size in bytes."""
        return self.retried(name, lambda: self._size(name))

    def retried(self, name: str, call: Callable[[], T]) -> T:
        """``call()`` (about object ``name``) retried on transient failures like ``read``."""
        return _retried(self.policy, self.describe(name), call)

    def _read(self, name: str, start: int, end: int | None) -> bytes:
        raise NotImplementedError

    def _size(self, name: str) -> int:
        raise NotImplementedError


class LocalSource(Source):
    """A local folder (the reader memory-maps it; this serves manifests and WebDataset)."""

    @property
    def is_remote(self) -> bool:
        return False

    def path(self, name: str) -> Path:
        """The object's local path."""
        return Path(self.root) / name

    def _read(self, name: str, start: int, end: int | None) -> bytes:
        try:
            with open(self.path(name), "rb") as fh:
                fh.seek(start)
                return fh.read(-1 if end is None else end - start)
        except FileNotFoundError:
            raise _Missing("no such file") from None
        except OSError as exc:
            raise DataError(f"{self.path(name)}: cannot read ({exc.strerror or exc})") from None

    def _size(self, name: str) -> int:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            raise _Missing("no such file") from None


_NET_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    socket.timeout,
    TimeoutError,
)


class HttpSource(Source):
    """``http(s)://``: one standard-library request per read (``Range`` for a part)."""

    def _request(self, name: str, method: str = "GET", headers: dict | None = None):
        req = urllib.request.Request(self.describe(name), method=method, headers=headers or {})
        try:
            return urllib.request.urlopen(req, timeout=self.policy.timeout_s)  # noqa: S310
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in (404, 410):
                raise _Missing(f"HTTP {exc.code}") from None
            if exc.code >= 500 or exc.code in (408, 429):
                raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
            raise DataError(f"{self.describe(name)}: HTTP {exc.code} {exc.reason}") from None
        except _NET_ERRORS as exc:
            raise _Transient(_net_reason(exc)) from None

    def _read(self, name: str, start: int, end: int | None) -> bytes:
        ranged = start > 0 or end is not None
        rng = f"bytes={start}-{'' if end is None else end - 1}"
        if end is not None and end <= start:
            return b""
        with self._request(name, headers={"Range": rng} if ranged else None) as resp:
            try:
                data = resp.read()
            except _NET_ERRORS as exc:
                raise _Transient(_net_reason(exc)) from None
            if ranged and resp.status == 200:  # the server ignored Range: cut the whole body
                data = data[start : None if end is None else end]
        return data

    def _size(self, name: str) -> int:
        with self._request(name, method="HEAD") as resp:
            length = resp.headers.get("Content-Length")
        if length is None:
            raise _Transient("no Content-Length in the HEAD response")
        return int(length)


def _net_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(exc, http.client.IncompleteRead):
        return f"truncated transfer ({len(exc.partial)} bytes, {exc.expected} more expected)"
    return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__


class S3Source(Source):
    """``s3://bucket/prefix`` through boto3 (credentials and endpoint: boto3's usual config).

    The client is made lazily in each process (worker processes must not share one) and
    boto3's own retries are off: this class's policy retries.
    """

    def __init__(self, root: RemotePath, policy: RetryPolicy | None = None) -> None:
        super().__init__(root, policy)
        bucket, _, prefix = root.url.split("://", 1)[1].partition("/")
        if not bucket:
            raise ConfigError(f"{root}: an s3 URL needs a bucket (s3://BUCKET/PREFIX)")
        self.bucket, self.prefix = bucket, prefix
        self._client: Any = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_pid": -1}

    def client(self) -> Any:
        """This process's boto3 S3 client."""
        if self._client is None or self._pid != os.getpid():
            # NOTE: boto3 imported on first use: remote is on `haloscope shards --help`'s path.
            import boto3
            from botocore.config import Config

            cfg = Config(
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=self.policy.timeout_s,
                read_timeout=self.policy.timeout_s,
            )
            # NOTE: a session of its own: boto3's default session is not thread-safe
            session = boto3.session.Session()
            self._client, self._pid = session.client("s3", config=cfg), os.getpid()
        return self._client

    def key(self, name: str) -> str:
        """The object key of ``name``."""
        return f"{self.prefix.rstrip('/')}/{name}" if self.prefix else name

    def call(self, name: str, fn: Callable[[], T]) -> T:
        """``fn()`` (a boto3 call about object ``name``) with its errors sorted: missing,
        transient (retried by ``read``/``size``) or a one-line ``DataError``."""
        # NOTE: botocore imported on first use, as in client() (off the --help path).
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn()
        except NoCredentialsError:
            raise DataError(
                f"{self.describe(name)}: no AWS credentials; set them the usual "
                "boto3 way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or "
                "~/.aws/credentials)"
            ) from None
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise _Missing(f"S3 {code or status}") from None
            if code == "NoSuchBucket":
                raise DataError(
                    f"{self.describe(name)}: bucket {self.bucket} does not exist"
                ) from None
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
                raise _Transient(f"S3 {code} (HTTP {status})") from None
            raise DataError(
                f"{self.describe(name)}: S3 {code}: {err.get('Message', exc)}"
            ) from None
        except (BotoCoreError, *_NET_ERRORS) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None

    def _read(self, name: str, start: int, end: int | None) -> bytes:
        if end is not None and end <= start:
            return b""
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key(name)}
        if start > 0 or end is not None:
            kw["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        return self.call(name, lambda: self.client().get_object(**kw)["Body"].read())

    def _size(self, name: str) -> int:
        head = self.call(
            name, lambda: self.client().head_object(Bucket=self.bucket, Key=self.key(name))
        )
        return int(head["ContentLength"])


class FsspecSource(Source):
    """Any other fsspec URL (``gs://``, ``az://``, ...) whose backend is installed."""

    def __init__(self, root: RemotePath, policy: RetryPolicy | None = None) -> None:
        super().__init__(root, policy)
        # NOTE: fsspec and its backends are optional: a missing one is a DataError here.
        try:
            import fsspec

            self.fs = fsspec.filesystem(root.scheme)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"{root}: no reader for {root.scheme}:// URLs here ({exc}); haloscope reads "
                "local paths, http(s):// and s3:// itself, other schemes through an installed "
                "fsspec backend (for example gcsfs for gs://)"
            ) from None

    def _path(self, name: str) -> str:
        return self.describe(name)

    def _read(self, name: str, start: int, end: int | None) -> bytes:
        try:
            return self.fs.cat_file(self._path(name), start=start or None, end=end)
        except FileNotFoundError:
            raise _Missing("not found") from None
        except (OSError, TimeoutError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None

    def _size(self, name: str) -> int:
        try:
            return int(self.fs.size(self._path(name)))
        except FileNotFoundError:
            raise _Missing("not found") from None
        except (OSError, TimeoutError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None


def open_source(location: str | Path | RemotePath, policy: RetryPolicy | None = None) -> Source:
    """The :class:`Source` of a split folder or URL.

    Raises:
        ConfigError: a URL scheme without a reader here (no fsspec backend installed).
    """
    loc = split_location(location)
    if isinstance(loc, Path):
        return LocalSource(loc, policy)
    if loc.scheme in ("http", "https"):
        return HttpSource(loc, policy)
    if loc.scheme in ("s3", "s3a"):
        return S3Source(loc, policy)
    if loc.scheme == "file":
        return LocalSource(Path(loc.url.split("://", 1)[1]), policy)
    return FsspecSource(loc, policy)


# ---------------------------------------------------------------------------- cache
def cache_bytes_from_env(env: dict[str, str] | None = None) -> int:
    """The cache bound: ``HALOSCOPE_CACHE_MAX_GB`` (GiB, may be fractional), else 200 GiB.

    Raises:
        ConfigError: the variable is not a positive number.
    """
    text = dict(os.environ if env is None else env).get("HALOSCOPE_CACHE_MAX_GB")
    if text is None:
        return DEFAULT_CACHE_BYTES
    try:
        gib = float(text)
    except ValueError:
        gib = -1.0
    if not gib > 0:
        raise ConfigError(f"HALOSCOPE_CACHE_MAX_GB must be a positive number of GiB, got {text!r}")
    return int(gib * 2**30)


class ShardCache:
    """Whole shards on local disk, named by their manifest sha256, least recently used
    removed past ``max_bytes``.

    A shard enters the cache only after its bytes matched the manifest's size and sha256
    (a temporary file renamed into place), so a file found in the cache is verified. Several
    processes may use one cache: a lock per shard makes one of them download it while the
    others wait, and a file another process removes stays readable to whoever mapped it.
    """

    def __init__(self, root: str | Path, max_bytes: int | None = None) -> None:
        if max_bytes is None:
            max_bytes = cache_bytes_from_env()
        if max_bytes < 1:
            raise ConfigError(f"cache size must be >= 1 byte, got {max_bytes}")
        self.root, self.max_bytes = Path(root), int(max_bytes)
        try:
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--cache-dir {self.root}: cannot create it ({exc.strerror})"
            ) from None

    def path(self, sha256: str) -> Path:
        """Where the shard of this sha256 lives in the cache."""
        return self.root / sha256[:2] / f"{sha256}.tar"

    def lookup(self, sha256: str) -> Path | None:
        """The cached file (its use time refreshed), or None."""
        path = self.path(sha256)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def fetch(self, source: Source, entry: dict[str, Any]) -> Path:
        """The local file of one manifest shard entry, downloaded and verified if needed.

        Raises:
            DataError: the download failed, or its size or sha256 differs from the manifest.
        """
        sha = entry["sha256"]
        hit = self.lookup(sha)
        if hit is not None:
            return hit
        with open(self.root / "locks" / f"{sha}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be downloading it
            hit = self.lookup(sha)
            if hit is not None:
                return hit
            data = source.read(entry["file"])
            what = source.describe(entry["file"])
            if len(data) != entry["bytes"]:
                raise DataError(
                    f"{what}: {len(data)} bytes but the manifest says "
                    f"{entry['bytes']} (truncated or replaced shard)"
                )
            if hashlib.sha256(data).hexdigest() != sha:
                raise DataError(f"{what}: sha256 differs from the manifest (corrupt shard)")
            path = self.path(sha)
            path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(path, data)
        self.evict(keep=path)
        return path

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used shards until the cache fits ``max_bytes``.

        Returns:
            Bytes removed.
        """
        files = []
        for path in self.root.glob("??/*.tar"):
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
        total, removed = sum(f[1] for f in files), 0
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                total, removed = total - size, removed + size
        return removed
