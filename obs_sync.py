"""Copy files and folders between OBS (``obs://``), S3 (``s3://``) and local paths.

``sync(src, dst)`` works in every direction (remote→local, local→remote, local→local,
remote→remote) for a single file or a whole folder, and is what the training job uses to stage
its data set and to push checkpoints. ``list_files``, ``exists`` and ``remove`` (one object) do
the rest. Three storage backends, tried in this order:

* ``moxing`` — Huawei's library, present only inside ModelArts images. Used only when the
  process runs on ModelArts *and* it imports (the PyPI package called ``moxing`` is an unrelated
  project, so it is never tried elsewhere). ``OBS_SYNC_MOX_SAFE=1`` applies Huawei's documented
  work-around for hanging copies: ``MOX_FILE_LARGE_FILE_TASK_NUM=1`` and
  ``copy_parallel(..., threads=0, is_processing=False)``.
* the OBS Python SDK (``esdk-obs-python``, ``from obs import ObsClient``) when credentials and an
  endpoint are in the environment: ``OBS_ACCESS_KEY_ID``/``OBS_SECRET_ACCESS_KEY``
  (+ ``OBS_SECURITY_TOKEN``) or the ``S3_*``/``AWS_*`` equivalents, and ``OBS_ENDPOINT`` or
  ``S3_ENDPOINT`` (+ ``S3_USE_HTTPS``, ``S3_VERIFY_SSL``). Huawei endpoints use OBS signing;
  any other S3 endpoint (MinIO, moto, Ceph) gets V4 signing with path-style addressing.
  ``OBS_SIGNATURE`` (obs|v2|v4), ``OBS_PATH_STYLE`` (0|1) and ``OBS_REGION`` override that.
  ``OBS_SYNC_TIMEOUT`` (seconds, default 30) bounds each connect and each socket read, so an
  endpoint that does not answer fails an attempt instead of hanging the job.
* a filesystem mock for dry runs: ``OBS_MOCK_ROOT=/some/dir`` maps ``obs://bucket/key`` to
  ``/some/dir/bucket/key``.

``OBS_SYNC_BACKEND=moxing|sdk|mock`` forces one. Transfers run in a thread pool. Every storage
call (list, stat, get, put, copy, remove) goes through ``with_retries``: transient failures
(connection refused/reset, time-outs, HTTP 5xx/408/429, a short download) are retried with
exponential back-off and jitter; permanent ones (403, 404, a refused key) fail at once naming
the URL. When the retries run out, ``TransferError`` (a ``UserError``: one line, no traceback)
names the URL, the operation, the attempts, the backend and endpoint, and what to do.
Syncs are incremental: a file whose destination copy has the same size and is not older than
the source is skipped. ``delete=True`` mirrors: after copying, destination files missing from
the source (and not excluded) are removed. Object keys that would land outside the destination
folder (``..``, absolute keys, backslashes) are refused. Local files are written to a temporary
name and renamed, so a killed sync never leaves a half file that a later incremental sync would
take for complete. Credentials are never logged: ``mask_credentials`` hides user:password in
URLs and signature/token query parameters in every message and log line of this module.

CLI: ``python obs_sync.py SRC DST [--threads N] [--retries N] [--delete]``.
"""
from __future__ import annotations

import argparse
import calendar
import concurrent.futures
import errno
import fnmatch
import functools
import logging
import os
import random
import re
import shutil
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Tuple

from src.errors import UserError, disk_error

log = logging.getLogger(__name__)

REMOTE_SCHEMES = ("obs", "s3")
# Suffix of the temporary files local writes go through; listings ignore them, so a file left
# by a killed sync is neither uploaded nor taken for a finished download.
TMP_SUFFIX = ".obs_sync.part"
# Remote listings give LastModified to the second: allow that much when comparing times.
MTIME_SLACK_S = 2.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# Seconds the SDK waits to connect and for each read; OBS_SYNC_TIMEOUT overrides.
DEFAULT_TIMEOUT_S = 30.0
_TRUE = ("1", "true", "yes", "on")
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FALSE = ("0", "false", "no", "off")

# Patched by the tests so back-off does not make them slow.
_sleep = time.sleep


class StorageError(UserError):
    """The storage answered with a permanent error (403, 404, ...): retrying will not help."""


class TransferError(UserError):
    """A storage call still failed after every retry (endpoint down, network, 5xx). A
    ``UserError``, so the boot file prints its one-line message (URL, operation, attempts,
    backend, endpoint, what to do) instead of a traceback."""


class TransientError(Exception):
    """Raised by a backend for a failure worth retrying (5xx, 408, 429, a connection refused or
    reset, a time-out, a short download)."""


# --------------------------------------------------------------------------- credentials

