"""Storage under faults: obs_sync's SDK backend against moto_server behind a proxy that answers
503, drops connections and stalls (tests/faultproxy.py). What a user sees: with fewer faults
than retries every call succeeds and the files arrive intact; with more, one line naming the
URL, the operation and the endpoint, and never the secret key."""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

import obs_sync
from obs_sync import TransferError, sync
from src.errors import UserError
from tests.e2e_helpers import REPO
from tests.conftest import start_moto
from tests.faultproxy import FaultProxy, add_rule, clear_rules, fault_state
from tests.test_obs_sync import make_tree, read_tree

FILES = {"a.txt": b"alpha", "sub/b.bin": os.urandom(3000), "sub/deep/big.bin": os.urandom(300_000)}
OPS = ("LIST", "HEAD", "GET", "PUT", "DELETE")




def remote_tree(s3, bucket, prefix):
    found = {}
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        found[obj["Key"][len(prefix):]] = body
    return found


@pytest.fixture
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(obs_sync, "_sleep", slept.append)
    return slept


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_clear_line(message, *, url, endpoint, secret):
    assert "\n" not in message and "Traceback" not in message
    assert url in message and endpoint in message, message
    assert "obs-sdk" in message and "sync.retries" in message, message
    assert secret not in message


# --------------------------------------------------------------------------- the proxy itself

