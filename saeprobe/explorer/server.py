"""A small local HTTP server for the explorer (standard library only, no network access).

Routes are in :mod:`.routes`. Hardening, all of it tested:

* binds ``127.0.0.1`` by default; another address logs a warning;
* a listen backlog of :data:`BACKLOG` and at most ``max_threads`` requests served at once
  (the others wait in the backlog), so a burst of connections is queued, not refused;
* a socket timeout per connection: a stalled client holds its thread ``timeout`` seconds;
* DNS rebinding: on a loopback address the ``Host`` header must name a loopback host (else
  421) and an ``Origin`` header, when sent, must be the page's own origin (else 403); POSTs
  must be ``application/json`` (no cross-site form posts);
* limits: URL :data:`MAX_URL` bytes (414), body :data:`MAX_BODY` bytes (413), JSON nesting
  :data:`MAX_JSON_DEPTH` (400);
* bad input (malformed JSON, unknown ids, out-of-range values, wrong types) answers 400
  with ``{"error": "<one line>"}``; an unexpected failure answers 500 with a generic line
  (the traceback goes to the log, never to the client); the server keeps serving.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import mimetypes
import re
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from saeprobe.errors import SaeprobeError

from .app import ExplorerApp, SingleSession
from .routes import (
    STATIC_DIR,
    STATIC_FILES,
    NotFound,
    Reply,
    handle_get,
    handle_post,
    plotly_js_path,
)
from .session import ExplorerSession

logger = logging.getLogger(__name__)

__all__ = [
    "BACKLOG",
    "MAX_BODY",
    "MAX_JSON_DEPTH",
    "MAX_URL",
    "STATIC_DIR",
    "STATIC_FILES",
    "ExplorerServer",
    "is_loopback",
    "json_depth",
    "make_server",
    "plotly_js_path",
    "serve_in_thread",
]

BACKLOG = 128
MAX_BODY = 1 << 20  # bytes
MAX_URL = 8192  # bytes of the request target
MAX_JSON_DEPTH = 64
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'self' http://localhost:* http://127.0.0.1:* https://localhost:* vscode-webview:"
)


class _Refused(Exception):
    """A request refused before routing (status and one-line message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[`` / ``{`` in a JSON text (strings ignored), in linear time."""
    text = np.frombuffer(_STRINGS.sub(b'""', raw), dtype=np.uint8)
    step = np.isin(text, (ord("["), ord("{"))).astype(np.int32) - np.isin(
        text, (ord("]"), ord("}"))
    ).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def _reject_constant(name: str) -> None:
    raise ValueError(f"request body holds {name}, which is not JSON; send finite numbers")


def _split_host(value: str) -> tuple[str, int | None]:
    m = re.match(r"^\[([0-9a-fA-F:.]+)\](?::([0-9]{1,5}))?$|^([^:\[\]]+)(?::([0-9]{1,5}))?$", value)
    if not m:
        return "", None
    host = m.group(1) or m.group(3) or ""
    port = m.group(2) or m.group(4)
    return host.lower(), int(port) if port else None


class ExplorerServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` with a deep backlog, bounded threads and the app."""

    daemon_threads = True
    request_queue_size = BACKLOG
    allow_reuse_address = True

    def __init__(
        self,
        address,
        handler,
        app: ExplorerApp,
        *,
        max_threads: int = 32,
        timeout: float = 10.0,
        allowed_hosts: tuple[str, ...] | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.request_timeout = float(timeout)
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts) if allowed_hosts else None
        self._slots = threading.BoundedSemaphore(max(1, int(max_threads)))
        super().__init__(address, handler)
        self.loopback = is_loopback(self.server_address[0])

    def process_request(self, request, client_address) -> None:
        self._slots.acquire()  # waits for a free slot; meanwhile connections queue in the backlog
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def host_ok(self, host: str, port: int | None) -> bool:
        if self.allowed_hosts is not None:
            return host in self.allowed_hosts
        if not self.loopback:
            return True
        return host in LOOPBACK_NAMES and (port is None or port == self.server_port)


class Handler(BaseHTTPRequestHandler):
    """One connection; ``server`` is an :class:`ExplorerServer`."""

    server_version = "saeprobe-explorer"
    protocol_version = "HTTP/1.1"
    server: ExplorerServer

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # StreamRequestHandler sets it on the socket
        super().setup()

    def log_message(self, fmt: str, *args) -> None:  # route to logging, not stderr
        logger.debug("%s " + fmt, self.address_string(), *args)

    # ------------------------------------------------------------ answers
    def _headers(self, status: int, ctype: str, length: int, download: str | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        if download:
            self.send_header("Content-Disposition", f'attachment; filename="{download}"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, reply: Reply) -> None:
        body = reply.body if reply.body is not None else reply.path.read_bytes()
        ctype = (
            reply.ctype or mimetypes.guess_type(reply.path.name)[0] or "application/octet-stream"
        )
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._headers(reply.status, ctype, len(body), reply.download)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, msg: str) -> None:
        body = json.dumps({"error": msg}).encode()
        self._headers(status, "application/json", len(body), None)
        if self.command != "HEAD":
            self.wfile.write(body)

    # ------------------------------------------------------------ checks
    def _check_request(self) -> None:
        if len(self.path) > MAX_URL:
            self.close_connection = True
            raise _Refused(
                HTTPStatus.REQUEST_URI_TOO_LONG, f"request URL longer than {MAX_URL} bytes"
            )
        host, port = _split_host(self.headers.get("Host", ""))
        if not self.server.host_ok(host, port):
            self.close_connection = True
            raise _Refused(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"refused Host {self.headers.get('Host', '')!r}: this explorer answers only "
                f"http://127.0.0.1:{self.server.server_port}/ (or localhost)",
            )
        origin = self.headers.get("Origin")
        if origin is not None and origin != "null":
            want = f"http://{self.headers.get('Host', '')}"
            if origin.lower() != want.lower():
                self.close_connection = True
                raise _Refused(
                    HTTPStatus.FORBIDDEN, f"refused cross-origin request from {origin!r}"
                )

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _Refused(HTTPStatus.LENGTH_REQUIRED, "send the JSON body with a Content-Length")
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        raw_n = (self.headers.get("Content-Length") or "0").strip()
        if not raw_n.isdigit():
            self.close_connection = True
            raise _Refused(HTTPStatus.BAD_REQUEST, f"bad Content-Length {raw_n!r}")
        n = int(raw_n)
        if n > MAX_BODY:
            self.close_connection = True  # the body is not read
            raise _Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body of {n} bytes exceeds {MAX_BODY}"
            )
        raw = self.rfile.read(n) if n else b""
        if ctype != "application/json":
            raise _Refused(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                "POST bodies must be Content-Type: application/json",
            )
        raw = raw.strip() or b"{}"
        if json_depth(raw) > MAX_JSON_DEPTH:
            raise ValueError(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            obj = json.loads(raw, parse_constant=_reject_constant)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"request body is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError("request body must be a JSON object")
        return obj

    # ------------------------------------------------------------ dispatch
    def _guard(self, fn) -> None:
        try:
            self._check_request()
            self._send(fn())
        except _Refused as exc:
            self._error(exc.status, str(exc))
        except NotFound as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc))
        except (ValueError, TypeError, KeyError, SaeprobeError, RecursionError) as exc:
            msg = str(exc).strip("'\"").splitlines()[0] if str(exc) else type(exc).__name__
            self._error(HTTPStatus.BAD_REQUEST, msg)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - log it, answer one line, keep serving
            logger.exception("explorer request %s %s failed", self.command, self.path[:200])
            self._error(
                HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; the server log has the details"
            )

    def _get(self) -> Reply:
        url = urlsplit(self.path)
        qs = parse_qs(url.query, keep_blank_values=False, max_num_fields=64)
        return handle_get(self.server.app, url.path, qs)

    def _post(self) -> Reply:
        body = self._body()
        return handle_post(self.server.app, urlsplit(self.path).path, body)

    def do_GET(self) -> None:  # noqa: N802
        self._guard(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._guard(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._post)


def _as_app(target: Any) -> ExplorerApp:
    if isinstance(target, ExplorerApp):
        return target
    if isinstance(target, ExplorerSession):
        return SingleSession(target)
    raise TypeError(f"serve an ExplorerSession or an ExplorerApp, got {type(target).__name__}")


def make_server(
    session: ExplorerSession | ExplorerApp,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    max_threads: int = 32,
    timeout: float = 10.0,
    allowed_hosts: tuple[str, ...] | None = None,
) -> ExplorerServer:
    """Bind an :class:`ExplorerServer` (``port=0``: any free port, see ``server.server_port``).

    Parameters
    ----------
    session : ExplorerSession | ExplorerApp
        One session, or an app (:class:`~saeprobe.explorer.runs.RunExplorer`).
    host : str
        Bind address; anything but a loopback address logs a warning.
    max_threads : int
        Requests served at once.
    timeout : float
        Seconds a connection may stall (reading a request or keeping it alive).
    allowed_hosts : tuple[str, ...] | None
        ``Host`` names accepted (default: loopback names on a loopback address, any otherwise).
    """
    if not is_loopback(host):
        logger.warning(
            "binding the explorer to %s exposes it beyond this machine (no authentication); "
            "use --host 127.0.0.1 unless you mean it",
            host,
        )
    return ExplorerServer(
        (host, port),
        Handler,
        _as_app(session),
        max_threads=max_threads,
        timeout=timeout,
        allowed_hosts=allowed_hosts,
    )


def server_url(server: ExplorerServer) -> str:
    host = server.server_address[0]
    if ":" in host:
        host = f"[{host}]"
    elif host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    return f"http://{host}:{server.server_port}/"


def serve_in_thread(
    session: ExplorerSession | ExplorerApp, host: str = "127.0.0.1", port: int = 0, **kwargs: Any
):
    """Start a server in a daemon thread; returns ``(server, url)``; stop with
    ``server.shutdown(); server.server_close()``."""
    server = make_server(session, host, port, **kwargs)
    threading.Thread(target=server.serve_forever, name="saeprobe-explorer", daemon=True).start()
    return server, server_url(server)