# scheme://user:password@ (the password may hold '/', as secret keys do) or scheme://token@.
_USERINFO_RE = re.compile(
    r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^\s/?#@:'\"<>]+:[^\s@'\"<>]*|[^\s/?#@:'\"<>]+)@")
# Signed-URL and header parameters: AccessKeyId=, Signature=, X-Amz-Credential=, ...Token=.
_SECRET_PARAM_RE = re.compile(
    r"(?i)(^|[?&;,\s])((?:[\w.-]*(?:signature|credential|token|secret|passw(?:or)?d|"
    r"access[_-]?key)[\w.-]*|ak|sk|sig)=)[^&\s'\"<>#,]*")


def mask_credentials(text: str) -> str:
    """``text`` with credentials replaced by ``***``: the user:password of any URL
    (``https://AK:SK@host`` → ``https://***@host``) and the values of signature, credential,
    token, secret and access-key parameters (``?AccessKeyId=***&Signature=***``)."""
    text = _USERINFO_RE.sub(r"\1***@", str(text))
    return _SECRET_PARAM_RE.sub(r"\1\2***", text)


class _MaskingFilter(logging.Filter):
    """Every log line of this module goes out with credentials masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_credentials(message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


log.addFilter(_MaskingFilter())


def _one_line(text: object, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _scrubbed(fn):
    """Public entry points: whatever escapes carries no credentials in its message."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if e.args and isinstance(e.args[0], str) and not isinstance(e, OSError):
                e.args = (mask_credentials(e.args[0]),) + tuple(e.args[1:])
            raise
    return wrapper


class Entry(NamedTuple):
    size: Optional[int]  # None where the backend cannot tell without another request (moxing)
    mtime: Optional[float]  # seconds since the epoch; None when unknown


@dataclass
class SyncReport:
    files: int
    bytes: int
    skipped: int
    seconds: float
    backend: str = "local"
    deleted: int = 0  # destination files removed by a mirroring sync (delete=True)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return "%d files, %d bytes (%.1f MB), %d skipped%s, %.2f s, %.1f MB/s, backend %s" % (
            self.files, self.bytes, self.bytes / 1e6, self.skipped,
            ", %d deleted" % self.deleted if self.deleted else "", self.seconds,
            self.mb_per_s, self.backend)


def is_remote(url: str) -> bool:
    """True for ``obs://`` and ``s3://`` URLs, False for local paths."""
    head, sep, _ = str(url).partition("://")
    return bool(sep) and head.lower() in REMOTE_SCHEMES


# --------------------------------------------------------------------------- locations

@dataclass(frozen=True)
class Location:
    """One side of a sync: a local path, or a bucket and key of a remote store."""
    scheme: str  # "" for local paths
    bucket: str
    key: str
    path: str  # local paths only (absolute)
    slash: bool = False  # a local path written with a trailing separator

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    @property
    def url(self) -> str:
        if self.remote:
            return "%s://%s/%s" % (self.scheme, self.bucket, self.key)
        return self.path

    @property
    def dir_like(self) -> bool:
        """Written with a trailing slash: names a folder, not an object."""
        return (self.key.endswith("/") or self.key == "") if self.remote else self.slash

    @property
    def basename(self) -> str:
        return (self.key.rstrip("/") if self.remote else self.path.rstrip(os.sep)).rsplit("/", 1)[-1]

    def as_dir(self) -> Location:
        if self.remote:
            key = self.key if self.key == "" or self.key.endswith("/") else self.key + "/"
            return Location(self.scheme, self.bucket, key, "")
        return self

    def join(self, rel: str) -> Location:
        if not rel:
            return self
        if self.remote:
            return Location(self.scheme, self.bucket, self.as_dir().key + rel, "")
        return Location("", "", "", os.path.join(self.path, *rel.split("/")))


def parse_location(url: str) -> Location:
    url = os.fspath(url)
    if not url:
        raise UserError("empty storage path: give a local folder or an obs://bucket/path URL")
    if is_remote(url):
        scheme, _, rest = url.partition("://")
        bucket, _, key = rest.partition("/")
        if "@" in bucket or _USERINFO_RE.match(url):  # s3://AK:SK@bucket/key
            raise UserError("%s: credentials do not belong in a storage URL: write "
                            "obs://BUCKET/path and set OBS_ACCESS_KEY_ID and "
                            "OBS_SECRET_ACCESS_KEY instead" % mask_credentials(url))
        if not _BUCKET_RE.match(bucket):
            raise UserError("%r: %r is not a bucket name: write obs://BUCKET/path"
                            % (url, bucket))
        key = key.lstrip("/")
        if ".." in key.split("/"):
            raise UserError("%r contains a '..' component: write the key without it" % url)
        return Location(scheme.lower(), bucket, key, "")
    if "://" in url:
        raise UserError("%r: unsupported URL scheme (use obs://, s3:// or a local path)" % url)
    return Location("", "", "", os.path.abspath(os.path.expanduser(url)),
                    url.endswith(("/", os.sep)))


def check_relative_key(rel: str, where: str) -> str:
    """Refuse an object key (relative to the folder being synced) that would be written outside
    the destination folder: '..' or '.' parts, an absolute key, a backslash (a separator on
    Windows tools that wrote or will read the folder), a NUL."""
    bad = (not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel
           or any(part in ("..", ".") for part in rel.split("/")))
    if bad:
        raise UserError("refusing object key %r under %s: it would be written outside the "
                        "destination folder (remove or rename that object)" % (rel, where))
    return rel


# --------------------------------------------------------------------------- backends

class RemoteBackend:
    """The object-level operations the sync engine needs from a store. Backends raise
    ``TransientError`` (or any other exception) for failures worth retrying and
    ``StorageError`` for permanent ones."""

    name = "remote"

    def stat(self, loc: Location) -> Optional[Entry]:
        """The object at ``loc.key``, or None when there is no such object."""
        raise NotImplementedError

    def list(self, loc: Location) -> Iterator[Tuple[str, Entry]]:
        """Every object whose key starts with ``loc.key`` (a folder prefix ending in '/', or '')."""
        raise NotImplementedError

    def size(self, loc: Location) -> int:
        entry = self.stat(loc)
        if entry is None or entry.size is None:
            raise StorageError("%s: no such object" % loc.url)
        return entry.size

    def download(self, loc: Location, path: str) -> None:
        raise NotImplementedError

    def upload(self, path: str, loc: Location) -> None:
        raise NotImplementedError

    def copy(self, src: Location, dst: Location) -> None:
        raise NotImplementedError

    def remove(self, loc: Location) -> None:
        """Delete the object ``loc.key``; no such object is not an error."""
        raise NotImplementedError

    def copy_tree(self, src: str, dst: str, threads: int) -> bool:
        """Copy a whole folder in one call where the backend has a faster way; False if not."""
        return False

    def where(self) -> str:
        """The backend (and endpoint) for messages; never credentials."""
        return "backend %s" % self.name

    def advice(self) -> str:
        return "check that the storage is reachable from this machine"

    def close(self) -> None:
        pass


