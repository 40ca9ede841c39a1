"""Explorer server hardening: bursts, stalled clients, JSON depth, strict types, Host / Origin
checks, size limits, bad input answered 400 under concurrency, path traversal, warnings."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from saeprobe.explorer import SingleSession, planted_retrieval, serve_in_thread
from saeprobe.explorer.server import MAX_JSON_DEPTH, json_depth, make_server
from saeprobe.testing.run import build_tiny_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted():
    """The planted retrieval problem of this module (``session`` is built on it)."""
    return planted_retrieval(n_pairs=24, seed=2)


@pytest.fixture()
def server(session):
    srv, url = serve_in_thread(session, timeout=2.0, max_threads=8)
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_run")


def raw(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send ``request`` as is on a fresh connection; ``(status, headers, body)``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                n = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                if n and len(body) >= int(n[0].split(b":")[1]):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower().decode(): v.strip().decode()
        for k, _, v in (ln.partition(b":") for ln in lines[1:])
    }
    return status, headers, body


def req(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    host: str | None = None,
) -> tuple[int, dict, bytes]:
    h = {"Host": host if host is not None else f"127.0.0.1:{port}", "Connection": "close"}
    if body is not None:
        h["Content-Type"] = "application/json"
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items() if v is not None]
    return raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))


def post(port: int, path: str, obj, **kw) -> tuple[int, dict]:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    st, _, data = req(port, "POST", path, body, **kw)
    return st, json.loads(data) if data else {}


def assert_clean_error(status: int, body: bytes, want: int = 400) -> str:
    assert status == want, (status, body[:300])
    msg = json.loads(body)["error"]
    assert isinstance(msg, str) and msg and "\n" not in msg
    assert "Traceback" not in msg and 'File "' not in msg
    return msg


# ------------------------------------------------------------------ connections
def test_burst_of_connections_all_succeed(session):
    """64 connections arrive while both serving threads are held by stalled clients: the
    listen backlog queues them (each connect completes at once, no SYN retry) and every one is
    answered once a thread frees up."""
    srv, _ = serve_in_thread(session, timeout=1.0, max_threads=2)
    port = srv.server_port
    n = 64
    try:
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        time.sleep(
            0.2
        )  # two handler threads wait on the stalled clients, the accept loop on a slot
        t0 = time.perf_counter()
        socks = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(n)]
        connect_s = time.perf_counter() - t0
        assert connect_s < 0.9, f"connections were not queued in the backlog ({connect_s:.2f}s)"
        request = f"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        barrier = threading.Barrier(n)

        def one(s: socket.socket) -> int:
            barrier.wait()
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            return int(data.split()[1])

        with ThreadPoolExecutor(n) as pool:
            statuses = list(pool.map(one, socks))
        assert statuses == [200] * n
        for s in stalled:
            s.close()
    finally:
        srv.shutdown()
        srv.server_close()


def test_stalled_client_is_dropped_and_others_are_served(session):
    srv, _ = serve_in_thread(session, timeout=0.5, max_threads=2)
    port = srv.server_port
    try:
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        stalled[0].sendall(b"GET /api/info HTT")  # a request line that never ends
        # (the second sends nothing at all); both hold the only two serving threads
        time.sleep(0.1)
        t0 = time.perf_counter()
        st, _, _ = req(port, "GET", "/api/info")  # served once a stalled thread times out
        assert st == 200
        for s in stalled:
            assert s.recv(1024) == b""  # closed by the server
            s.close()
        assert time.perf_counter() - t0 < 5
        # an idle keep-alive connection is closed after the timeout too
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET /api/run HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            first = s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            t1 = time.perf_counter()
            while s.recv(65536):
                pass
            assert time.perf_counter() - t1 < 3
    finally:
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------ bodies
def test_deep_json_answers_400(server):
    port = server.server_port
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        st, _, data = req(port, "POST", "/api/evaluate", body)
        assert "nested deeper" in assert_clean_error(st, data)
    ok = json.dumps({"ablate": [], "pad": [[[[1]]]], "s": "[[[[[[[[[[[[[" * 20}).encode()
    st, _, _ = req(port, "POST", "/api/evaluate", ok)
    assert st == 200  # brackets inside strings do not count
    assert json_depth(b'{"a": [1, {"b": "]]]]"}]}') == 3
    assert json_depth(b"[" * (MAX_JSON_DEPTH + 1)) == MAX_JSON_DEPTH + 1


@pytest.mark.parametrize(
    "body, words",
    [
        ({"ablate": [True]}, "integer"),
        ({"ablate": [1.5]}, "integer"),
        ({"ablate": ["3"]}, "integer"),
        ({"ablate": "3"}, "list"),
        ({"ablate": 3}, "list"),
        ({"ablate": {"1": 2}}, "list"),
        ({"ablate": [10**9]}, "must lie in"),
        ({"ablate": [-1]}, "must lie in"),
        ({"alpha": "0.1", "whiten": "realign"}, "number"),
        ({"alpha": True, "whiten": "realign"}, "number"),
        ({"alpha": 3, "whiten": "realign"}, "must lie in"),
        ({"op": "erase"}, "unknown ablation op"),
        ({"op": 1}, "unknown ablation op"),
        ({"sides": "left"}, "unknown sides"),
        ({"whiten": "zca"}, "unknown whitening"),
        ({"model": "../etc"}, "model"),
        ({"model": "nope"}, "unknown model"),
        ({"task": "nope"}, "no task"),
    ],
)
def test_bad_settings_answer_400(server, body, words):
    st, res = post(server.server_port, "/api/evaluate", body)
    assert st == 400 and words in res["error"], res


def test_bad_json_and_types(server):
    port = server.server_port
    for body, words in (
        (b"{not json", "not JSON"),
        (b'{"alpha": NaN, "whiten": "realign"}', "not JSON"),
        (b'{"alpha": Infinity}', "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"x"', "JSON object"),
        (b"\xff\xfe{}", "not JSON"),
    ):
        st, _, data = req(port, "POST", "/api/evaluate", body)
        assert words in assert_clean_error(st, data), body
    st, _, data = req(port, "POST", "/api/sweep", json.dumps({"n_max": -1}).encode())
    assert "n_max" in assert_clean_error(st, data)
    st, _, data = req(port, "POST", "/api/sweep", json.dumps({"steps": [1.5]}).encode())
    assert "integer" in assert_clean_error(st, data)
    st, _, data = req(port, "POST", "/api/evaluate", b"{}", headers={"Content-Type": "text/plain"})
    assert_clean_error(st, data, 415)


def test_bad_query_parameters(server):
    port = server.server_port
    for path, words in (
        ("/api/query/abc", "integer"),
        ("/api/query/-1", "integer"),
        ("/api/query/99999", "outside"),
        ("/api/query/0?ablate=1.5", "feature ids"),
        ("/api/query/0?ablate=true", "feature ids"),
        ("/api/query/0?ablate=99999", "must lie in"),
        ("/api/query/0?alpha=nan&whiten=realign", "alpha"),
        ("/api/query/0?alpha=2&whiten=realign", "alpha"),
        ("/api/query/0?top=0", "top_n"),
        ("/api/query/0?op=a&op=b", "once"),
        ("/api/features?limit=x", "limit"),
        ("/api/features?sort=secret", "sort key"),
        ("/api/card/99999", "outside"),
        ("/api/info?model=..%2F..", "model"),
        ("/api/info?" + "&".join(f"k{i}=1" for i in range(100)), "fields"),
    ):
        st, _, data = req(port, "GET", path)
        msg = assert_clean_error(st, data)
        assert words in msg, (path, msg)


def _post_evaluate_headers(port: int, headers: dict[str, str]):
    """``POST /api/evaluate`` without a body, as JSON with the extra ``headers``."""
    return req(
        port, "POST", "/api/evaluate", None, headers={"Content-Type": "application/json", **headers}
    )


def test_size_limits(server):
    port = server.server_port
    st, h, data = _post_evaluate_headers(port, {"Content-Length": str(2 << 20)})
    assert "exceeds" in assert_clean_error(st, data, 413)
    assert h.get("connection") == "close"
    st, _, data = req(port, "GET", "/api/features?q=" + "x" * 10_000)
    assert_clean_error(st, data, 414)
    st, _, data = _post_evaluate_headers(port, {"Transfer-Encoding": "chunked"})
    assert_clean_error(st, data, 411)
    st, _, data = _post_evaluate_headers(port, {"Content-Length": "-5"})
    assert_clean_error(st, data, 400)
    big_header = {"X-Big": "y" * 70_000}
    st, _, _ = req(port, "GET", "/api/info", headers=big_header)
    assert st in (400, 431)


# ------------------------------------------------------------------ DNS rebinding
def test_host_and_origin_checks(server):
    port = server.server_port
    for host in (
        "evil.example",
        f"evil.example:{port}",
        f"127.0.0.1:{port + 1}",
        "",
        "127.0.0.1.evil.example",
    ):
        st, _, data = req(port, "GET", "/api/info", host=host)
        assert_clean_error(st, data, 421)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert req(port, "GET", "/api/info", host=host)[0] == 200
    st, _ = post(port, "/api/evaluate", {}, headers={"Origin": "http://evil.example"})
    assert st == 403
    st, _ = post(port, "/api/evaluate", {}, headers={"Origin": f"http://127.0.0.1:{port + 1}"})
    assert st == 403
    st, _ = post(port, "/api/evaluate", {}, headers={"Origin": f"http://127.0.0.1:{port}"})
    assert st == 200


def test_other_bind_address_warns_and_accepts_any_host(session, caplog):
    with caplog.at_level(logging.WARNING, logger="saeprobe.explorer.server"):
        srv = make_server(session, "0.0.0.0", 0)
    try:
        assert any("exposes it beyond this machine" in r.getMessage() for r in caplog.records)
        assert not srv.loopback and srv.host_ok("my-laptop.lan", None)
    finally:
        srv.server_close()
    srv = make_server(session, "127.0.0.1", 0)
    try:
        assert srv.loopback and not srv.host_ok("my-laptop.lan", None)
    finally:
        srv.server_close()


# ------------------------------------------------------------------ keep serving
def test_bad_requests_under_concurrency_keep_the_server_up(server, session, planted):
    port = server.server_port
    want = session.evaluate(planted.distractors).metrics["R@1"]
    good = json.dumps({"ablate": planted.distractors}).encode()
    bads = [
        b"{not json",
        b"[" * 5000 + b"]" * 5000,
        json.dumps({"ablate": [True]}).encode(),
        json.dumps({"ablate": [10**7]}).encode(),
        json.dumps({"alpha": 7, "whiten": "realign"}).encode(),
    ]

    def one(i: int) -> tuple[bool, int, bytes]:
        if i % 2 == 0:
            st, _, data = req(port, "POST", "/api/evaluate", good)
            return True, st, data
        st, _, data = req(port, "POST", "/api/evaluate", bads[i % len(bads)])
        return False, st, data

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(80)))
    for is_good, st, data in results:
        if is_good:
            assert st == 200 and json.loads(data)["metrics"]["R@1"] == pytest.approx(want)
        else:
            assert_clean_error(st, data)
    assert req(port, "GET", "/api/info")[0] == 200


def test_unexpected_failure_answers_500_without_details(session):
    class Broken(SingleSession):
        def scatter(self, model=None, task=None):
            raise RuntimeError("secret internal detail /home/me/file.py")

    srv, _ = serve_in_thread(Broken(session))
    try:
        st, _, data = req(srv.server_port, "GET", "/api/scatter")
        msg = assert_clean_error(st, data, 500)
        assert "secret" not in msg and "file.py" not in msg
        assert req(srv.server_port, "GET", "/api/info")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------ path traversal
TRAVERSALS = [
    "/static/../session.py",
    "/static/..%2fsession.py",
    "/static/%2e%2e/server.py",
    "/static/%2e%2e%2fserver.py",
    "/static//etc/passwd",
    "/static/app.js%00.png",
    "/static/./app.js/../../server.py",
    "/../../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "//etc/passwd",
    "/thumbs/photos/../../run.json",
    "/thumbs/photos/..%2f..%2frun.json",
    "/thumbs/%2e%2e/0.png",
    "/thumbs/../items/photos/thumbs/000000.png",
    "/thumbs/photos/0.png/../../../run.json",
    "/thumbs/photos/-1.png",
    "/thumbs/photos/99999.png",
    "/thumbs/secret/0.png",
    "/thumbs/photos/0.png%00",
    "/items/photos/thumbs/000000.png",
    "/models/tiny-qwen/model.json",
    "/run.json",
    "/api/card/..%2f..%2frun.json",
    "/api/query/../../run.json",
]


@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_no_path_traversal(tiny_run):
    from saeprobe.explorer import RunExplorer

    secret = tiny_run / "items" / "secret" / "thumbs"  # a folder the run does not list
    secret.mkdir(parents=True, exist_ok=True)
    (secret / "000000.png").write_bytes(b"\x89PNG secret")
    app = RunExplorer(tiny_run)
    srv, _ = serve_in_thread(app)
    port = srv.server_port
    try:
        st, h, data = req(port, "GET", "/thumbs/photos/0.png")
        assert st == 200 and h["content-type"] == "image/png" and data.startswith(b"\x89PNG")
        for path in TRAVERSALS:
            st, _, data = req(port, "GET", path)
            assert st in (400, 404), (path, st)
            assert (
                b"saeprobe.run" not in data and b"import " not in data and b"secret" not in data
            ), path
            assert b"root:" not in data and b"\x89PNG" not in data, path
    finally:
        srv.shutdown()
        srv.server_close()
        shutil.rmtree(secret.parent)
