"""M-BEIR task folders (MRBench parquet layout): parsing all 8 task types."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saeprobe import Item
from saeprobe.data.mbeir import (
    PROMPTS_BY_TASK,
    TASKS,
    infer_task,
    open_mbeir,
    write_task_folder,
)
from tests.helpers import build_task_folder, sample_images


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_type_parses(tmp_path, task):
    folder = build_task_folder(tmp_path, task)
    t = open_mbeir(folder)  # inferred from the modalities
    assert t.task == task
    assert len(t.queries) == 4 and len(t.corpus) == 6
    qkind, ckind = TASKS[task]
    qprompt, cprompt = PROMPTS_BY_TASK[task]
    for side, kind, prompt in ((t.queries, qkind, qprompt), (t.corpus, ckind, cprompt)):
        items = list(side)
        assert [it.id for it in items] == side.ids
        for i, it in enumerate(items):
            assert it.prompt == prompt
            assert it.meta["index"] == i
            assert (it.image is not None) == ("image" in kind)
            assert bool(it.text) == ("text" in kind)
            if it.image is not None:
                assert it.image.mode == "RGB" and it.image.size == (32, 32)
    assert t.qrels["q:1"] == {"c:1", "c:2"}
    rel = t.relevant_rows()
    assert rel[3] == {3, 4}
    assert t.gains is None
    # explicit --task wins and sets the prompts
    assert open_mbeir(folder, task=task).task == task


def test_task7_vs_8_and_modality_filtering(tmp_path):
    # a task-8-shaped folder (image+text on both sides) named task7 is read as task 7:
    # candidates then use their image only, as in the authors' code
    folder = build_task_folder(tmp_path, 8, name="mbeir_cirr_task7")
    t = open_mbeir(folder)
    assert t.task == 7
    c = t.corpus[0]
    assert c.text is None and c.image is not None and c.prompt == "image"
    q = t.queries[0]
    assert q.text and q.image is not None and q.prompt == "image_question"
    # forcing task 1 on the same data keeps only the query text and candidate image
    t1 = open_mbeir(folder, task=1)
    assert t1.queries[0].image is None and t1.queries[0].prompt == "text"
    assert infer_task("image_text", "image_text", "mbeir_oven_task8") == 8
    with pytest.raises(ValueError, match="not one of the paper's 8 task types"):
        infer_task("image", "image_text", "x")


def test_limits_graded_qrels_and_bad_input(tmp_path, caplog):
    imgs = sample_images(3)
    queries = [Item(id="a", text="q one"), Item(id="b", text="q two"), Item(id="c", text="q3")]
    corpus = [Item(id=str(i), image=imgs[i]) for i in range(3)]
    qrels = {"a": {"0": 2.0, "1": 1.0}, "b": {"2": 1.0}, "zzz": {"0": 1.0}, "c": {"999": 1.0}}
    folder = write_task_folder(tmp_path / "graded", queries, corpus, qrels)
    with caplog.at_level(logging.WARNING, logger="saeprobe.data.mbeir"):
        t = open_mbeir(folder)
    assert t.task == 1
    assert "1 qrels name unknown query ids" in caplog.text
    assert "1 qrels name corpus ids missing" in caplog.text
    assert "1 of 3 queries have no relevant candidate" in caplog.text
    assert t.gains == {"a": {"0": 2.0, "1": 1.0}, "b": {"2": 1.0}}
    assert t.relevant_rows(graded=True)[0] == {0: 2.0, 1: 1.0}
    lim = open_mbeir(folder, limit_queries=1)
    assert lim.queries.ids == ["a"] and list(lim.qrels) == ["a"]
    # qrels that match nothing: a clear error
    pq.write_table(
        pa.table({"query-id": ["x"], "corpus-id": ["y"]}), folder / "qrels-00000-of-00001.parquet"
    )
    with pytest.raises(ValueError, match="do not belong to this query/corpus"):
        open_mbeir(folder)
    with pytest.raises(FileNotFoundError, match="no query-\\*.parquet"):
        open_mbeir(tmp_path)
    with pytest.raises(ValueError, match="task must be one of 1-8"):
        open_mbeir(folder, task=9)
    # a row missing the modality its task needs fails with the row named
    bad = write_task_folder(
        tmp_path / "bad",
        [Item(id="q", text="t")],
        [Item(id="c0", image=imgs[0]), Item(id="c1", text="x")],
        {"q": {"c0"}},
    )
    t = open_mbeir(bad, task=1)
    with pytest.raises(ValueError, match="corpus 'c1' has no image"):
        list(t.corpus)