class MockBackend(RemoteBackend):
    """``obs://bucket/key`` ↦ ``<root>/bucket/key``: the local dry run's object store. Buckets are
    created on first write (a real store needs them created beforehand)."""

    name = "mock"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def _path(self, loc: Location) -> str:
        return os.path.join(self.root, loc.bucket, *[p for p in loc.key.split("/") if p])

    def local_path(self, url: str) -> str:
        """The file that stands for ``url`` in the mock (to open it, e.g. a sample grid)."""
        return self._path(parse_location(url))

    def stat(self, loc):
        if not loc.key or loc.key.endswith("/"):
            return None
        return _local_stat(self._path(loc))

    def list(self, loc):
        # A missing bucket lists as empty: the mock creates buckets on first write.
        base = loc.as_dir().key
        for rel, entry in list_local_dir(self._path(loc.as_dir())).items():
            yield base + rel, entry

    def download(self, loc, path):
        try:
            shutil.copyfile(self._path(loc), path)
        except FileNotFoundError:
            raise StorageError("%s: no such object" % loc.url) from None

    def upload(self, path, loc):
        atomic_local_write(self._path(loc), lambda tmp: shutil.copyfile(path, tmp))

    def copy(self, src, dst):
        self.upload(self._path(src), dst)

    def remove(self, loc):
        try:
            os.remove(self._path(loc))
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            pass  # a "folder" is not an object (S3 deletes nothing either)

    def where(self):
        return "backend mock, OBS_MOCK_ROOT=%s" % self.root

    def advice(self):
        return "check the folder OBS_MOCK_ROOT names"


# Local-file errors the SDK may raise (the download path, the file to upload): not the network.
_LOCAL_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_LOCAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class ObsSdkBackend(RemoteBackend):
    """Huawei's OBS SDK; speaks to OBS and to any S3-compatible endpoint."""

    name = "obs-sdk"

    def __init__(self, environ: Optional[Mapping[str, str]] = None, *, max_keys: int = 1000):
        settings = sdk_settings(os.environ if environ is None else environ)
        if settings is None:
            raise UserError("the OBS SDK needs OBS_ACCESS_KEY_ID, OBS_SECRET_ACCESS_KEY and "
                            "S3_ENDPOINT (or OBS_ENDPOINT) in the environment")
        from obs import ObsClient  # lazily: only this backend needs the SDK

        self.endpoint = mask_credentials(settings["server"])
        self.max_keys = max_keys
        # A secret that turns up in an SDK message in any other form is masked too.
        self._secrets = [v for v in (settings["secret_access_key"],
                                     settings.get("security_token")) if v]
        # max_retry_count=0: one retry policy (ours, with jitter) rather than two stacked ones.
        self._client = ObsClient(max_retry_count=0, **settings)
        log.debug("OBS SDK client for %s (signature %s, path_style %s, timeout %g s)",
                  self.endpoint, settings["signature"], settings["path_style"],
                  settings["timeout"])

    def where(self):
        return "backend obs-sdk, endpoint %s" % self.endpoint

    def advice(self):
        return ("check that the endpoint is right (S3_ENDPOINT/OBS_ENDPOINT) and reachable "
                "from this machine (network, proxy, firewall)")

    def _call(self, what: str, request: Callable[[], object]):
        """``request()`` (an SDK call), with the SDK's and the socket's exceptions (connection
        refused or reset, time-outs, a cut-off answer) turned into a ``TransientError`` that
        names the endpoint, rather than a traceback from deep inside the SDK."""
        try:
            return request()
        except (UserError, TransientError) + _LOCAL_ERRORS:
            raise
        except OSError as e:
            if e.errno in _LOCAL_ERRNOS:
                raise  # a full or read-only local disk: not the endpoint's fault
            raise self._unreachable(what, e) from e
        except Exception as e:
            raise self._unreachable(what, e) from e

    def _unreachable(self, what: str, e: Exception) -> TransientError:
        detail = "%s: %s" % (type(e).__name__, e)
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return TransientError("%s failed talking to %s: %s" % (
            what, self.endpoint, _one_line(mask_credentials(detail))))

    def _check(self, resp, loc: Location, what: str):
        status = getattr(resp, "status", None)
        if status is not None and status < 300:
            return resp
        detail = "%s %s %s" % (status, getattr(resp, "errorCode", "") or "",
                               getattr(resp, "errorMessage", "") or "")
        failed = "%s failed: %s" % (what, " ".join(detail.split()))
        if status is None or status >= 500 or status in (408, 429):
            # Retried; with_retries' messages name the URL already.
            raise TransientError(failed)
        message = "%s: %s" % (loc.url, failed)
        if status == 403:
            message += " (check the access key's permissions on bucket %r)" % loc.bucket
        elif getattr(resp, "errorCode", "") == "NoSuchBucket":
            message += " (no bucket %r at %s)" % (loc.bucket, self.endpoint)
        raise StorageError(message)

    def stat(self, loc):
        if not loc.key or loc.key.endswith("/"):
            return None
        resp = self._call("head", lambda: self._client.headObject(loc.bucket, loc.key))
        if getattr(resp, "status", None) == 404:
            return None  # a HEAD answer has no body to tell a missing bucket: listing will
        self._check(resp, loc, "head")
        headers = dict(resp.header or [])
        size = headers.get("content-length")
        if size is None:
            # The SDK reports a 200 for an answer cut off inside its headers: without the size
            # a short download could not be told from a whole one.
            raise TransientError("head failed: answer without Content-Length (cut off?)")
        return Entry(int(size), _parse_http_date(headers.get("last-modified")))

    def list(self, loc):
        prefix = loc.as_dir().key
        marker = None
        while True:
            resp = self._check(self._call(
                "list", lambda marker=marker: self._client.listObjects(
                    loc.bucket, prefix=prefix or None, marker=marker, max_keys=self.max_keys)),
                loc, "list")
            if resp.body is None:  # what the SDK makes of a cut-off or unreadable answer
                raise TransientError("list failed: answer cut off or unreadable")
            contents = resp.body.contents or []
            for obj in contents:
                yield obj.key, Entry(int(obj.size), _parse_sdk_time(obj.lastModified))
            if not resp.body.is_truncated or not contents:
                return
            # OBS returns next_marker; plain S3 returns it only with a delimiter.
            marker = resp.body.next_marker or contents[-1].key

    def download(self, loc, path):
        self._check(self._call("download", lambda: self._client.getObject(
            loc.bucket, loc.key, downloadPath=path)), loc, "download")

    def upload(self, path, loc):
        self._check(self._call("upload", lambda: self._client.putFile(
            loc.bucket, loc.key, path)), loc, "upload")

    def copy(self, src, dst):
        what = "copy from %s" % src.url
        self._check(self._call(what, lambda: self._client.copyObject(
            src.bucket, src.key, dst.bucket, dst.key)), dst, what)

    def remove(self, loc):
        resp = self._call("delete", lambda: self._client.deleteObject(loc.bucket, loc.key))
        status, code = getattr(resp, "status", None), getattr(resp, "errorCode", "")
        if status == 404 and code != "NoSuchBucket":
            return  # S3 answers 204 for a missing key; some stores say 404 NoSuchKey
        self._check(resp, loc, "delete")

    def close(self):
        self._client.close()


