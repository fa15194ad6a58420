"""obs_sync: the filesystem mock in every direction, the OBS SDK against moto_server on loopback,
a fake moxing module, retries, key safety, atomic local writes, remove and mirror mode. Faults
on a real endpoint (503s, drops, endpoint down): test_storage_faults.py."""
from __future__ import annotations

import logging
import os
import sys
import time
import types
from pathlib import Path

import pytest

import obs_sync
from obs_sync import Entry, MockBackend, StorageError, TransferError, atomic_local_write, sync
from src.errors import UserError


def make_tree(root, files):
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read_tree(root):
    return {str(p.relative_to(root)).replace(os.sep, "/"): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


FILES = {"a.txt": b"alpha", "sub/b.bin": os.urandom(3000), "sub/deep/c.png": b"c" * 10}


@pytest.fixture
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(obs_sync, "_sleep", slept.append)
    return slept


# --------------------------------------------------------------------------- URLs and keys

def test_is_remote_and_parse():
    assert obs_sync.is_remote("obs://b/k") and obs_sync.is_remote("S3://b/k")
    assert not obs_sync.is_remote("/cache/data") and not obs_sync.is_remote("http://x/y")
    loc = obs_sync.parse_location("obs://bucket/a/b/")
    assert (loc.bucket, loc.key, loc.dir_like) == ("bucket", "a/b/", True)
    assert loc.join("c.txt").url == "obs://bucket/a/b/c.txt"
    for bad in ("obs://", "obs://../x", "obs://b/a/../../x", "ftp://host/x"):
        with pytest.raises(UserError):
            obs_sync.parse_location(bad)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a\\..\\x", "a/./b", "..", "a/b\x00"])
def test_escaping_keys_refused(key):
    with pytest.raises(UserError, match="refusing object key"):
        obs_sync.check_relative_key(key, "obs://b/data/")


def test_plain_keys_accepted():
    for key in ("a.txt", "sub/dir/x..y.png", ".hidden/file"):
        assert obs_sync.check_relative_key(key, "obs://b/") == key


# --------------------------------------------------------------------------- the mock, every direction

def test_mock_every_direction(tmp_path, mock_obs):
    src = make_tree(tmp_path / "src", FILES)
    up = sync(str(src), "obs://bkt/data")
    assert (up.files, up.bytes, up.skipped, up.backend) == (3, sum(map(len, FILES.values())), 0,
                                                            "mock")
    assert read_tree(mock_obs / "bkt" / "data") == FILES

    down = sync("obs://bkt/data/", str(tmp_path / "down"))
    assert down.files == 3 and read_tree(tmp_path / "down") == FILES

    r2r = sync("obs://bkt/data", "s3://bkt/copy/")
    assert r2r.files == 3 and read_tree(mock_obs / "bkt" / "copy") == FILES

    l2l = sync(str(src), str(tmp_path / "local_copy"))
    assert l2l.files == 3 and l2l.backend == "local"
    assert read_tree(tmp_path / "local_copy") == FILES


def test_single_files(tmp_path, mock_obs):
    src = make_tree(tmp_path / "src", FILES)
    sync(str(src / "a.txt"), "obs://bkt/one/a_copy.txt")
    assert (mock_obs / "bkt" / "one" / "a_copy.txt").read_bytes() == b"alpha"
    sync(str(src / "sub" / "b.bin"), "obs://bkt/one/")  # trailing slash: into the folder
    assert (mock_obs / "bkt" / "one" / "b.bin").read_bytes() == FILES["sub/b.bin"]
    (tmp_path / "into").mkdir()
    sync("obs://bkt/one/a_copy.txt", str(tmp_path / "into"))  # an existing folder
    assert (tmp_path / "into" / "a_copy.txt").read_bytes() == b"alpha"
    sync("obs://bkt/one/b.bin", str(tmp_path / "exact.bin"))
    assert (tmp_path / "exact.bin").read_bytes() == FILES["sub/b.bin"]


def test_missing_source_names_it(tmp_path, mock_obs):
    with pytest.raises(UserError, match="obs://bkt/nope does not exist"):
        sync("obs://bkt/nope", str(tmp_path / "x"))
    with pytest.raises(UserError, match="does not exist"):
        sync(str(tmp_path / "absent"), "obs://bkt/x")


def test_incremental_skips_same_size_not_older(tmp_path, mock_obs):
    src = make_tree(tmp_path / "src", FILES)
    sync(str(src), "obs://bkt/data")
    again = sync(str(src), "obs://bkt/data")
    assert (again.files, again.bytes, again.skipped) == (0, 0, 3)

    (src / "a.txt").write_bytes(b"alpha, longer now")
    changed = sync(str(src), "obs://bkt/data")
    assert (changed.files, changed.skipped) == (1, 2)

    # Same size but the destination copy is older than the source: a leftover of an earlier
    # run (e.g. a checkpoint of the same name), not a copy of this file.
    stale = mock_obs / "bkt" / "data" / "sub" / "b.bin"
    stale.write_bytes(b"x" * len(FILES["sub/b.bin"]))
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fixed = sync(str(src), "obs://bkt/data")
    assert fixed.files == 1 and stale.read_bytes() == FILES["sub/b.bin"]

    full = sync(str(src), "obs://bkt/data", incremental=False)
    assert full.files == 3


def test_exclude_patterns(tmp_path, mock_obs):
    src = make_tree(tmp_path / "src", {"keep.txt": b"k", "logs/rank_1.log": b"l"})
    report = sync(str(src), "obs://bkt/out", exclude=["logs/rank_*.log"])
    assert report.files == 1 and read_tree(mock_obs / "bkt" / "out") == {"keep.txt": b"k"}


class HalfThenDie(MockBackend):
    """Writes half of the object and then fails, like a sync killed mid-file."""

    def download(self, loc, path):
        with open(self._path(loc), "rb") as f, open(path, "wb") as out:
            out.write(f.read()[:100])
        raise ConnectionResetError("peer went away")


def test_local_writes_are_atomic(tmp_path, mock_obs, no_sleep):
    make_tree(mock_obs / "bkt" / "data", {"big.bin": os.urandom(5000)})
    dst = tmp_path / "dst"
    with pytest.raises(TransferError, match="failed after 2 attempts"):
        sync("obs://bkt/data", str(dst), retries=1, backend=HalfThenDie(str(mock_obs)))
    assert read_tree(dst) == {}  # neither a half file nor a temporary one is left

    # A temporary file left by a killed process is neither taken as the file nor uploaded.
    (dst / (".big.bin.1234abcd" + obs_sync.TMP_SUFFIX)).write_bytes(b"half")
    report = sync("obs://bkt/data", str(dst))
    assert report.files == 1 and (dst / "big.bin").stat().st_size == 5000
    up = sync(str(dst), "obs://bkt/back")
    assert up.files == 1 and read_tree(mock_obs / "bkt" / "back").keys() == {"big.bin"}


class Latency(MockBackend):
    """Each request waits like a round trip to a remote store."""

    def download(self, loc, path):
        time.sleep(0.02)
        super().download(loc, path)


def test_threads_overlap_latency_bound_transfers(tmp_path, mock_obs):
    make_tree(mock_obs / "bkt" / "many", {"f%02d.png" % i: b"p" * 100 for i in range(40)})
    seconds = {}
    for threads in (1, 8):
        report = sync("obs://bkt/many", str(tmp_path / str(threads)), threads=threads,
                      backend=Latency(str(mock_obs)))
        assert report.files == 40
        seconds[threads] = report.seconds
    assert seconds[8] < seconds[1] / 2.5, seconds


# --------------------------------------------------------------------------- retries

class Flaky(MockBackend):
    def __init__(self, root, failures, error):
        super().__init__(root)
        self.failures, self.error, self.calls = failures, error, 0

    def download(self, loc, path):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        super().download(loc, path)


def test_transient_failures_are_retried_with_backoff(tmp_path, mock_obs, no_sleep):
    make_tree(mock_obs / "bkt" / "f", {"x.bin": b"payload"})
    flaky = Flaky(str(mock_obs), 2, ConnectionError("connection reset"))
    report = sync("obs://bkt/f/x.bin", str(tmp_path / "x.bin"), retries=3, backend=flaky)
    assert report.files == 1 and flaky.calls == 3
    assert (tmp_path / "x.bin").read_bytes() == b"payload"
    # Two waits, the second drawn from a window twice as large (jittered exponential back-off).
    assert len(no_sleep) == 2
    assert 0.5 * obs_sync.BACKOFF_BASE_S <= no_sleep[0] <= obs_sync.BACKOFF_BASE_S
    assert obs_sync.BACKOFF_BASE_S <= no_sleep[1] <= 2 * obs_sync.BACKOFF_BASE_S


def test_retries_exhausted(tmp_path, mock_obs, no_sleep):
    make_tree(mock_obs / "bkt" / "f", {"x.bin": b"payload"})
    flaky = Flaky(str(mock_obs), 10, obs_sync.TransientError("503 SlowDown"))
    with pytest.raises(TransferError, match=r"obs://bkt/f/x.bin.*failed after 3 attempts.*503"):
        sync("obs://bkt/f/x.bin", str(tmp_path / "x.bin"), retries=2, backend=flaky)
    assert flaky.calls == 3 and len(no_sleep) == 2


class ReplacedAfterListing(MockBackend):
    """Another writer (rank 0 rewriting run.json) replaces the object after it was listed."""

    def __init__(self, root, new_data):
        super().__init__(root)
        self.new_data, self.downloads = new_data, 0

    def download(self, loc, path):
        self.downloads += 1
        if self.downloads == 1:
            atomic_local_write(self._path(loc), lambda tmp: Path(tmp).write_bytes(self.new_data))
        super().download(loc, path)


def test_an_object_replaced_after_listing_is_taken_whole(tmp_path, mock_obs, no_sleep):
    make_tree(mock_obs / "bkt" / "run", {"run.json": b'{"status": "running"}'})
    newer = b'{"status": "running", "attempts": [1, 2]}'
    store = ReplacedAfterListing(str(mock_obs), newer)
    report = sync("obs://bkt/run/run.json", str(tmp_path / "run.json"), retries=2, backend=store)
    assert report.files == 1 and store.downloads == 1 and no_sleep == []
    assert (tmp_path / "run.json").read_bytes() == newer


class CutOff(MockBackend):
    """Every answer stops early, the store still holding the whole object."""

    def download(self, loc, path):
        with open(self._path(loc), "rb") as f, open(path, "wb") as out:
            out.write(f.read()[:3])


def test_a_cut_off_download_is_retried_and_never_kept(tmp_path, mock_obs, no_sleep):
    make_tree(mock_obs / "bkt" / "f", {"x.bin": b"payload"})
    with pytest.raises(TransferError, match=r"obs://bkt/f/x.bin.*3 attempts.*short download, 3 of 7"):
        sync("obs://bkt/f/x.bin", str(tmp_path / "x.bin"), retries=2, backend=CutOff(str(mock_obs)))
    assert not (tmp_path / "x.bin").exists() and len(no_sleep) == 2


def test_client_errors_fail_at_once(tmp_path, mock_obs, no_sleep):
    make_tree(mock_obs / "bkt" / "f", {"x.bin": b"payload"})
    denied = Flaky(str(mock_obs), 10, StorageError("obs://bkt/f/x.bin: download failed: 403"))
    with pytest.raises(StorageError, match="obs://bkt/f/x.bin.*403"):
        sync("obs://bkt/f", str(tmp_path / "d"), retries=5, backend=denied)
    assert denied.calls == 1 and no_sleep == []


class FlakyList(MockBackend):
    """Listing and HEAD answer 'connection reset' a few times first (a 503 at job start)."""

    def __init__(self, root, failures):
        super().__init__(root)
        self.failures, self.calls = failures, []

    def _maybe_fail(self, what):
        self.calls.append(what)
        if len(self.calls) <= self.failures:
            raise obs_sync.TransientError("%s: 503 SlowDown" % what)

    def stat(self, loc):
        self._maybe_fail("stat")
        return super().stat(loc)

    def list(self, loc):
        self._maybe_fail("list")
        return super().list(loc)

    def remove(self, loc):
        self._maybe_fail("remove")
        super().remove(loc)


def test_list_exists_remove_are_retried(tmp_path, mock_obs, no_sleep):
    make_tree(mock_obs / "bkt" / "out" / "ckpt", {"s1.ckpt": b"1", "s2.ckpt": b"22"})
    flaky = FlakyList(str(mock_obs), 2)
    found = obs_sync.list_files("obs://bkt/out/ckpt", backend=flaky)
    assert {rel: e.size for rel, e in found.items()} == {"s1.ckpt": 1, "s2.ckpt": 2}
    assert flaky.calls == ["list"] * 3 and len(no_sleep) == 2

    flaky = FlakyList(str(mock_obs), 2)
    assert obs_sync.exists("obs://bkt/out/ckpt", backend=flaky)
    assert flaky.calls == ["stat", "stat", "stat", "list"]  # not a file, a folder

    flaky = FlakyList(str(mock_obs), 1)
    obs_sync.remove("obs://bkt/out/ckpt/s1.ckpt", backend=flaky)
    assert flaky.calls == ["remove"] * 2
    assert not (mock_obs / "bkt" / "out" / "ckpt" / "s1.ckpt").exists()

    with pytest.raises(TransferError, match=r"^list obs://bkt/out/ckpt/: failed after 2 "
                                            r"attempts \(backend mock.*sync.retries \(now 1\)"):
        obs_sync.list_files("obs://bkt/out/ckpt", backend=FlakyList(str(mock_obs), 5),
                            retries=1)


def test_transfer_error_is_a_user_error():
    # start.py prints a UserError as one 'error:' line instead of a traceback.
    assert issubclass(TransferError, UserError)
    assert not issubclass(obs_sync.TransientError, UserError)


@pytest.mark.parametrize("kwargs, message", [
    ({"threads": 0}, "sync.threads must be >= 1, got 0"),
    ({"threads": -2}, "sync.threads must be >= 1, got -2"),
    ({"retries": -1}, "sync.retries must be >= 0, got -1"),
    ({"threads": "many"}, "sync.threads must be a whole number >= 1, got 'many'"),
    ({"retries": 1.5}, "sync.retries must be a whole number >= 0, got 1.5"),
])
def test_bad_threads_and_retries_are_refused(tmp_path, mock_obs, kwargs, message):
    make_tree(tmp_path / "src", FILES)
    with pytest.raises(UserError, match="^%s$" % message.replace(".", r"\.")):
        sync(str(tmp_path / "src"), "obs://bkt/x", **kwargs)
    assert not (mock_obs / "bkt").exists()  # refused before doing anything
    if "retries" in kwargs:
        for call in (obs_sync.list_files, obs_sync.exists, obs_sync.remove):
            with pytest.raises(UserError, match="sync.retries"):
                call("obs://bkt/x/a.txt", **kwargs)
    assert sync(str(tmp_path / "src"), "obs://bkt/x", threads=1, retries=0).files == 3


class Resp:
    def __init__(self, status, code="", message=""):
        self.status, self.errorCode, self.errorMessage = status, code, message


def test_sdk_status_classification(clean_storage_env):
    for name, value in {"OBS_ACCESS_KEY_ID": "ak", "OBS_SECRET_ACCESS_KEY": "sk",
                        "S3_ENDPOINT": "http://127.0.0.1:9"}.items():
        clean_storage_env.setenv(name, value)
    backend = obs_sync.ObsSdkBackend()
    loc = obs_sync.parse_location("obs://bkt/k")
    assert backend._check(Resp(200), loc, "get").status == 200
    for status in (500, 503, 408, 429, None):
        with pytest.raises(obs_sync.TransientError):
            backend._check(Resp(status), loc, "get")
    with pytest.raises(StorageError, match=r"obs://bkt/k: get failed: 403 AccessDenied.*"
                                           r"permissions on bucket 'bkt'"):
        backend._check(Resp(403, "AccessDenied", "Access Denied"), loc, "get")
    with pytest.raises(StorageError, match="no bucket 'bkt'"):
        backend._check(Resp(404, "NoSuchBucket", "gone"), loc, "list")


# --------------------------------------------------------------------------- remove and mirror

def test_remove(tmp_path, mock_obs):
    make_tree(mock_obs / "bkt" / "d", {"a.txt": b"a", "sub/b.txt": b"b"})
    obs_sync.remove("obs://bkt/d/a.txt")
    assert read_tree(mock_obs / "bkt" / "d") == {"sub/b.txt": b"b"}
    obs_sync.remove("obs://bkt/d/a.txt")  # gone already: not an error
    obs_sync.remove("obs://bkt/d/sub")  # a "folder" is not an object: nothing happens
    assert read_tree(mock_obs / "bkt" / "d") == {"sub/b.txt": b"b"}
    with pytest.raises(UserError, match="ends with '/'"):
        obs_sync.remove("obs://bkt/d/sub/")

    local = make_tree(tmp_path / "l", {"x.txt": b"x"})
    obs_sync.remove(str(local / "x.txt"))
    obs_sync.remove(str(local / "x.txt"))
    assert not (local / "x.txt").exists()
    with pytest.raises(UserError, match="is a folder"):
        obs_sync.remove(str(local))


def test_mirror_into_a_local_cache(tmp_path, mock_obs):
    data = make_tree(mock_obs / "bkt" / "data", FILES)
    cache = tmp_path / "cache"
    sync("obs://bkt/data", str(cache), delete=True)
    assert read_tree(cache) == FILES
    make_tree(cache, {"keep/notes.txt": b"mine"})

    (data / "sub" / "deep" / "c.png").unlink()  # deleted from data_url ...
    (data / "a.txt").write_bytes(b"changed")
    report = sync("obs://bkt/data", str(cache), delete=True, exclude=["keep/*"])
    # ... and gone from the cache, its emptied folder too; excluded files stay.
    assert (report.files, report.deleted) == (1, 1) and "1 deleted" in report.summary()
    assert read_tree(cache) == {"a.txt": b"changed", "sub/b.bin": FILES["sub/b.bin"],
                                "keep/notes.txt": b"mine"}
    assert not (cache / "sub" / "deep").exists()

    # Without delete nothing is removed; nor with a single-file source.
    make_tree(cache, {"stray.txt": b"s"})
    assert sync("obs://bkt/data", str(cache)).deleted == 0
    assert sync("obs://bkt/data/a.txt", str(cache / "a.txt"), delete=True).deleted == 0
    assert (cache / "stray.txt").exists()
    # Full copies (incremental=False) mirror too.
    assert sync("obs://bkt/data", str(cache), delete=True, incremental=False,
                exclude=["keep/*"]).deleted == 1


def test_mirror_to_a_remote_destination(tmp_path, mock_obs):
    src = make_tree(tmp_path / "src", FILES)
    sync(str(src), "obs://bkt/m")
    (src / "a.txt").unlink()
    report = sync(str(src), "obs://bkt/m", delete=True)
    assert (report.files, report.skipped, report.deleted) == (0, 2, 1)
    assert read_tree(mock_obs / "bkt" / "m") == read_tree(src)


def test_mirror_deletes_nothing_when_a_copy_fails(tmp_path, mock_obs, no_sleep):
    make_tree(mock_obs / "bkt" / "data", {"new.bin": b"n"})
    cache = make_tree(tmp_path / "cache", {"old.bin": b"o"})
    flaky = Flaky(str(mock_obs), 10, ConnectionError("reset"))
    with pytest.raises(TransferError):
        sync("obs://bkt/data", str(cache), delete=True, retries=1, backend=flaky)
    assert read_tree(cache) == {"old.bin": b"o"}


# --------------------------------------------------------------------------- backend selection

def test_no_backend_says_what_to_set(tmp_path, clean_storage_env):
    with pytest.raises(UserError, match="OBS_ACCESS_KEY_ID.*OBS_SECRET_ACCESS_KEY.*S3_ENDPOINT"
                                        ".*OBS_MOCK_ROOT"):
        sync("obs://bkt/data", str(tmp_path / "x"))


def test_sdk_settings_from_environment():
    huawei = obs_sync.sdk_settings({"S3_ACCESS_KEY_ID": "ak", "S3_SECRET_ACCESS_KEY": "sk",
                                    "S3_ENDPOINT": "obs.cn-north-4.myhuaweicloud.com",
                                    "S3_VERIFY_SSL": "0"})
    assert huawei["server"] == "https://obs.cn-north-4.myhuaweicloud.com"
    assert (huawei["signature"], huawei["path_style"], huawei["is_signature_negotiation"],
            huawei["ssl_verify"]) == ("obs", False, True, False)
    other = obs_sync.sdk_settings({"AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "sk",
                                   "AWS_SESSION_TOKEN": "tok", "OBS_ENDPOINT": "minio:9000",
                                   "S3_USE_HTTPS": "0"})
    assert other["server"] == "http://minio:9000" and other["security_token"] == "tok"
    assert (other["signature"], other["path_style"], other["is_signature_negotiation"]) == (
        "v4", True, False)
    forced = obs_sync.sdk_settings({"OBS_ACCESS_KEY_ID": "a", "OBS_SECRET_ACCESS_KEY": "s",
                                    "S3_ENDPOINT": "https://obs.x.myhuaweicloud.com",
                                    "OBS_SIGNATURE": "v4", "OBS_PATH_STYLE": "1"})
    assert (forced["signature"], forced["path_style"], forced["is_signature_negotiation"]) == (
        "v4", True, False)
    assert obs_sync.sdk_settings({"OBS_ACCESS_KEY_ID": "a", "S3_ENDPOINT": "x"}) is None


def test_sdk_settings_timeout_and_endpoint_credentials(caplog):
    base = {"OBS_ACCESS_KEY_ID": "ak", "OBS_SECRET_ACCESS_KEY": "sk"}
    plain = obs_sync.sdk_settings(dict(base, S3_ENDPOINT="http://minio:9000"))
    assert plain["timeout"] == obs_sync.DEFAULT_TIMEOUT_S
    assert obs_sync.sdk_settings(dict(base, S3_ENDPOINT="http://m:1",
                                      OBS_SYNC_TIMEOUT="2.5"))["timeout"] == 2.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(UserError, match="OBS_SYNC_TIMEOUT"):
            obs_sync.sdk_settings(dict(base, S3_ENDPOINT="http://m:1", OBS_SYNC_TIMEOUT=bad))
    caplog.set_level(logging.WARNING)
    pasted = obs_sync.sdk_settings(dict(base, S3_ENDPOINT="https://AK:S3cr/t@obs.x.com:8443/"))
    assert pasted["server"] == "https://obs.x.com:8443/"
    assert "https://***@obs.x.com:8443/" in caplog.text and "S3cr" not in caplog.text


# --------------------------------------------------------------------------- moxing (fake module)

class FakeMoxFile:
    """Enough of moxing.file, backed by a folder: obs://b/k ↦ <root>/b/k; records calls."""

    def __init__(self, root):
        self.root, self.calls = root, []

    def _p(self, url):
        return os.path.join(self.root, url.split("://", 1)[1]) if "://" in url else url

    def exists(self, url):
        self.calls.append(("exists", url))
        return os.path.exists(self._p(url))

    def is_directory(self, url):
        self.calls.append(("is_directory", url))
        return os.path.isdir(self._p(url))

    def get_size(self, url):
        self.calls.append(("get_size", url))
        return os.path.getsize(self._p(url))

    def list_directory(self, url, recursive=False):
        self.calls.append(("list_directory", url, recursive))
        top = self._p(url)
        names = []
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                names.append(os.path.relpath(os.path.join(root, name), top))
        return sorted(names)

    def copy(self, src, dst):
        self.calls.append(("copy", src, dst))
        os.makedirs(os.path.dirname(self._p(dst)), exist_ok=True)
        with open(self._p(src), "rb") as f, open(self._p(dst), "wb") as g:
            g.write(f.read())

    def remove(self, url, recursive=False):
        self.calls.append(("remove", url, recursive))
        os.remove(self._p(url))  # like moxing, a missing file raises

    def copy_parallel(self, src, dst, threads=8, is_processing=True):
        self.calls.append(("copy_parallel", src, dst, threads, is_processing))
        for rel in self.list_directory(src, recursive=True):
            if not os.path.isdir(os.path.join(self._p(src), rel)):
                self.copy(src.rstrip("/") + "/" + rel, dst.rstrip("/") + "/" + rel)


@pytest.fixture
def fake_moxing(tmp_path, clean_storage_env):
    fake = types.ModuleType("moxing")
    fake.file = FakeMoxFile(str(tmp_path / "mox_root"))
    clean_storage_env.setitem(sys.modules, "moxing", fake)
    return fake.file


def test_moxing_used_only_on_modelarts(tmp_path, fake_moxing, mock_obs, monkeypatch):
    make_tree(mock_obs / "bkt", {"x.txt": b"x"})
    monkeypatch.setattr(obs_sync, "_on_modelarts", lambda environ: False)
    assert sync("obs://bkt/x.txt", str(tmp_path / "x.txt")).backend == "mock"
    assert fake_moxing.calls == []


def test_moxing_backend(tmp_path, fake_moxing, monkeypatch):
    monkeypatch.setattr(obs_sync, "_on_modelarts", lambda environ: True)
    make_tree(tmp_path / "mox_root" / "bkt" / "data", FILES)
    dst = tmp_path / "cache" / "data"

    first = sync("obs://bkt/data", str(dst), threads=4)
    assert first.backend == "moxing" and first.files == 3
    assert first.bytes == sum(map(len, FILES.values()))
    assert read_tree(dst) == FILES
    kinds = [c[0] for c in fake_moxing.calls]
    assert ("list_directory", "obs://bkt/data/", True) in fake_moxing.calls
    assert kinds.count("copy_parallel") == 1 and "get_size" not in kinds
    assert ("copy_parallel", "obs://bkt/data/", str(dst), 4, True) in fake_moxing.calls

    fake_moxing.calls.clear()
    again = sync("obs://bkt/data", str(dst))
    assert (again.files, again.skipped) == (0, 3)
    assert [c for c in fake_moxing.calls if c[0] in ("copy", "copy_parallel")] == []
    assert sum(c[0] == "get_size" for c in fake_moxing.calls) == 3

    (tmp_path / "mox_root" / "bkt" / "data" / "a.txt").write_bytes(b"changed!")
    fake_moxing.calls.clear()
    changed = sync("obs://bkt/data", str(dst))
    assert (changed.files, changed.skipped) == (1, 2)
    copies = [c for c in fake_moxing.calls if c[0] == "copy"]
    assert len(copies) == 1 and copies[0][1] == "obs://bkt/data/a.txt"
    assert (dst / "a.txt").read_bytes() == b"changed!"

    one = sync(str(dst / "a.txt"), "obs://bkt/out/a.txt")
    assert one.files == 1 and ("copy", str(dst / "a.txt"), "obs://bkt/out/a.txt") in \
        fake_moxing.calls


def test_moxing_safe_mode(tmp_path, fake_moxing, monkeypatch):
    monkeypatch.setattr(obs_sync, "_on_modelarts", lambda environ: True)
    monkeypatch.setenv("OBS_SYNC_MOX_SAFE", "1")
    monkeypatch.delenv("MOX_FILE_LARGE_FILE_TASK_NUM", raising=False)
    make_tree(tmp_path / "mox_root" / "bkt" / "data", FILES)
    sync("obs://bkt/data", str(tmp_path / "d"))
    assert os.environ["MOX_FILE_LARGE_FILE_TASK_NUM"] == "1"
    assert [c[3:] for c in fake_moxing.calls if c[0] == "copy_parallel"] == [(0, False)]


def test_moxing_remove(tmp_path, fake_moxing, monkeypatch):
    monkeypatch.setattr(obs_sync, "_on_modelarts", lambda environ: True)
    make_tree(tmp_path / "mox_root" / "bkt", {"x.txt": b"x"})
    obs_sync.remove("obs://bkt/x.txt")
    obs_sync.remove("obs://bkt/x.txt")  # missing: moxing raises, obs_sync checks and shrugs
    assert not (tmp_path / "mox_root" / "bkt" / "x.txt").exists()
    assert [c for c in fake_moxing.calls if c[0] == "remove"] == [
        ("remove", "obs://bkt/x.txt", False)] * 2


# --------------------------------------------------------------------------- OBS SDK against moto

def test_sdk_up_and_down_with_pagination(tmp_path, s3_bucket, caplog):
    bucket, s3 = s3_bucket.name, s3_bucket.client
    files = {"f%03d.txt" % i: b"%d" % i * (i + 1) for i in range(7)}
    files["nested/big.bin"] = os.urandom(200_000)
    src = make_tree(tmp_path / "src", files)

    caplog.set_level(logging.DEBUG)
    up = sync(str(src), "obs://%s/run/data" % bucket, threads=4)
    assert up.backend == "obs-sdk" and up.files == len(files)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="run/data/")["Contents"]
    assert {o["Key"][len("run/data/"):]: o["Size"] for o in listed} == \
        {k: len(v) for k, v in files.items()}

    backend = obs_sync.ObsSdkBackend(max_keys=3)
    pages = []
    real_list = backend._client.listObjects

    def counting_list(*args, **kwargs):
        pages.append(kwargs.get("marker"))
        return real_list(*args, **kwargs)

    backend._client.listObjects = counting_list
    down = sync("s3://%s/run/data/" % bucket, str(tmp_path / "down"), backend=backend)
    assert down.files == len(files) and read_tree(tmp_path / "down") == files
    assert len(pages) >= 3  # 8 objects, 3 per page

    again = sync("obs://%s/run/data" % bucket, str(tmp_path / "down"))
    assert (again.files, again.skipped) == (0, len(files))
    again_up = sync(str(src), "obs://%s/run/data" % bucket)
    assert (again_up.files, again_up.skipped) == (0, len(files))

    copied = sync("obs://%s/run/data/nested" % bucket, "obs://%s/copy" % bucket)
    assert copied.files == 1
    assert s3.head_object(Bucket=bucket, Key="copy/big.bin")["ContentLength"] == 200_000

    single = sync("obs://%s/run/data/f003.txt" % bucket, str(tmp_path / "one.txt"))
    assert single.files == 1 and (tmp_path / "one.txt").read_bytes() == files["f003.txt"]
    assert s3_bucket.secret_key not in caplog.text


