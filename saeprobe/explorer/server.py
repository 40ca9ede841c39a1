"""A thin local HTTP server for an :class:`ExplorerSession` (stdlib only, no network access).

Routes
------
``GET /``                      the page (``static/index.html``)
``GET /static/<file>``         ``app.js``, ``style.css``, and ``plotly.min.js`` from the installed
                               ``plotly`` package
``GET /api/info``              sizes, baseline metrics, options
``GET /api/features``          concepts by retrieval attribution (``?limit=200&offset=0``)
``POST /api/evaluate``         ``{ablate: [ids], op, whiten, alpha, sides}`` -> metrics before / after
``POST /api/sweep``            ``{op, whiten, alpha, n_max}`` -> Recall@k vs number ablated
``GET /api/query/<i>``         one query's top-5 before / after (``?ablate=1,2&op=...&whiten=...&alpha=...``)

Errors answer ``{"error": "..."}`` with status 400 (bad input) or 404.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .session import ExplorerSession

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = ("index.html", "app.js", "style.css")
MAX_BODY = 1 << 20  # bytes


def plotly_js_path() -> Path:
    """The ``plotly.min.js`` bundled with the installed ``plotly`` Python package."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(
            f"plotly.min.js not found at {path}; reinstall plotly (pip install --force-reinstall plotly)"
        )
    return path


class _BadRequest(ValueError):
    pass


def _make_handler(session: ExplorerSession) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "saeprobe-explorer"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args) -> None:  # route to logging, not stderr
            logger.debug("%s " + fmt, self.address_string(), *args)

        # ------------------------------------------------------------ responses
        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj, status: int = 200) -> None:
            body = json.dumps(obj, allow_nan=False).encode()
            self._send(status, body, "application/json")

        def _error(self, status: int, msg: str) -> None:
            self._json({"error": msg}, status)

        def _file(self, path: Path) -> None:
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype.endswith("javascript"):
                ctype += "; charset=utf-8"
            self._send(200, path.read_bytes(), ctype)

        # ------------------------------------------------------------ routing
        def _guard(self, fn) -> None:
            try:
                fn()
            except (_BadRequest, ValueError, TypeError, KeyError) as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc).strip("'\""))
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                logger.exception("explorer request failed")
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")

        def do_GET(self) -> None:  # noqa: N802
            self._guard(self._get)

        def do_HEAD(self) -> None:  # noqa: N802
            self._guard(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._guard(self._post)

        def _get(self) -> None:
            url = urlsplit(self.path)
            path, qs = url.path, parse_qs(url.query)
            if path in ("/", "/index.html"):
                return self._file(STATIC_DIR / "index.html")
            if path.startswith("/static/"):
                name = path[len("/static/") :]
                if name == "plotly.min.js":
                    return self._file(plotly_js_path())
                if name in STATIC_FILES:
                    return self._file(STATIC_DIR / name)
                return self._error(HTTPStatus.NOT_FOUND, f"no static file {name!r}")
            if path == "/api/info":
                return self._json(session.info())
            if path == "/api/features":
                limit = _int(qs, "limit", 200)
                offset = _int(qs, "offset", 0)
                return self._json({"features": session.features(limit=limit, offset=offset)})
            if path.startswith("/api/query/"):
                idx = path[len("/api/query/") :]
                if not idx.isdigit():
                    raise _BadRequest(f"query index must be a non-negative integer, got {idx!r}")
                ablate = [int(x) for x in _str(qs, "ablate", "").split(",") if x.strip()]
                return self._json(
                    session.query(
                        int(idx),
                        ablate,
                        _str(qs, "op", "subtract"),
                        _str(qs, "whiten", "none"),
                        float(_str(qs, "alpha", "0.1")),
                        _str(qs, "sides", "both"),
                        top_n=_int(qs, "top", 5),
                    )
                )
            if path == "/favicon.ico":
                return self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            return self._error(HTTPStatus.NOT_FOUND, f"no route {path}")

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            if n > MAX_BODY:
                raise _BadRequest(f"request body of {n} bytes exceeds {MAX_BODY}")
            raw = self.rfile.read(n) if n else b"{}"
            try:
                obj = json.loads(raw or b"{}")
            except json.JSONDecodeError as exc:
                raise _BadRequest(f"request body is not JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise _BadRequest("request body must be a JSON object")
            return obj

        def _post(self) -> None:
            path = urlsplit(self.path).path
            body = self._body()
            if path == "/api/evaluate":
                res = session.evaluate(
                    body.get("ablate", []),
                    body.get("op", "subtract"),
                    body.get("whiten", "none"),
                    body.get("alpha", 0.1),
                    body.get("sides", "both"),
                )
                return self._json(res.to_dict())
            if path == "/api/sweep":
                return self._json(
                    session.sweep(
                        body.get("op", "subtract"),
                        body.get("whiten", "none"),
                        body.get("alpha", 0.1),
                        n_max=int(body.get("n_max", 32)),
                        steps=body.get("steps"),
                        sides=body.get("sides", "both"),
                    )
                )
            return self._error(HTTPStatus.NOT_FOUND, f"no route {path}")

    return Handler


def _str(qs: dict, key: str, default: str) -> str:
    v = qs.get(key)
    return v[0] if v else default


def _int(qs: dict, key: str, default: int) -> int:
    v = _str(qs, key, str(default))
    try:
        return int(v)
    except ValueError as exc:
        raise _BadRequest(f"{key} must be an integer, got {v!r}") from exc


def make_server(
    session: ExplorerSession, host: str = "127.0.0.1", port: int = 8765
) -> ThreadingHTTPServer:
    """Bind a :class:`ThreadingHTTPServer` (``port=0``: any free port, see ``server.server_port``)."""
    server = ThreadingHTTPServer((host, port), _make_handler(session))
    server.daemon_threads = True
    return server


def serve_in_thread(session: ExplorerSession, host: str = "127.0.0.1", port: int = 0):
    """Start a server in a daemon thread; returns ``(server, url)``; stop with
    ``server.shutdown(); server.server_close()``."""
    server = make_server(session, host, port)
    threading.Thread(target=server.serve_forever, name="saeprobe-explorer", daemon=True).start()
    return server, f"http://{host}:{server.server_port}/"