class MoxingBackend(RemoteBackend):
    """Huawei's ``moxing`` on ModelArts: every operation takes URLs (local or obs://)."""

    name = "moxing"

    def __init__(self, mox=None, *, safe: Optional[bool] = None):
        if safe is None:
            safe = os.environ.get("OBS_SYNC_MOX_SAFE", "").lower() in _TRUE
        if safe:
            # Huawei's documented work-around for copies that hang on large files.
            os.environ.setdefault("MOX_FILE_LARGE_FILE_TASK_NUM", "1")
        if mox is None:
            import moxing as mox  # only on ModelArts; see _on_modelarts
        self.mox = mox
        self.safe = safe

    def stat(self, loc):
        f = self.mox.file
        if not loc.key or loc.key.endswith("/") or not f.exists(loc.url) or f.is_directory(loc.url):
            return None
        return Entry(int(f.get_size(loc.url)), None)

    def list(self, loc):
        top = loc.as_dir()
        if not self.mox.file.exists(top.url.rstrip("/")):
            return
        names = list(self.mox.file.list_directory(top.url, recursive=True))
        # list_directory names folders too; a name that is a prefix of another name is a
        # folder. Sizes are fetched only when a comparison needs them (one request each).
        parents = set()
        for name in names:
            parts = name.rstrip("/").split("/")
            for i in range(1, len(parts)):
                parents.add("/".join(parts[:i]))
        for name in names:
            if name.endswith("/") or name in parents:
                continue
            yield top.key + name, Entry(None, None)

    def size(self, loc):
        return int(self.mox.file.get_size(loc.url))

    def download(self, loc, path):
        self.mox.file.copy(loc.url, path)

    def upload(self, path, loc):
        self.mox.file.copy(path, loc.url)

    def copy(self, src, dst):
        self.mox.file.copy(src.url, dst.url)

    def remove(self, loc):
        try:
            self.mox.file.remove(loc.url, recursive=False)
        except Exception:
            if not self.mox.file.exists(loc.url):
                return  # it was not there: not an error
            raise

    def copy_tree(self, src, dst, threads):
        if self.safe:
            self.mox.file.copy_parallel(src, dst, threads=0, is_processing=False)
        else:
            self.mox.file.copy_parallel(src, dst, threads=threads)
        return True


