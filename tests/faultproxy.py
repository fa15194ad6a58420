"""A fault-injecting HTTP/1.1 proxy for storage tests.

``FaultProxy(upstream)`` listens on 127.0.0.1 (a free port) and forwards every request to
``upstream`` (moto_server) byte for byte: request and response heads unchanged (the Host header
too, so V4 signatures still validate), bodies by their framing (Content-Length, chunked, or up
to the close). Rules, changeable while it runs, make it misbehave instead:

* ``503``   answer ``503 Service Unavailable`` with an S3-style XML error body;
* ``drop``  close the connection without an answer, or, with ``after_bytes=N``, forward the
  request and close after relaying the first N bytes of the response (a cut-off download);
* ``delay`` wait ``seconds`` and then forward (a slow or hanging store).

A rule matches a method — GET (an object), HEAD, PUT, POST, DELETE, or LIST (a GET on a bucket
with no key) — or any method when none is given, and optionally a regex searched in the object
key; it fires for the next ``times`` matching requests. The first rule with firings left wins.
``injected`` counts what fired ("503 LIST": 2, ...); ``requests`` records every request seen.

From another process (a job started as a subprocess) the same control works over HTTP on the
proxy's own port, a path no S3 request uses::

    POST   /__faults__   {"action": "503", "method": "LIST", "times": 2}   add a rule
    GET    /__faults__   {"rules": [...], "injected": {...}, "requests": N}
    DELETE /__faults__   remove every rule (the counts stay)

``add_rule(endpoint, ...)`` and ``fault_state(endpoint)`` below do that with urllib.
``python tests/faultproxy.py UPSTREAM [--port N]`` runs one by hand.
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import socket
import socketserver
import threading
import time
import urllib.parse
import urllib.request
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

CONTROL_PATH = "/__faults__"
ACTIONS = ("503", "drop", "delay")
METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "LIST")
_MAX_LINE = 65536
_BLOCK = 65536


class Rule:
    """One fault: what to do, to which requests, how many more times."""

    def __init__(self, action: str, method: Union[None, str, Sequence[str]] = None,
                 key: Optional[str] = None, times: int = 1, seconds: float = 0.0,
                 after_bytes: Optional[int] = None):
        action = str(action)
        if action not in ACTIONS:
            raise ValueError("action %r: use one of %s" % (action, ", ".join(ACTIONS)))
        methods = (method,) if isinstance(method, str) else tuple(method or ())
        methods = tuple(m.upper() for m in methods if m not in ("*", ""))
        for m in methods:
            if m not in METHODS:
                raise ValueError("method %r: use one of %s" % (m, ", ".join(METHODS)))
        self.action, self.methods, self.key = action, methods, key
        self._key_re = re.compile(key) if key else None
        self.left, self.seconds = int(times), float(seconds)
        self.after_bytes = None if after_bytes is None else int(after_bytes)
        self.fired = 0

    def matches(self, op: str, key: str) -> bool:
        return (self.left > 0 and (not self.methods or op in self.methods)
                and (self._key_re is None or bool(self._key_re.search(key))))

    def as_dict(self) -> dict:
        return {"action": self.action, "method": list(self.methods), "key": self.key,
                "left": self.left, "fired": self.fired, "seconds": self.seconds,
                "after_bytes": self.after_bytes}


class _Cut(Exception):
    """The drop rule's byte budget is spent: close the client connection now."""


class FaultProxy:
    def __init__(self, upstream: str, *, port: int = 0, upstream_timeout: float = 60.0):
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("upstream must be http://host:port, got %r" % upstream)
        self.upstream: Tuple[str, int] = (parts.hostname, parts.port or 80)
        self.upstream_timeout = upstream_timeout
        self.rules: List[Rule] = []
        self.injected: Dict[str, int] = collections.Counter()
        self.requests: List[Tuple[str, str, Optional[str]]] = []  # (op, key, action fired)
        self._lock = threading.Lock()
        self._clients: set = set()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self.endpoint = "http://127.0.0.1:%d" % self.port
        # A short poll: close() waits for the serving loop to notice.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name="faultproxy", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- control (in-process)

    def add(self, action: str, method=None, key: Optional[str] = None, times: int = 1,
            **options) -> Rule:
        rule = Rule(action, method, key, times, **options)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def state(self) -> dict:
        with self._lock:
            return {"rules": [r.as_dict() for r in self.rules], "injected": dict(self.injected),
                    "requests": len(self.requests)}

    def _take(self, op: str, key: str) -> Optional[Rule]:
        """The rule that fires for this request (its count taken), or None; records it."""
        with self._lock:
            rule = next((r for r in self.rules if r.matches(op, key)), None)
            if rule is not None:
                rule.left -= 1
                rule.fired += 1
                self.injected["%s %s" % (rule.action, op)] += 1
            self.requests.append((op, key, rule.action if rule else None))
            return rule

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            clients = list(self._clients)
        for sock in clients:  # a pooled client connection would keep its thread waiting
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    proxy: FaultProxy


