"""Shared fixtures: the filesystem OBS mock, a real S3 endpoint (moto_server) on loopback, the
same endpoint behind a fault-injecting proxy, and MindSpore's PyNative mode for unit tests."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import types
import uuid

import pytest

# Variables that would make obs_sync pick a backend other than the one a test sets up.
STORAGE_ENV = (
    "OBS_ACCESS_KEY_ID", "OBS_SECRET_ACCESS_KEY", "OBS_SECURITY_TOKEN", "OBS_ENDPOINT",
    "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_SESSION_TOKEN", "S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "OBS_MOCK_ROOT",
    "OBS_SYNC_BACKEND", "OBS_SIGNATURE", "OBS_PATH_STYLE", "OBS_REGION", "S3_USE_HTTPS",
    "S3_VERIFY_SSL", "OBS_SYNC_MOX_SAFE", "OBS_SYNC_TIMEOUT",
)
MOTO_ACCESS_KEY = "AKIDMOTOTEST"
MOTO_SECRET_KEY = "moto-secret-Zq8vXw3LpK"


@pytest.fixture
def clean_storage_env(monkeypatch):
    for name in STORAGE_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def mock_obs(tmp_path, clean_storage_env):
    """OBS_MOCK_ROOT set to a fresh folder: obs://bucket/key ↦ <root>/bucket/key."""
    root = tmp_path / "mock_obs"
    root.mkdir()
    clean_storage_env.setenv("OBS_MOCK_ROOT", str(root))
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(exe: str, log_path, env=None):
    """(process, http://127.0.0.1:<port>) of a moto_server that accepts connections."""
    port = _free_port()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=log_file,
                                stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, "http://127.0.0.1:%d" % port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start: " + log_path.read_text()) from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """http://127.0.0.1:<port> of a moto_server started once for the session."""
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(exe):
        exe = shutil.which("moto_server")
    if not exe:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    proc, endpoint = start_moto(exe, tmp_path_factory.mktemp("moto") / "moto.log")
    yield endpoint
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def s3_bucket(moto_endpoint, clean_storage_env):
    """A fresh bucket on the moto endpoint and the environment that points obs_sync's SDK
    backend at it: .name, .client (boto3), .secret_key (to check it is never logged)."""
    import boto3

    env = {"OBS_ACCESS_KEY_ID": MOTO_ACCESS_KEY, "OBS_SECRET_ACCESS_KEY": MOTO_SECRET_KEY,
           "S3_ENDPOINT": moto_endpoint}
    for name, value in env.items():
        clean_storage_env.setenv(name, value)
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                          aws_access_key_id=MOTO_ACCESS_KEY,
                          aws_secret_access_key=MOTO_SECRET_KEY)
    bucket = "test-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=bucket)
    return types.SimpleNamespace(name=bucket, client=client, secret_key=MOTO_SECRET_KEY)


@pytest.fixture
def faulty_s3(s3_bucket, moto_endpoint, clean_storage_env):
    """``s3_bucket`` reached through a fault-injecting proxy (tests/faultproxy.py): obs_sync's
    SDK backend talks to the proxy, while ``.client`` (boto3) talks to moto directly, so setting
    up and checking never meets a fault. ``.name``, ``.client``, ``.secret_key``, ``.endpoint``
    (the proxy's), ``.proxy`` (``.add(action, method, key, times, ...)``, ``.injected``,
    ``.clear()``), ``.env`` (the variables a subprocess needs; it can add rules with
    ``faultproxy.add_rule(env["S3_ENDPOINT"], ...)``). The SDK's time-out is 5 s here."""
    from tests.faultproxy import FaultProxy

    proxy = FaultProxy(moto_endpoint)
    env = {"OBS_ACCESS_KEY_ID": MOTO_ACCESS_KEY, "OBS_SECRET_ACCESS_KEY": MOTO_SECRET_KEY,
           "S3_ENDPOINT": proxy.endpoint, "OBS_SYNC_BACKEND": "sdk", "OBS_SYNC_TIMEOUT": "5"}
    for name, value in env.items():
        clean_storage_env.setenv(name, value)
    yield types.SimpleNamespace(name=s3_bucket.name, client=s3_bucket.client,
                                secret_key=s3_bucket.secret_key, endpoint=proxy.endpoint,
                                proxy=proxy, env=env)
    proxy.close()


@pytest.fixture
def pynative_mode():
    """Run a test op by op (MindSpore PyNative): a graph compile per shape would dominate unit
    tests. The previous mode is restored afterwards, whatever the test switched to."""
    import mindspore as ms

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)
