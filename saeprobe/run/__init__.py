"""The run folder: one versioned layout that ``demo``, ``capture``, ``train``, ``analyze`` and
``retrieve`` write and that ``explore`` (and the notebooks) read.

Layout (format ``saeprobe.run``, version :data:`VERSION`; ``docs/run-folder.md``)::

    RUN/run.json                                   index: models, tasks, item sources, stages
    RUN/items/<source>/items.parquet               id, kind, text, thumb, width, height
    RUN/items/<source>/thumbs/<row>.png            thumbnails of image items
    RUN/models/<model>/model.json                  name, path, kind (mllm | dual), d, hook point
    RUN/models/<model>/store/                      activation store of the analysis data
    RUN/models/<model>/sae/                        the SAE (sae-lens layout)
    RUN/models/<model>/analysis/                   features.parquet, summary.json, report.html
    RUN/models/<model>/tasks/<task>/embeddings.safetensors   explorer data file + item ids
    RUN/models/<model>/tasks/<task>/results.json   retrieval scores

Everything but ``run.json`` and ``model.json`` is optional; :class:`RunFolder` says what a
view needs when it is missing. Imports ``store``, ``sae``, ``atomic`` and the primitives.
"""

from __future__ import annotations

from .folder import RunFolder, RunTask
from .layout import FORMAT, VERSION, RunError, is_run_folder
from .writer import RunWriter, write_items

__all__ = [
    "FORMAT",
    "VERSION",
    "RunError",
    "RunFolder",
    "RunTask",
    "RunWriter",
    "is_run_folder",
    "write_items",
]