# --------------------------------------------------------------------------- HTTP framing

def _read_head(reader) -> bytes:
    """The request/status line and headers, up to and including the blank line; b'' at EOF."""
    lines = []
    while True:
        line = reader.readline(_MAX_LINE)
        if not line:
            if lines:
                raise EOFError("connection closed inside a message head")
            return b""
        if not lines and line in (b"\r\n", b"\n"):
            continue  # tolerated before a request line (RFC 9112 2.2)
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _headers(head: bytes) -> Tuple[List[bytes], Dict[str, str]]:
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return lines[0].split(b" ", 2), fields


def _copy_exact(reader, write: Callable[[bytes], None], n: int) -> None:
    while n > 0:
        block = reader.read(min(n, _BLOCK))
        if not block:
            raise EOFError("connection closed with %d body bytes to come" % n)
        write(block)
        n -= len(block)


def _copy_chunked(reader, write: Callable[[bytes], None]) -> None:
    """Chunk-size lines, chunks, the last chunk and any trailers, all as they came."""
    while True:
        line = reader.readline(_MAX_LINE)
        if not line:
            raise EOFError("connection closed inside a chunked body")
        write(line)
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            break
        _copy_exact(reader, write, size + 2)  # the chunk and its CRLF
    while True:
        line = reader.readline(_MAX_LINE)
        if not line:
            raise EOFError("connection closed inside chunked trailers")
        write(line)
        if line in (b"\r\n", b"\n"):
            return


def _copy_body(reader, write: Callable[[bytes], None], fields: Dict[str, str]) -> None:
    """Copy a body framed by ``fields`` (a request with neither header has none)."""
    if "chunked" in fields.get("transfer-encoding", "").lower():
        _copy_chunked(reader, write)
    elif "content-length" in fields:
        _copy_exact(reader, write, int(fields["content-length"]))


def _copy_to_eof(reader, write: Callable[[bytes], None]) -> None:
    while True:
        block = reader.read1(_BLOCK) if hasattr(reader, "read1") else reader.read(_BLOCK)
        if not block:
            return
        write(block)


