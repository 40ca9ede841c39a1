"""The explorer inline in a Jupyter notebook: the local server in an IFrame.

``view = saeprobe.explorer.show("out/demo")`` serves the run folder on ``127.0.0.1`` from a
background thread and displays the page in the cell's output. The page and Python share one
app (``view.app``), so ``view.session().evaluate([...])`` gives the numbers the page shows.
``view.close()`` stops the server. No extra dependency: the view renders itself through
``_repr_html_`` (an ``<iframe>``), which Jupyter, JupyterLab and VS Code all display.
"""

from __future__ import annotations

import html
import os
from typing import Any
from urllib.parse import urlencode

from .app import ExplorerApp, SingleSession
from .server import serve_in_thread
from .session import ExplorerSession

__all__ = ["ExplorerView", "show"]


class ExplorerView:
    """A running explorer page: ``url``, ``app``, ``server``; displays as an IFrame.

    Parameters
    ----------
    app : ExplorerApp
    height : int
        IFrame height in pixels.
    params : dict
        Initial page state (``model``, ``task``, ``card``, ...) put in the URL.
    """

    def __init__(
        self, app: ExplorerApp, height: int = 900, params: dict | None = None, **server: Any
    ) -> None:
        self.app = app
        self.height = int(height)
        self.server, base = serve_in_thread(app, **server)
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        self.url = base + (f"?{urlencode(clean)}" if clean else "")

    def session(self, model: str | None = None, task: str | None = None) -> ExplorerSession:
        """The session the page uses for ``model`` / ``task`` (default: the first ones)."""
        return self.app.session(model, task)

    def _repr_html_(self) -> str:
        src = html.escape(self.url, quote=True)
        return (
            f'<iframe src="{src}" width="100%" height="{self.height}" '
            'style="border:1px solid #d0d5dd;border-radius:6px" '
            'title="saeprobe explorer"></iframe>'
        )

    def __repr__(self) -> str:
        return f"ExplorerView({self.url!r})"

    def close(self) -> None:
        """Stop the server (the IFrame stops answering)."""
        self.server.shutdown()
        self.server.server_close()


def show(
    target: str | os.PathLike | ExplorerApp | ExplorerSession,
    *,
    model: str | None = None,
    task: str | None = None,
    height: int = 900,
    port: int = 0,
    device: str = "cpu",
) -> ExplorerView:
    """Open the explorer inline (run folder path, app or session).

    Parameters
    ----------
    target : path | ExplorerApp | ExplorerSession
        A run folder (opened with :class:`~saeprobe.explorer.runs.RunExplorer`), an app or
        one session.
    model, task : str, optional
        What the page opens on (default: the first model and task).
    height : int
        IFrame height in pixels.
    port : int
        Local port (0: any free one).
    device : str
        Device of the SAE encoders (run folders).

    Returns
    -------
    ExplorerView
        Displayed by Jupyter when it is the cell's last value.
    """
    if isinstance(target, ExplorerSession):
        app: ExplorerApp = SingleSession(target)
    elif isinstance(target, ExplorerApp):
        app = target
    else:
        from .runs import RunExplorer

        app = RunExplorer(target, device=device)
        app.prepare(model, task)
    return ExplorerView(app, height, {"model": model, "task": task}, host="127.0.0.1", port=port)