def test_sdk_refuses_escaping_key(tmp_path, s3_bucket):
    bucket, s3 = s3_bucket.name, s3_bucket.client
    s3.put_object(Bucket=bucket, Key="data/ok.txt", Body=b"ok")
    s3.put_object(Bucket=bucket, Key="data/../evil.txt", Body=b"evil")
    dst = tmp_path / "inner" / "data"
    with pytest.raises(UserError, match=r"refusing object key '\.\./evil\.txt'"):
        sync("obs://%s/data" % bucket, str(dst))
    assert not (tmp_path / "inner" / "evil.txt").exists() and not dst.exists()


def test_sdk_remove_and_mirror(tmp_path, s3_bucket):
    bucket, s3 = s3_bucket.name, s3_bucket.client
    for key in ("m/a.txt", "m/b.txt", "m/sub/c.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    obs_sync.remove("obs://%s/m/a.txt" % bucket)
    obs_sync.remove("obs://%s/m/a.txt" % bucket)  # missing: fine
    assert sorted(obs_sync.list_files("obs://%s/m" % bucket)) == ["b.txt", "sub/c.txt"]
    with pytest.raises(StorageError, match="NoSuchBucket"):
        obs_sync.remove("obs://no-such-bucket-x/k")

    cache = tmp_path / "cache"
    sync("obs://%s/m" % bucket, str(cache), delete=True)
    s3.delete_object(Bucket=bucket, Key="m/sub/c.txt")
    report = sync("obs://%s/m" % bucket, str(cache), delete=True)
    assert report.deleted == 1 and read_tree(cache) == {"b.txt": b"m/b.txt"}
    src = make_tree(tmp_path / "src", {"only.txt": b"o"})
    report = sync(str(src), "obs://%s/m" % bucket, delete=True)
    assert (report.files, report.deleted) == (1, 1)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="m/")["Contents"]] == [
        "m/only.txt"]


