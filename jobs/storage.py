"""Where the job reads and writes: fsspec URLs, S3-compatible endpoints, atomic writes.

Every URI the job touches (manifest, videos, annotations, checkpoint, output) goes
through a :class:`Storage`, which turns it into an fsspec (filesystem, path) with
the right options. For ``s3://`` (and ``s3a://``) URLs the endpoint of an
S3-compatible store (MinIO, Ceph, moto, R2 ...) is, first found wins:

1. an explicit option: ``--endpoint-url`` / ``Storage(endpoint_url=...)``, or
   ``endpoint_url`` / ``client_kwargs.endpoint_url`` in ``--storage-options``;
2. ``FSSPEC_S3_ENDPOINT_URL`` (fsspec's own per-protocol variable);
3. ``AWS_ENDPOINT_URL_S3``, then ``AWS_ENDPOINT_URL`` (the AWS SDKs' standard variables).

The variables are read when the Storage is made (on the driver) and the result
travels to the workers with it, so actors on other nodes use the same endpoint
whatever their own environment says. Credentials are NOT copied: workers find
them the usual way (environment, ~/.aws, instance or pod role).

Atomic publication (:func:`atomic_open`): readers must see a file completely or
not at all. On object stores an object only becomes visible when its upload
completes (the single PUT or the CompleteMultipartUpload that ``close()``
sends), so we write to the final key and, on error, abort the upload instead of
closing it. On a local filesystem we write a temporary file under a staging
folder of the same output root and ``os.replace`` it onto the final name
(an atomic rename on POSIX).
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import fsspec

from vos_core.io._fs import display, is_local  # noqa: F401  (re-exported: one definition for vos_core.io and jobs)

S3_PROTOCOLS = ("s3", "s3a")
#: Environment variables giving an S3 endpoint, in the order they are honoured.
ENDPOINT_ENV_VARS = ("FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def protocol_of(uri: str | os.PathLike) -> str:
    """'file' for local paths and file:// URLs, else the URL scheme ('s3', 'gs', 'memory' ...)."""
    uri = str(uri)
    if "://" not in uri:
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    return "file" if scheme in ("file", "local") else scheme


def endpoint_from_env(environ: dict | None = None) -> tuple[str | None, str | None]:
    """(endpoint URL, name of the variable it came from) or (None, None)."""
    env = os.environ if environ is None else environ
    for name in ENDPOINT_ENV_VARS:
        value = env.get(name)
        if value:
            return value, name
    return None, None


@dataclass
class Storage:
    """fsspec options for the URIs of one job. Picklable: it is shipped to the actors."""

    endpoint_url: str | None = None  # explicit S3 endpoint (wins over the environment)
    options: dict = field(default_factory=dict)  # extra fsspec options for s3:// (and other remote) URLs

    @classmethod
    def from_env(cls, endpoint_url: str | None = None, options: dict | str | None = None,
                 environ: dict | None = None) -> "Storage":
        """Resolves the endpoint now (explicit > FSSPEC_S3_ENDPOINT_URL > AWS_ENDPOINT_URL_S3 > AWS_ENDPOINT_URL)."""
        if isinstance(options, str):
            options = json.loads(options) if options.strip() else {}
        options = dict(options or {})
        explicit = endpoint_url or options.pop("endpoint_url", None) \
            or (options.get("client_kwargs") or {}).get("endpoint_url")
        if not explicit:
            explicit, _ = endpoint_from_env(environ)
        return cls(endpoint_url=explicit, options=options)

    def options_for(self, uri: str | os.PathLike) -> dict:
        """fsspec keyword arguments for ``uri`` (nothing for local paths)."""
        proto = protocol_of(uri)
        if proto == "file":
            return {}
        opts = dict(self.options)
        if proto in S3_PROTOCOLS and self.endpoint_url:
            client_kwargs = dict(opts.get("client_kwargs") or {})
            client_kwargs.setdefault("endpoint_url", self.endpoint_url)
            opts["client_kwargs"] = client_kwargs
        return opts

    def resolve(self, uri: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, path = fsspec.core.url_to_fs(str(uri), **self.options_for(uri))
        return fs, (path.rstrip("/") or path)


def add_storage_arguments(parser) -> None:
    """The object-storage options every jobs command takes (an argparse parser or group);
    ``Storage.from_env(args.endpoint_url, args.storage_options)`` reads them."""
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// URLs (default: "
                        + ", ".join(f"${v}" for v in ENDPOINT_ENV_VARS) + ")")
    parser.add_argument("--storage-options", default=None, help="JSON object of extra fsspec options for remote URLs")


