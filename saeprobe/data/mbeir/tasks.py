"""The paper's eight M-BEIR task types, in one table (kinds, prompts, names), and inferring a
folder's task type from its modalities."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

__all__ = [
    "MBEIR_ID_TO_TASK",
    "PROMPTS_BY_TASK",
    "TASKS",
    "TASK_NAMES",
    "TASK_TYPES",
    "TaskType",
    "infer_task",
]


class TaskType(NamedTuple):
    """One task type: what each side holds and the paper's prompt for it.

    Attributes
    ----------
    number : int
        The paper's numbering 1-8.
    query_kind, corpus_kind : str
        ``text``, ``image`` or ``image_text``.
    query_prompt, corpus_prompt : str
        Prompt names in :data:`saeprobe.models.prompts.PROMPTS`.
    name : str
        ``qt->ci`` style short name.
    mbeir_id : int
        M-BEIR's own 0-based id (the ``task<K>`` folder suffix).
    """

    number: int
    query_kind: str
    corpus_kind: str
    query_prompt: str
    corpus_prompt: str
    name: str
    mbeir_id: int


#: the paper's task types (number -> TaskType)
TASK_TYPES: dict[int, TaskType] = {
    t.number: t
    for t in (
        TaskType(1, "text", "image", "text", "image", "qt->ci", 0),
        TaskType(2, "text", "text", "text", "text", "qt->ct", 1),
        TaskType(3, "text", "image_text", "text", "image_text", "qt->(ci,ct)", 2),
        TaskType(4, "image", "text", "image", "text", "qi->ct", 3),
        TaskType(5, "image", "image", "image", "image", "qi->ci", 4),
        TaskType(6, "image_text", "text", "image_text", "text", "(qi,qt)->ct", 6),
        TaskType(7, "image_text", "image", "image_question", "image", "(qi,qt)->ci", 7),
        TaskType(
            8, "image_text", "image_text", "image_text_8", "image_text_8", "(qi,qt)->(ci,ct)", 8
        ),
    )
}
#: views of :data:`TASK_TYPES` (kept for callers of the earlier tables)
TASKS: dict[int, tuple[str, str]] = {
    n: (t.query_kind, t.corpus_kind) for n, t in TASK_TYPES.items()
}
PROMPTS_BY_TASK: dict[int, tuple[str, str]] = {
    n: (t.query_prompt, t.corpus_prompt) for n, t in TASK_TYPES.items()
}
TASK_NAMES: dict[int, str] = {n: t.name for n, t in TASK_TYPES.items()}
MBEIR_ID_TO_TASK: dict[int, int] = {t.mbeir_id: n for n, t in TASK_TYPES.items()}
_FOLDER_TASK_RE = re.compile(r"task[_-]?(\d+)", re.IGNORECASE)


def infer_task(query_kind: str | None, corpus_kind: str | None, folder: str = "") -> int:
    """The paper's task type (1-8) from each side's modalities; the folder's
    ``task<K>`` suffix (M-BEIR's 0-based id) only decides 7 vs 8."""
    if query_kind is None or corpus_kind is None:
        side = "queries" if query_kind is None else "candidates"
        raise ValueError(
            f"cannot infer the task type of {folder!r}: its {side} have neither text nor images "
            "in the first rows; pass --task N (1-8)"
        )
    matches = [t for t, kinds in TASKS.items() if kinds == (query_kind, corpus_kind)]
    m = _FOLDER_TASK_RE.search(Path(folder).name) if folder else None
    hint = int(m.group(1)) if m else None
    if query_kind == "image_text" and corpus_kind == "image_text" and hint == 7:
        return 7  # e.g. a CIRR corpus with captions: the task uses images only
    if query_kind == "image" and corpus_kind == "image_text" and hint == 3:
        return 4  # an i->t folder whose candidate rows also carry images
    if not matches:
        raise ValueError(
            f"{folder!r}: queries are {query_kind}, candidates {corpus_kind}: not one of the "
            "paper's 8 task types (M-BEIR id 5, qi->(ci,ct), is not evaluated); pass --task N"
        )
    task = matches[0]
    if hint is not None and MBEIR_ID_TO_TASK.get(hint) not in (None, task):
        logger.info(
            "%s: modalities say task %d (%s); the folder suffix task%d (M-BEIR id) says %s",
            folder,
            task,
            TASK_NAMES[task],
            hint,
            MBEIR_ID_TO_TASK.get(hint),
        )
    return task