def test_sdk_errors_name_the_url(tmp_path, s3_bucket, no_sleep):
    bucket = s3_bucket.name
    with pytest.raises(StorageError, match="obs://no-such-bucket-x/data/.*NoSuchBucket"):
        sync(str(make_tree(tmp_path / "s", {"a": b"a"})), "obs://no-such-bucket-x/data")
    with pytest.raises(UserError, match="obs://%s/absent does not exist" % bucket):
        sync("obs://%s/absent" % bucket, str(tmp_path / "d"))
    assert no_sleep == []


def test_sdk_transient_failure_logs_no_secret(tmp_path, s3_bucket, caplog, no_sleep):
    bucket = s3_bucket.name
    backend = obs_sync.ObsSdkBackend()
    real_put = backend._client.putFile
    calls = []

    def flaky_put(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise ConnectionResetError("reset by peer")
        return real_put(*args, **kwargs)

    backend._client.putFile = flaky_put
    caplog.set_level(logging.DEBUG)
    src = make_tree(tmp_path / "s", {"a.txt": b"a"})
    assert sync(str(src), "obs://%s/t" % bucket, backend=backend).files == 1
    assert len(calls) == 2 and len(no_sleep) == 1
    assert "retry 1/3" in caplog.text and s3_bucket.secret_key not in caplog.text


# --------------------------------------------------------------------------- CLI

def test_cli(tmp_path, mock_obs, capsys):
    src = make_tree(tmp_path / "src", FILES)
    assert obs_sync.main([str(src), "obs://bkt/cli", "--threads", "2", "--retries", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "3 files" in out[0] and "backend mock" in out[0]
    assert "MB/s" in out[0]
    assert obs_sync.main(["obs://bkt/absent", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: obs://bkt/absent does not exist")
    assert obs_sync.main([str(src), "obs://bkt/cli", "--threads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: sync.threads must be >= 1, got 0"
    (src / "a.txt").unlink()
    assert obs_sync.main([str(src), "obs://bkt/cli", "--delete"]) == 0
    assert "1 deleted" in capsys.readouterr().out
    assert read_tree(mock_obs / "bkt" / "cli") == read_tree(src)


def test_sync_report_entry_types():
    report = obs_sync.SyncReport(2, 2_000_000, 1, 0.5, "mock")
    assert report.mb_per_s == pytest.approx(4.0) and "backend mock" in report.summary()
    assert Entry(1, None).size == 1
