"""M-BEIR task folders in the parquet layout of the MRBench mirror.

One folder per task (``MRBench/mbeir_<dataset>_task<K>``)::

    query-00000-of-00001.parquet     columns: id, text, image {bytes, path}
    corpus-00000-of-0000N.parquet    columns: id, text, image {bytes, path}
    qrels-00000-of-00001.parquet     columns: query-id, corpus-id[, score]

The folder suffix ``task<K>`` is M-BEIR's own 0-based task id; the paper numbers the same
task types 1..8 (:data:`TASK_TYPES`, one table). :func:`open_mbeir` infers the paper's task
type from which modalities each side holds (the folder id only breaks the 7 / 8 tie), or
takes ``task=N``. Each side is a lazy sequence of :class:`~saeprobe.Item` (images decoded
while iterating, one parquet row group at a time) with the paper's prompt per side; only the
modalities the task uses are kept. :func:`write_task_folder` writes one.
"""

from __future__ import annotations

from . import tasks as _tasks
from .side import MBEIRSide, find_task_files
from .task import MBEIRTask, open_mbeir
from .tasks import *  # noqa: F403 - the task-type table and its views (tasks.__all__)
from .writer import write_task_folder

__all__ = [
    *_tasks.__all__,
    "MBEIRSide",
    "MBEIRTask",
    "find_task_files",
    "open_mbeir",
    "write_task_folder",
]