def _error_503(op: str, resource: str, head_only: bool, request_id: int) -> bytes:
    body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>ServiceUnavailable</Code>"
            "<Message>Please reduce your request rate. (injected by faultproxy on %s)</Message>"
            "<Resource>%s</Resource><RequestId>faultproxy-%d</RequestId></Error>"
            % (op, resource.replace("&", "&amp;").replace("<", "&lt;"), request_id)).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
            "Content-Length: %d\r\nx-amz-request-id: faultproxy-%d\r\nConnection: close\r\n\r\n"
            % (len(body), request_id)).encode()
    return head if head_only else head + body


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        proxy = self.server.proxy
        with proxy._lock:
            proxy._clients.add(self.request)
        self.request.settimeout(proxy.upstream_timeout)
        reader = self.request.makefile("rb")
        try:
            while self._one(proxy, reader):
                pass
        except (OSError, EOFError, ValueError, _Cut):
            pass  # the client went away, or a drop rule cut the connection
        finally:
            reader.close()
            with proxy._lock:
                proxy._clients.discard(self.request)

    def _one(self, proxy: FaultProxy, reader) -> bool:
        """Serve one request; True to keep the connection for another."""
        head = _read_head(reader)
        if not head:
            return False
        (method, target, *rest), fields = _headers(head)
        method = method.decode("latin-1").upper()
        path = urllib.parse.unquote(urllib.parse.urlsplit(target.decode("latin-1")).path)
        if path == CONTROL_PATH:
            return self._control(proxy, reader, method, fields)
        bucket, _, key = path.lstrip("/").partition("/")  # path-style addressing
        op = "LIST" if method == "GET" and bucket and not key else method
        rule = proxy._take(op, key)
        client = self.request
        if rule is not None and rule.action == "delay":
            time.sleep(rule.seconds)
            rule = None
        if rule is not None and rule.after_bytes is None:  # 503, or drop without an answer
            if "100-continue" not in fields.get("expect", "").lower():
                _copy_body(reader, lambda block: None, fields)
            if rule.action == "503":
                client.sendall(_error_503(op, path, method == "HEAD", len(proxy.requests)))
            return False
        return self._forward(proxy, reader, head, method, fields,
                             None if rule is None else rule.after_bytes)

    def _forward(self, proxy: FaultProxy, reader, head: bytes, method: str,
                 fields: Dict[str, str], budget: Optional[int]) -> bool:
        client = self.request
        sent = [0]

        def to_client(data: bytes) -> None:
            if budget is not None and sent[0] + len(data) >= budget:
                client.sendall(data[:budget - sent[0]])
                raise _Cut()
            client.sendall(data)
            sent[0] += len(data)

        expect = "100-continue" in fields.get("expect", "").lower()
        with socket.create_connection(proxy.upstream, timeout=proxy.upstream_timeout) as up:
            up.sendall(head)
            if expect:
                # The client waits for this before sending its body; upstream's own interim
                # answer is swallowed below so the client does not see two.
                to_client(b"HTTP/1.1 100 Continue\r\n\r\n")
            _copy_body(reader, up.sendall, fields)
            up_reader = up.makefile("rb")
            while True:
                resp = _read_head(up_reader)
                if not resp:
                    return False  # upstream closed without an answer: so do we
                (_version, status, *_), resp_fields = _headers(resp)
                if not 100 <= int(status) < 200:
                    break
                if not expect:
                    to_client(resp)
            to_client(resp)
            status_code = int(status)
            if method == "HEAD" or status_code in (204, 304):
                pass
            elif ("chunked" in resp_fields.get("transfer-encoding", "").lower()
                  or "content-length" in resp_fields):
                _copy_body(up_reader, to_client, resp_fields)
            else:
                _copy_to_eof(up_reader, to_client)
                return False
        closing = ("close" in fields.get("connection", "").lower()
                   or "close" in resp_fields.get("connection", "").lower()
                   or head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0"))
        return not closing

    def _control(self, proxy: FaultProxy, reader, method: str, fields: Dict[str, str]) -> bool:
        body = bytearray()
        _copy_body(reader, body.extend, fields)
        status = "200 OK"
        try:
            if method == "POST":
                spec = json.loads(bytes(body) or b"{}")
                for one in spec if isinstance(spec, list) else [spec]:
                    proxy.add(**one)
            elif method == "DELETE":
                proxy.clear()
            elif method != "GET":
                raise ValueError("use GET, POST or DELETE on %s" % CONTROL_PATH)
            answer = proxy.state()
        except (ValueError, TypeError) as e:
            status, answer = "400 Bad Request", {"error": str(e)}
        data = json.dumps(answer).encode()
        self.request.sendall(("HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                              "Content-Length: %d\r\n\r\n" % (status, len(data))).encode() + data)
        return "close" not in fields.get("connection", "").lower()


# --------------------------------------------------------------------------- control from afar

def _control_request(endpoint: str, method: str, payload=None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(endpoint.rstrip("/") + CONTROL_PATH, data=data,
                                     method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def add_rule(endpoint: str, action: str, method=None, key: Optional[str] = None,
             times: int = 1, **options) -> dict:
    """Add a rule to the proxy at ``endpoint`` (e.g. from a job's subprocess); its state."""
    return _control_request(endpoint, "POST", dict(options, action=action, method=method,
                                                   key=key, times=times))


def clear_rules(endpoint: str) -> dict:
    return _control_request(endpoint, "DELETE")


def fault_state(endpoint: str) -> dict:
    return _control_request(endpoint, "GET")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Fault-injecting proxy in front of an S3 "
                                                 "endpoint; control it at /__faults__.")
    parser.add_argument("upstream", help="http://host:port of the real endpoint")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with FaultProxy(args.upstream, port=args.port) as running:
        print(running.endpoint, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