def _recording_upstream(exchanges):
    """A one-shot HTTP 'server': for each (request size, canned answer), accept a connection,
    read that many bytes (or until they stop coming), record them, send the answer, close."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    received = []

    def serve():
        for size, answer in exchanges:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while len(data) < size:
                        block = conn.recv(65536)
                        if not block:
                            break
                        data += block
                except socket.timeout:
                    pass
                received.append(data)
                conn.sendall(answer)
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return "http://127.0.0.1:%d" % server.getsockname()[1], received, thread


def _read_all(sock):
    data = b""
    while True:
        block = sock.recv(65536)
        if not block:
            return data
        data += block


def test_proxy_forwards_byte_for_byte_chunked_both_ways():
    # A V4-signed-looking chunked upload and a chunked answer with a trailer: the upstream gets
    # exactly the client's bytes (Host included) and the client exactly the upstream's.
    request = (b"PUT /bkt/some%20key HTTP/1.1\r\nHost: 127.0.0.1:1234\r\n"
               b"Authorization: AWS4-HMAC-SHA256 Credential=AK/20240101/us-east-1/s3/"
               b"aws4_request, SignedHeaders=host;x-amz-date, Signature=abc123\r\n"
               b"x-amz-date: 20240101T000000Z\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n")
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"e\"\r\n\r\n"
              b"3\r\nabc\r\n0\r\nx-checksum: 1\r\n\r\n")
    upstream, received, thread = _recording_upstream([(len(request), answer)])
    with FaultProxy(upstream) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as c:
        c.sendall(request[:40])  # in pieces, as a streaming client would
        time.sleep(0.05)
        c.sendall(request[40:])
        got = b""
        while not got.endswith(b"x-checksum: 1\r\n\r\n"):
            block = c.recv(65536)
            assert block, got
            got += block
        assert got == answer
        assert proxy.requests == [("PUT", "some key", None)]
    thread.join(5)
    assert received == [request]


def test_proxy_rules_and_http_control():
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    listing = b"GET /bkt?prefix=x HTTP/1.1\r\nHost: h\r\n\r\n"
    upstream, received, thread = _recording_upstream([(len(listing), answer)])
    with FaultProxy(upstream) as proxy:
        # Set from "another process": the control path on the proxy's own port.
        state = add_rule(proxy.endpoint, "503", method="LIST", times=1)
        assert state["rules"][0]["left"] == 1
        add_rule(proxy.endpoint, "drop", method="HEAD", key=r"\.bin$")
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            c.sendall(listing)
            reply = _read_all(c)
        assert reply.startswith(b"HTTP/1.1 503 ") and b"<Code>ServiceUnavailable</Code>" in reply
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            c.sendall(b"HEAD /bkt/x.bin HTTP/1.1\r\nHost: h\r\n\r\n")
            assert _read_all(c) == b""  # dropped: no answer at all
        with socket.create_connection(("127.0.0.1", proxy.port)) as c:
            c.sendall(listing)  # the rules are spent: forwarded
            assert _read_all(c) == answer
        state = fault_state(proxy.endpoint)
        assert state["injected"] == {"503 LIST": 1, "drop HEAD": 1} == proxy.injected
        assert [r["left"] for r in state["rules"]] == [0, 0]
        assert clear_rules(proxy.endpoint)["rules"] == []
    thread.join(5)
    assert received == [listing]


@pytest.fixture(scope="module")
def moto_with_auth(tmp_path_factory):
    """A moto_server that checks signatures (the shared one accepts any): an IAM user's key
    pair, made with the first three requests, is all it accepts afterwards."""
    import boto3

    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(exe):
        pytest.skip("moto_server not installed")
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    proc, endpoint = start_moto(exe, tmp_path_factory.mktemp("moto_auth") / "moto.log", env)
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="tester")
        iam.put_user_policy(UserName="tester", PolicyName="all", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", '
            '"Resource": "*"}]}'))
        key = iam.create_access_key(UserName="tester")["AccessKey"]
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_v4_signatures_still_validate_through_the_proxy(moto_with_auth):
    import boto3
    from botocore.exceptions import ClientError

    endpoint, ak, sk = moto_with_auth
    with FaultProxy(endpoint) as proxy:
        def client(secret):
            return boto3.client("s3", endpoint_url=proxy.endpoint, region_name="us-east-1",
                                aws_access_key_id=ak, aws_secret_access_key=secret)

        s3 = client(sk)
        bucket = "signed-" + uuid.uuid4().hex[:8]
        s3.create_bucket(Bucket=bucket)
        body = os.urandom(100_000)
        s3.put_object(Bucket=bucket, Key="d/x.bin", Body=body)
        assert s3.get_object(Bucket=bucket, Key="d/x.bin")["Body"].read() == body
        assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["d/x.bin"]
        # The server does check: a wrong secret is refused through the proxy too.
        with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            client("wrong-secret").list_objects_v2(Bucket=bucket)
        assert {op for op, _key, _fault in proxy.requests} >= {"PUT", "GET", "LIST"}


# --------------------------------------------------------------------------- fewer faults than retries

def arm(proxy, action, ops, times, **options):
    for op in ops:
        proxy.add(action, op, times=times, **options)
    return len(ops) * times


@pytest.mark.parametrize("action", ["503", "drop"])
def test_every_call_survives_faults_fewer_than_retries(tmp_path, faulty_s3, no_sleep, action):
    proxy, s3, bucket = faulty_s3.proxy, faulty_s3.client, faulty_s3.name
    url = "obs://%s/run/data" % bucket
    src = make_tree(tmp_path / "src", FILES)
    armed = 0

    armed += arm(proxy, action, ["LIST", "PUT"], 2)
    up = sync(str(src), url, retries=3)
    assert up.files == 3 and remote_tree(s3, bucket, "run/data/") == FILES

    # A listing cut inside its XML: the SDK reports a 200 with no body; it must not pass for
    # an empty (or, for a mirror, a shorter) listing.
    armed += arm(proxy, action, ["LIST"], 3, **({"after_bytes": 400} if action == "drop" else {}))
    assert obs_sync.list_files(url, retries=3) == {
        rel: obs_sync.Entry(len(data), obs_sync.list_files(url)[rel].mtime)
        for rel, data in FILES.items()}

    armed += arm(proxy, action, ["HEAD", "LIST"], 2)
    assert obs_sync.exists(url + "/a.txt") and obs_sync.exists(url)  # HEAD, then HEAD + LIST

    # A GET cut off after part of the body is the nastiest drop: it must not leave a short file.
    armed += arm(proxy, action, ["LIST", "GET"], 1)
    armed += arm(proxy, action, ["GET"], 2, key=r"big\.bin$",
                 **({"after_bytes": 5000} if action == "drop" else {}))
    down = sync(url, str(tmp_path / "down"), retries=3)
    assert down.files == 3 and read_tree(tmp_path / "down") == FILES

    # Cut inside the answer's head: the SDK reports a 200 and an empty file.
    armed += arm(proxy, action, ["HEAD", "GET"], 1,
                 **({"after_bytes": 100} if action == "drop" else {}))
    one = sync(url + "/sub/b.bin", str(tmp_path / "one.bin"))
    assert one.files == 1 and (tmp_path / "one.bin").read_bytes() == FILES["sub/b.bin"]

    armed += arm(proxy, action, ["DELETE"], 3)
    obs_sync.remove(url + "/a.txt", retries=3)
    assert "a.txt" not in remote_tree(s3, bucket, "run/data/")

    assert all(rule.left == 0 for rule in proxy.rules), proxy.state()
    assert sum(proxy.injected.values()) == armed
    assert len(no_sleep) == armed  # each fault cost exactly one retry
    assert set(key.split()[1] for key in proxy.injected) == set(OPS)


def test_sync_upload_and_mirror_through_faults(tmp_path, faulty_s3, no_sleep):
    """Mirror mode on a remote destination through 503s and drops on every operation."""
    proxy, s3, bucket = faulty_s3.proxy, faulty_s3.client, faulty_s3.name
    url = "obs://%s/mirror" % bucket
    src = make_tree(tmp_path / "src", FILES)
    sync(str(src), url)
    (src / "a.txt").unlink()
    (src / "new.txt").write_bytes(b"new")
    arm(proxy, "503", OPS, 1)
    arm(proxy, "drop", ["LIST", "PUT", "DELETE"], 1)
    report = sync(str(src), url, delete=True, retries=2)
    assert (report.files, report.deleted) == (1, 1)
    assert remote_tree(s3, bucket, "mirror/") == read_tree(src)


def test_slow_endpoint_times_out_and_is_retried(tmp_path, faulty_s3, no_sleep, monkeypatch):
    monkeypatch.setenv("OBS_SYNC_TIMEOUT", "0.5")
    s3, bucket = faulty_s3.client, faulty_s3.name
    s3.put_object(Bucket=bucket, Key="slow/x.bin", Body=b"payload")
    faulty_s3.proxy.add("delay", "GET", times=1, seconds=5)
    started = time.monotonic()
    report = sync("obs://%s/slow/x.bin" % bucket, str(tmp_path / "x.bin"))
    assert report.files == 1 and (tmp_path / "x.bin").read_bytes() == b"payload"
    assert time.monotonic() - started < 4 and len(no_sleep) == 1  # gave up on the 5 s stall


# --------------------------------------------------------------------------- more faults than retries

@pytest.mark.parametrize("op", OPS)
def test_faults_beyond_retries_give_one_clear_line(tmp_path, faulty_s3, no_sleep, caplog, op):
    s3, bucket, proxy = faulty_s3.client, faulty_s3.name, faulty_s3.proxy
    s3.put_object(Bucket=bucket, Key="d/x.bin", Body=b"x" * 100)
    make_tree(tmp_path / "up", {"y.bin": b"y"})
    calls = {
        "LIST": (lambda: obs_sync.list_files("obs://%s/d" % bucket, retries=2), "list"),
        "HEAD": (lambda: obs_sync.exists("obs://%s/d/x.bin" % bucket, retries=2), "stat"),
        "GET": (lambda: sync("obs://%s/d" % bucket, str(tmp_path / "down"), retries=2), "get"),
        "PUT": (lambda: sync(str(tmp_path / "up"), "obs://%s/d" % bucket, retries=2), "put"),
        "DELETE": (lambda: obs_sync.remove("obs://%s/d/x.bin" % bucket, retries=2), "remove"),
    }
    call, verb = calls[op]
    proxy.add("503", op, times=2)
    proxy.add("drop", op, times=10)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransferError) as info:
        call()
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert_one_clear_line(message, url="obs://%s/d" % bucket, endpoint=faulty_s3.endpoint,
                          secret=faulty_s3.secret_key)
    assert message.startswith(verb + " obs://") or message.startswith(verb + " /"), message
    assert "failed after 3 attempts" in message and len(no_sleep) == 2
    assert faulty_s3.secret_key not in caplog.text


def test_endpoint_down_is_one_line_naming_it_quickly(tmp_path, s3_bucket, no_sleep, caplog,
                                                     monkeypatch, capsys):
    endpoint = "http://127.0.0.1:%d" % free_port()  # nothing listens there
    monkeypatch.setenv("S3_ENDPOINT", endpoint)
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        sync("obs://%s/data" % s3_bucket.name, str(tmp_path / "d"))
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert isinstance(info.value, TransferError)
    assert_one_clear_line(message, url="obs://%s/data" % s3_bucket.name, endpoint=endpoint,
                          secret=s3_bucket.secret_key)
    assert "failed after 4 attempts" in message and "Connection refused" in message
    assert s3_bucket.secret_key not in caplog.text

    # The CLI, like the boot file, prints it as one 'error:' line and exits non-zero.
    assert obs_sync.main(["obs://%s/data" % s3_bucket.name, str(tmp_path / "d"),
                          "--retries", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and endpoint in err[0]
    assert err[0].startswith("error: stat obs://%s/data: failed after 1 attempt (" % s3_bucket.name)


def test_cli_subprocess_under_faults_prints_one_line(tmp_path, faulty_s3):
    """A job's view: a separate process, the proxy's env vars, rules set over HTTP."""
    bucket = faulty_s3.name
    faulty_s3.client.put_object(Bucket=bucket, Key="d/x.bin", Body=b"x")
    add_rule(faulty_s3.env["S3_ENDPOINT"], "503", method="LIST", times=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OBS_", "S3_", "AWS_"))}
    env.update(faulty_s3.env)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "obs_sync.py"),
                           "obs://%s/d" % bucket, str(tmp_path / "d"), "--retries", "1"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # One back-off warning, then the error: no traceback, no secret.
    assert lines[-1].startswith("error: list obs://%s/d/: failed after 2 attempts" % bucket)
    assert all("Traceback" not in line for line in lines) and len(lines) <= 2, lines
    assert faulty_s3.endpoint in lines[-1] and faulty_s3.secret_key not in proc.stderr
    assert fault_state(faulty_s3.endpoint)["injected"] == {"503 LIST": 2}


# --------------------------------------------------------------------------- credentials

def test_mask_credentials():
    mask = obs_sync.mask_credentials
    assert mask("https://AK:SK@obs.example.com:443/x") == "https://***@obs.example.com:443/x"
    assert mask("s3://AKID:se/cr+et@bucket/key") == "s3://***@bucket/key"
    assert mask("http://token@host/p") == "http://***@host/p"
    assert mask("https://h/o?AccessKeyId=AK&Expires=9&Signature=s%2Fg&x-obs-security-token=t") \
        == "https://h/o?AccessKeyId=***&Expires=9&Signature=***&x-obs-security-token=***"
    assert mask("https://h/o?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff&max-keys=3") == \
        "https://h/o?X-Amz-Credential=***&X-Amz-Signature=***&max-keys=3"
    for plain in ("obs://bucket/a@b.txt", "http://127.0.0.1:9000", "/cache/data/x.png",
                  "obs://b/k?versionId=3"):
        assert mask(plain) == plain


def test_credentials_in_urls_never_reach_messages(tmp_path, s3_bucket, no_sleep, caplog,
                                                  monkeypatch):
    secret = s3_bucket.secret_key
    with pytest.raises(UserError) as info:
        sync("s3://AKID:%s@%s/key" % (secret, s3_bucket.name), str(tmp_path / "x"))
    assert secret not in str(info.value) and "s3://***@%s/key" % s3_bucket.name in str(info.value)

    # Pasted into the endpoint: masked in the warning, and the SDK still gets a usable host.
    port = free_port()
    monkeypatch.setenv("S3_ENDPOINT", "http://AKID:%s@127.0.0.1:%d" % (secret, port))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransferError) as info:
        obs_sync.list_files("obs://%s/data" % s3_bucket.name, retries=1)
    assert "127.0.0.1:%d" % port in str(info.value) and secret not in str(info.value)
    assert "http://***@127.0.0.1:%d" % port in caplog.text and secret not in caplog.text

    # A signed URL in what a retried call names is masked in the log line and in the error.
    def fails():
        raise ConnectionResetError("reset")

    with pytest.raises(TransferError) as info:
        obs_sync.with_retries("get https://h/o?AccessKeyId=AK1&Signature=S3CR3T", fails, 1)
    assert "S3CR3T" not in str(info.value) and "AK1" not in str(info.value)
    assert "S3CR3T" not in caplog.text and "Signature=***" in caplog.text