def _env_first(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return ""


_WARNED: set = set()  # endpoints already warned about, so each warning comes once


def sdk_settings(environ: Mapping[str, str]) -> Optional[dict]:
    """ObsClient keyword arguments from the environment, or None when something is missing."""
    ak = _env_first(environ, "OBS_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    sk = _env_first(environ, "OBS_SECRET_ACCESS_KEY", "S3_SECRET_ACCESS_KEY",
                    "AWS_SECRET_ACCESS_KEY")
    endpoint = _env_first(environ, "OBS_ENDPOINT", "S3_ENDPOINT")
    if not (ak and sk and endpoint):
        return None
    token = _env_first(environ, "OBS_SECURITY_TOKEN", "S3_SESSION_TOKEN", "AWS_SESSION_TOKEN")
    if "://" not in endpoint:
        https = environ.get("S3_USE_HTTPS", "1").lower() not in _FALSE
        endpoint = ("https://" if https else "http://") + endpoint
    pasted = _USERINFO_RE.match(endpoint)
    if pasted:
        # https://AK:SK@host: the SDK would take 'AK' for the host. Signing uses the keys above.
        shown = mask_credentials(endpoint)
        if shown not in _WARNED:
            _WARNED.add(shown)
            log.warning("%s has credentials in it: they are ignored (the keys come from "
                        "OBS_ACCESS_KEY_ID/OBS_SECRET_ACCESS_KEY); remove them from the "
                        "endpoint", shown)
        endpoint = pasted.group(1) + endpoint[pasted.end():]
    host = endpoint.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0].lower()
    huawei = "huaweicloud" in host or "hwclouds" in host
    signature = environ.get("OBS_SIGNATURE", "").lower() or ("obs" if huawei else "v4")
    if signature not in ("obs", "v2", "v4"):
        raise UserError("OBS_SIGNATURE=%r: use obs, v2 or v4" % signature)
    path_style_env = environ.get("OBS_PATH_STYLE", "").lower()
    path_style = (path_style_env in _TRUE) if path_style_env else not huawei
    verify = environ.get("S3_VERIFY_SSL", "").lower()
    if verify in _TRUE:
        # The SDK verifies only against a CA file it is given: hand it the system bundle.
        ssl_verify = ssl.get_default_verify_paths().cafile or True
    elif verify and verify not in _FALSE:
        ssl_verify = verify  # a CA bundle path
    else:
        ssl_verify = False
    timeout_text = environ.get("OBS_SYNC_TIMEOUT", "")
    try:
        timeout = float(timeout_text) if timeout_text else DEFAULT_TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise UserError("OBS_SYNC_TIMEOUT=%r: give the seconds to wait for the endpoint (> 0)"
                        % timeout_text)
    settings = dict(access_key_id=ak, secret_access_key=sk, server=endpoint,
                    signature=signature, path_style=path_style,
                    # Negotiation asks the server which signing it wants, an OBS-only request.
                    is_signature_negotiation=huawei and not environ.get("OBS_SIGNATURE"),
                    ssl_verify=ssl_verify, timeout=timeout)
    if token:
        settings["security_token"] = token
    region = _env_first(environ, "OBS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
    if region:
        settings["region"] = region
    return settings


def _on_modelarts(environ: Mapping[str, str]) -> bool:
    from modelarts.environment import is_modelarts  # lazily: obs_sync also runs as a script

    return bool(is_modelarts(environ))


def _load_moxing() -> Optional[RemoteBackend]:
    try:
        return MoxingBackend()
    except ImportError:
        return None


def select_backend(backend=None, environ: Optional[Mapping[str, str]] = None) -> RemoteBackend:
    """The backend for remote URLs: ``backend`` itself when it is one, else by name
    (moxing|sdk|mock), else ``OBS_SYNC_BACKEND``, else the first that is available."""
    environ = os.environ if environ is None else environ
    if isinstance(backend, RemoteBackend):
        return backend
    name = (backend or environ.get("OBS_SYNC_BACKEND", "")).lower()
    mock_root = environ.get("OBS_MOCK_ROOT", "")
    if name:
        if name == "moxing":
            mox = _load_moxing()
            if mox is None:
                raise UserError("OBS_SYNC_BACKEND=moxing but moxing cannot be imported: it "
                                "exists only inside ModelArts images")
            return mox
        if name in ("sdk", "obs-sdk"):
            return ObsSdkBackend(environ)
        if name == "mock":
            if not mock_root:
                raise UserError("the mock backend needs OBS_MOCK_ROOT=<folder> in the environment")
            return MockBackend(mock_root)
        raise UserError("unknown storage backend %r: use moxing, sdk or mock" % name)
    if _on_modelarts(environ):
        mox = _load_moxing()
        if mox is not None:
            return mox
    if sdk_settings(environ) is not None:
        try:
            return ObsSdkBackend(environ)
        except ImportError:
            log.warning("OBS credentials are set but esdk-obs-python is not installed")
    if mock_root:
        return MockBackend(mock_root)
    raise UserError("no storage backend for obs:// URLs: set OBS_ACCESS_KEY_ID + "
                    "OBS_SECRET_ACCESS_KEY + S3_ENDPOINT (with esdk-obs-python installed), or "
                    "OBS_MOCK_ROOT=<folder> for a local dry run")


# --------------------------------------------------------------------------- local files

def atomic_local_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` to ``path``: readers never see a half-written file."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, ".%s.%s%s" % (os.path.basename(path), uuid.uuid4().hex[:8],
                                               TMP_SUFFIX))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def list_local_dir(top: str) -> Dict[str, Entry]:
    """Every file under ``top`` as 'a/b.png' → Entry; {} when ``top`` does not exist."""
    found = {}
    top = top.rstrip(os.sep) or os.sep
    for root, _dirs, files in os.walk(top, followlinks=True):
        rel_root = os.path.relpath(root, top)
        for name in files:
            if name.endswith(TMP_SUFFIX):
                continue
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:  # vanished, or a dangling link
                continue
            rel = name if rel_root == "." else os.path.join(rel_root, name)
            found[rel.replace(os.sep, "/")] = Entry(st.st_size, st.st_mtime)
    return found


def _local_stat(path: str) -> Optional[Entry]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return Entry(st.st_size, st.st_mtime) if os.path.isfile(path) else None


def _parse_sdk_time(text: Optional[str]) -> Optional[float]:
    # The SDK turns LastModified into local time as '%Y/%m/%d %H:%M:%S', or leaves the ISO text.
    if not text:
        return None
    for fmt, utc in (("%Y/%m/%d %H:%M:%S", False), ("%Y-%m-%dT%H:%M:%S.%fZ", True),
                     ("%Y-%m-%dT%H:%M:%SZ", True)):
        try:
            parsed = time.strptime(text, fmt)
        except ValueError:
            continue
        return float(calendar.timegm(parsed) if utc else time.mktime(parsed))
    return None


def _parse_http_date(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%a, %d %b %Y %H:%M:%S GMT")))
    except ValueError:
        return None


# --------------------------------------------------------------------------- the engine

def _backoff(attempt: int) -> float:
    """Exponential back-off with jitter, so that many ranks retrying do not retry in step."""
    delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** attempt))
    return delay * (0.5 + random.random() / 2)


_PERMANENT = (UserError, FileNotFoundError, PermissionError, IsADirectoryError,
              NotADirectoryError)


def with_retries(what: str, fn: Callable[[], object], retries: int, *,
                 backend: Optional[RemoteBackend] = None):
    """Run ``fn``, one storage call; on a transient failure wait (exponential back-off with
    jitter) and try again, up to ``retries`` more times. ``what`` is the operation and its
    URL(s), e.g. 'list obs://bkt/data/'. When every attempt failed, the ``TransferError`` names
    it, the attempts, ``backend`` (and its endpoint) and what to do, in one line."""
    for attempt in range(retries + 1):
        try:
            return fn()
        except _PERMANENT:
            raise
        except Exception as e:  # network errors, 5xx: worth another try
            if isinstance(e, OSError) and e.errno in _LOCAL_ERRNOS:
                raise  # a full or read-only local disk: retrying cannot help
            reason = _one_line(e if isinstance(e, TransientError)
                               else "%s: %s" % (type(e).__name__, e))
            if attempt >= retries:
                where = backend.where() if backend is not None else "local files"
                advice = backend.advice() if backend is not None else "check the local disk"
                raise TransferError(mask_credentials(
                    "%s: failed after %d attempt%s (%s): %s. %s%s, or raise sync.retries (now "
                    "%d) if it is only slow or flaky" % (
                        what, attempt + 1, "s" if attempt else "", where, reason,
                        advice[:1].upper(), advice[1:], retries))) from e
            delay = _backoff(attempt)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, reason, attempt + 1, retries,
                        delay)
            _sleep(delay)
    raise AssertionError("unreachable")


def _check_space(folder: str, needed: int) -> None:
    """Refuse, before the first byte, a copy that cannot fit: one line with what is needed and
    free, rather than a half-filled disk and an error from the middle of the copy."""
    probe = folder
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    try:
        free = shutil.disk_usage(probe or os.sep).free
    except OSError:
        return
    if needed > free:
        raise disk_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), folder, needed)


def _count(name: str, value, minimum: int) -> int:
    """``sync.threads``/``sync.retries`` as an int, refused (not clamped) when out of range."""
    try:
        number = int(value)
        if number != float(value):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise UserError("sync.%s must be a whole number >= %d, got %r"
                        % (name, minimum, value)) from None
    if number < minimum:
        raise UserError("sync.%s must be >= %d, got %d" % (name, minimum, number))
    return number


def _remove_local(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class _Store:
    """The storage calls of one sync: each one through ``with_retries``. ``backend`` is None
    when both sides are local."""

    def __init__(self, backend: Optional[RemoteBackend], retries: int):
        self.backend, self.retries = backend, retries
        self.name = backend.name if backend is not None else "local"

    def _do(self, what: str, fn: Callable[[], object]):
        return with_retries(what, fn, self.retries, backend=self.backend)

    def stat(self, loc: Location) -> Optional[Entry]:
        return self._do("stat %s" % loc.url, lambda: self.backend.stat(loc))

    def list(self, loc: Location) -> List[Tuple[str, Entry]]:
        # A listing that fails on page 5 starts again: a half listing must not look complete.
        return self._do("list %s" % loc.as_dir().url, lambda: list(self.backend.list(loc)))

    def any(self, loc: Location) -> bool:
        """At least one object under the prefix (one request, not a whole listing)."""
        def first() -> bool:
            for _ in self.backend.list(loc):
                return True
            return False
        return self._do("list %s" % loc.as_dir().url, first)

    def size(self, loc: Location) -> int:
        return self._do("stat %s" % loc.url, lambda: self.backend.size(loc))

    def remove(self, loc: Location) -> None:
        if loc.remote:
            self._do("remove %s" % loc.url, lambda: self.backend.remove(loc))
        else:
            self._do("remove %s" % loc.path, lambda: _remove_local(loc.path))

    def copy_tree(self, src: Location, dst: Location, threads: int) -> bool:
        return self._do("copy %s -> %s" % (src.url, dst.url),
                        lambda: self.backend.copy_tree(src.as_dir().url, dst.as_dir().url,
                                                       threads))

    def transfer(self, item: _Plan) -> int:
        src, dst = item.src, item.dst
        op = ("get" if src.remote and not dst.remote else
              "put" if dst.remote and not src.remote else "copy")
        return self._do("%s %s -> %s" % (op, src.url, dst.url),
                        lambda: _transfer(item, self.backend))


def _is_newer_or_same(dst: Entry, src: Entry) -> bool:
    if dst.size is None or src.size is None or dst.size != src.size:
        return False
    if dst.mtime is None or src.mtime is None:
        return True
    # Same size but older than the source: an earlier run's file of the same name (checkpoints
    # of one network all have the same size), not a copy of this one.
    return dst.mtime + MTIME_SLACK_S >= src.mtime


class _Plan(NamedTuple):
    rel: str
    src: Location
    dst: Location
    entry: Entry


def _source_entries(src: Location, store: _Store) -> Tuple[str, Dict[str, Entry]]:
    """('file', {'': entry}) or ('dir', {rel: entry}); UserError when nothing is there."""
    if not src.remote:
        entry = _local_stat(src.path)
        if entry is not None:
            return "file", {"": entry}
        if os.path.isdir(src.path):
            return "dir", list_local_dir(src.path)
        raise UserError("%s does not exist" % src.path)
    if not src.dir_like:
        entry = store.stat(src)
        if entry is not None:
            return "file", {"": entry}
    folder = src.as_dir()
    entries = {}
    for key, entry in store.list(folder):
        rel = key[len(folder.key):]
        if not rel or key.endswith("/"):
            continue  # folder placeholder objects
        entries[check_relative_key(rel, folder.url)] = entry
    if not entries:
        raise UserError("%s does not exist (no object and no objects under it)" % src.url)
    return "dir", entries


def _dest_entries(dst: Location, store: _Store) -> Dict[str, Entry]:
    if not dst.remote:
        if os.path.isfile(dst.path):
            raise UserError("cannot sync a folder into %s: it is a file" % dst.path)
        return list_local_dir(dst.path)
    folder = dst.as_dir()
    found = {}
    for key, entry in store.list(folder):
        rel = key[len(folder.key):]
        if rel and not key.endswith("/"):
            found[rel] = entry
    return found


def _transfer(item: _Plan, backend: Optional[RemoteBackend]) -> int:
    """Copy one file; returns the bytes moved. One attempt: ``_Store.transfer`` retries it."""
    src, dst, expected = item.src, item.dst, item.entry.size
    if not dst.remote:
        def write(tmp: str) -> None:
            mtime = item.entry.mtime
            if src.remote:
                backend.download(src, tmp)
                got = os.path.getsize(tmp)
                if expected is not None and got != expected:
                    # Another writer may have replaced the object since it was listed (a rank
                    # reading run.json while rank 0 rewrites it): a whole newer version has
                    # the size the store gives now. Anything else is a cut-off answer.
                    now = backend.stat(src)
                    if now is None or now.size != got:
                        raise TransientError("short download, %d of %d bytes" % (got, expected))
                    mtime = now.mtime
            else:
                shutil.copyfile(src.path, tmp)
            if mtime is not None:
                # The copy carries the source's time (like rsync -t), so syncing it back the
                # other way sees it as unchanged rather than newer.
                os.utime(tmp, (mtime, mtime))

        atomic_local_write(dst.path, write)
        return os.path.getsize(dst.path)
    if src.remote:
        backend.copy(src, dst)
        return expected if expected is not None else backend.size(dst)
    size = os.path.getsize(src.path)
    backend.upload(src.path, dst)
    return size


def _fill_sizes(entries: Dict[str, Entry], folder: Location, rels: Iterable[str],
                store: _Store, pool: concurrent.futures.Executor) -> None:
    """Ask for sizes the listing did not give (moxing), only where a comparison needs them."""
    missing = [rel for rel in rels if entries[rel].size is None]
    sizes = pool.map(lambda rel: store.size(folder.join(rel)), missing)
    for rel, size in zip(missing, sizes):
        entries[rel] = Entry(size, entries[rel].mtime)


def _run_all(pool: concurrent.futures.Executor, calls: List[Callable[[], object]]) -> list:
    """Run ``calls`` in the pool; the first failure cancels what has not started and raises."""
    futures = [pool.submit(call) for call in calls]
    results = []
    try:
        for future in concurrent.futures.as_completed(futures):
            results.append(future.result())
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    return results


@_scrubbed
def sync(src: str, dst: str, *, threads: int = 8, retries: int = 3, backend=None,
         incremental: bool = True, exclude: Iterable[str] = (),
         delete: bool = False, verb: str = "synced") -> SyncReport:
    """Copy the file or folder ``src`` to ``dst`` (local paths or obs://, s3:// URLs).

    A folder's contents land in ``dst`` (like ``rsync src/ dst/``). A file lands at ``dst``, or
    inside it when ``dst`` ends with '/' or is an existing local folder. With ``incremental``,
    files whose destination copy has the same size and is not older are skipped. ``exclude``:
    glob patterns matched against paths relative to ``src`` (and, with ``delete``, relative to
    ``dst``). ``delete`` (folders only, like ``rsync --delete``): once every copy succeeded,
    files under ``dst`` that are not in ``src`` and not excluded are removed, so ``dst``
    mirrors ``src``. ``backend``: None (automatic), a name (moxing|sdk|mock) or a
    ``RemoteBackend``. ``threads`` >= 1 and ``retries`` >= 0, else ``UserError``. ``verb``
    starts the one log line that reports the copy ("staged", "uploaded outputs"): a caller
    names what the copy was for instead of logging the summary a second time."""
    start = time.monotonic()
    threads = _count("threads", threads, 1)
    retries = _count("retries", retries, 0)
    s, d = parse_location(src), parse_location(dst)
    be = select_backend(backend) if (s.remote or d.remote) else None
    try:
        report = _sync(s, d, _Store(be, retries), threads, incremental, tuple(exclude),
                       bool(delete))
    finally:
        if be is not None and be is not backend:
            be.close()
    report.seconds = time.monotonic() - start
    # Single-file pushes (each checkpoint, run.json updates) would flood the job log.
    level = logging.DEBUG if report.files + report.skipped == 1 else logging.INFO
    log.log(level, "%s %s -> %s: %s", verb, s.url, d.url, report.summary())
    return report


def _sync(s: Location, d: Location, store: _Store, threads: int, incremental: bool,
          exclude: Tuple[str, ...], delete: bool) -> SyncReport:
    name, be = store.name, store.backend
    kind, src_entries = _source_entries(s, store)
    if kind == "file":
        if d.dir_like or (not d.remote and os.path.isdir(d.path)):
            d = d.as_dir().join(s.basename)
        if not s.remote and not d.remote and s.path == d.path:
            return SyncReport(0, 0, 1, 0.0, name)
        entry = src_entries[""]
        dst_entry = None
        if incremental:
            dst_entry = _local_stat(d.path) if not d.remote else store.stat(d)
        if dst_entry is not None and entry.size is None and be is not None:
            entry = Entry(store.size(s), entry.mtime)
        if dst_entry is not None and dst_entry.size is None and be is not None:
            dst_entry = Entry(store.size(d), dst_entry.mtime)
        if dst_entry is not None and _is_newer_or_same(dst_entry, entry):
            return SyncReport(0, 0, 1, 0.0, name)
        return SyncReport(1, store.transfer(_Plan("", s, d, entry)), 0, 0.0, name)

    def excluded(rel: str) -> bool:
        return any(fnmatch.fnmatchcase(rel, pat) for pat in exclude)

    if exclude:
        src_entries = {rel: e for rel, e in src_entries.items() if not excluded(rel)}
    if not s.remote and not d.remote and s.path == d.path:
        return SyncReport(0, 0, len(src_entries), 0.0, name)
    dst_entries = _dest_entries(d, store) if (incremental or delete) else {}
    compare = dst_entries if incremental else {}
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="obs_sync") as pool:
        common = [rel for rel in src_entries if rel in compare]
        if be is not None and common:
            if s.remote:
                _fill_sizes(src_entries, s.as_dir(), common, store, pool)
            if d.remote:
                _fill_sizes(compare, d.as_dir(), common, store, pool)
        todo = [rel for rel in src_entries
                if rel not in compare or not _is_newer_or_same(compare[rel], src_entries[rel])]
        skipped = len(src_entries) - len(todo)
        if not d.remote:
            _check_space(d.path, sum(src_entries[rel].size or 0 for rel in todo))
        if (be is not None and not dst_entries and todo and not exclude
                and len(todo) == len(src_entries)):
            # Nothing at the destination: let the backend copy the folder its own way.
            if store.copy_tree(s, d, threads):
                moved = _copied_bytes(s, d, todo, src_entries, store, pool)
                return SyncReport(len(todo), moved, 0, 0.0, name)
        # Largest first, so one big file does not start last and run alone.
        todo.sort(key=lambda rel: -(src_entries[rel].size or 0))
        plans = [_Plan(rel, s.join(rel), d.join(rel), src_entries[rel]) for rel in todo]
        moved = sum(_run_all(pool, [lambda p=p: store.transfer(p) for p in plans]))
        stale = []
        if delete:
            # Only now: a sync that failed half-way must not have deleted anything.
            stale = sorted(rel for rel in dst_entries
                           if rel not in src_entries and not excluded(rel))
            _run_all(pool, [lambda rel=rel: store.remove(d.join(rel)) for rel in stale])
            if not d.remote:
                _prune_empty_folders(d.path, stale)
    return SyncReport(len(plans), moved, skipped, 0.0, name, len(stale))


def _prune_empty_folders(top: str, removed: Iterable[str]) -> None:
    """Folders under ``top`` left empty by a mirroring sync go too (``top`` stays)."""
    top = top.rstrip(os.sep)
    for rel in removed:
        folder = os.path.dirname(os.path.join(top, *rel.split("/")))
        while folder.startswith(top + os.sep):
            try:
                os.rmdir(folder)
            except OSError:  # not empty, or gone already
                break
            folder = os.path.dirname(folder)


def _copied_bytes(s: Location, d: Location, rels: List[str], entries: Dict[str, Entry],
                  store: _Store, pool: concurrent.futures.Executor) -> int:
    total = 0
    unknown = []
    for rel in rels:
        size = entries[rel].size
        if size is None and not d.remote:
            entry = _local_stat(d.join(rel).path)
            size = entry.size if entry else None
        if size is None:
            unknown.append(rel)
        else:
            total += size
    return total + sum(pool.map(lambda rel: store.size(d.join(rel)), unknown))


# --------------------------------------------------------------------------- extras used by the job

@_scrubbed
def list_files(url: str, *, backend=None, retries: int = 3) -> Dict[str, Entry]:
    """Files under the folder ``url`` (relative path → Entry); {} when there are none."""
    retries = _count("retries", retries, 0)
    loc = parse_location(url)
    if not loc.remote:
        return list_local_dir(loc.path) if os.path.isdir(loc.path) else {}
    be = select_backend(backend)
    try:
        return _dest_entries(loc, _Store(be, retries))
    finally:
        if be is not backend:
            be.close()


@_scrubbed
def exists(url: str, *, backend=None, retries: int = 3) -> bool:
    """True when ``url`` is a file/object or a folder/prefix holding at least one file."""
    retries = _count("retries", retries, 0)
    loc = parse_location(url)
    if not loc.remote:
        return os.path.exists(loc.path)
    be = select_backend(backend)
    try:
        store = _Store(be, retries)
        if not loc.dir_like and store.stat(loc) is not None:
            return True
        return store.any(loc.as_dir())
    finally:
        if be is not backend:
            be.close()


@_scrubbed
def remove(url: str, *, backend=None, retries: int = 3) -> None:
    """Delete the one file or object ``url``; one that is not there is not an error. A folder
    (a local directory, a URL ending in '/') is refused: this never deletes a tree."""
    retries = _count("retries", retries, 0)
    loc = parse_location(url)
    if not loc.remote:
        if os.path.isdir(loc.path):
            raise UserError("%s is a folder: remove() deletes one file" % loc.path)
        _Store(None, retries).remove(loc)
        return
    if loc.dir_like:
        raise UserError("%s ends with '/': remove() deletes one object; give its key" % loc.url)
    be = select_backend(backend)
    try:
        _Store(be, retries).remove(loc)
    finally:
        if be is not backend:
            be.close()


# --------------------------------------------------------------------------- CLI

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="obs_sync.py", description="Copy files/folders between obs://, s3:// and local paths.")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--backend", default=None, help="moxing|sdk|mock (default: automatic)")
    parser.add_argument("--full", action="store_true", help="copy every file, even unchanged ones")
    parser.add_argument("--delete", action="store_true",
                        help="mirror: remove files under DST that are not in SRC")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = sync(args.src, args.dst, threads=args.threads, retries=args.retries,
                      backend=args.backend, incremental=not args.full, delete=args.delete)
    except TransferError as e:  # before UserError, its base: a network failure exits 1
        print("error: %s" % e, file=sys.stderr)
        return 1
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("%s -> %s: %s" % (mask_credentials(args.src), mask_credentials(args.dst),
                            report.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