def join_uri(base: str, *parts: str) -> str:
    """Joins path parts onto a URI or local path, keeping its scheme."""
    base = str(base)
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest.rstrip("/") or rest, *parts)
    return os.path.join(base, *parts)


def resolve_relative(uri: str, base_dir: str) -> str:
    """``uri`` unchanged when it has a scheme or is absolute, else taken relative to ``base_dir``
    (the folder of the manifest that names it)."""
    if "://" in uri or os.path.isabs(uri) or not base_dir:
        return uri
    return join_uri(base_dir, uri)


def parent_uri(uri: str) -> str:
    uri = str(uri).rstrip("/")
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        parent = posixpath.dirname(rest)
        return f"{scheme}://{parent}" if parent else f"{scheme}://"
    return os.path.dirname(os.path.abspath(uri))


def makedirs(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Creates a folder on filesystems that have them (object stores have none)."""
    if is_local(fs):
        fs.makedirs(path, exist_ok=True)


def remove(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Deletes a file; False when it was not there."""
    try:
        fs.rm_file(path)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        if not fs.exists(path):
            return False
        raise


class AtomicFile:
    """A binary file whose content appears at ``path`` in one step on :meth:`publish`,
    and never (an older file there stays) on :meth:`abort` or when the process dies.

    ``staging_dir``: where a local filesystem keeps the temporary file; it must be
    on the same filesystem as ``path`` and be a folder readers do not scan."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, staging_dir: str, block_size: int | None = None):
        """``block_size``: upload part size on object stores (also the most that is buffered)."""
        self.fs, self.path = fs, path
        self._tmp = None
        if is_local(fs):
            fs.makedirs(staging_dir, exist_ok=True)
            self._tmp = posixpath.join(staging_dir, f"{uuid.uuid4().hex}-{posixpath.basename(path)}.tmp")
            self.file = open(self._tmp, "wb")
        else:  # object store: nothing is visible until the upload completes in close()
            self.file = fs.open(path, "wb", **({"block_size": block_size} if block_size else {}))
        self.done = False

    def publish(self) -> None:
        if self.done:
            return
        self.done = True
        if self._tmp is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
            os.replace(self._tmp, self.path)
        else:
            self.file.close()  # CompleteMultipartUpload / the single PUT: the object appears now, whole

    def abort(self) -> None:
        if self.done:
            return
        self.done = True
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            with contextlib.suppress(OSError):
                os.remove(self._tmp)
            return
        discard = getattr(self.file, "discard", None)  # s3fs: AbortMultipartUpload
        if callable(discard):
            with contextlib.suppress(Exception):
                discard()
        # Mark it closed without close(): fsspec's close() would complete (publish) the upload.
        with contextlib.suppress(Exception):
            self.file.closed = True


@contextlib.contextmanager
def atomic_open(fs: fsspec.AbstractFileSystem, path: str, staging_dir: str) -> Iterator:
    """``with atomic_open(fs, path, staging) as f: f.write(...)``: see :class:`AtomicFile`;
    an exception inside the block publishes nothing."""
    af = AtomicFile(fs, path, staging_dir)
    try:
        yield af.file
    except BaseException:
        af.abort()
        raise
    af.publish()


def put_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes, staging_dir: str) -> None:
    """Writes ``data`` to ``path`` atomically (one PUT on object stores)."""
    if is_local(fs):
        with atomic_open(fs, path, staging_dir) as f:
            f.write(data)
    else:
        fs.pipe_file(path, data)


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict | None:
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
