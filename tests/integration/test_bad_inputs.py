"""Property-based bad input (hypothesis): generated CLI arguments, captions files, images and
store bytes. Each ends in a clean one-line error (exit status 2, no traceback) and leaves
earlier outputs untouched; nothing gets as far as loading a model.

The number of examples per property is ``EXAMPLES`` (the closing note of issue 9 quotes
the counts and what each input class gives).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import saeprobe.models
from saeprobe.cli import main
from saeprobe.store import ActivationStore, CorruptShardError, StoreError, verify_store
from tests.helpers import tiny_store

EXAMPLES = 40
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class ModelLoaded(BaseException):
    """Raised instead of loading a model: the input got past every check."""


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise ModelLoaded

    monkeypatch.setattr(saeprobe.models, "load_model", refuse)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_error(capsys, command: str) -> str:
    err = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.strip() and not line.startswith(("INFO", "WARNING")) and "it/s]" not in line
    ]
    assert len(err) == 1, err
    assert err[0].startswith(f"saeprobe {command}: error: "), err[0]
    assert "Traceback" not in err[0]
    return err[0]


def _assert_usage_error(capsys, argv: list[str]) -> None:
    """``saeprobe ARGV`` exits with code 2 (returned, or raised by argparse for a value it
    cannot parse) and prints one error line naming the command (``argv[0]``)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    _one_line_error(capsys, argv[0])


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """A tiny model folder (config only is read), a photo folder, a finished store and an
    earlier output folder whose bytes must never change."""
    from saeprobe.testing import build_tiny_model, write_photo_folder

    root = tmp_path_factory.mktemp("bad_inputs")
    model = build_tiny_model("qwen2_vl", root / "model")
    photos = write_photo_folder(root / "photos")
    tiny_store(root / "store")
    earlier = root / "earlier"
    earlier.mkdir()
    (earlier / "results.json").write_text('{"kept": true}\n')
    return {
        "root": root,
        "model": model,
        "photos": photos,
        "store": root / "store",
        "earlier": earlier,
    }


# ------------------------------------------------------------------ CLI arguments
_bad_int = st.one_of(st.integers(max_value=0), st.sampled_from(["x", "1.5", "", "1e3", "--"]))
_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.-0123456789", min_size=1, max_size=12)
_bad_pool = _word.filter(
    lambda w: (
        w not in {"mean", "mean_data", "last", "mean_text", "mean_image", "mean_template", "native"}
    )
)
_bad_layer = st.one_of(
    st.integers(min_value=3, max_value=10**6).map(str),
    st.integers(max_value=-4).map(str),
    _word.filter(lambda w: not w.lstrip("-").isdigit() and w not in {"final_norm"}),
)
CAPTURE_BAD = st.one_of(
    st.tuples(st.just("--batch-size"), _bad_int.map(str)),
    st.tuples(st.just("--limit"), _bad_int.map(str)),
    st.tuples(st.just("--shard-tokens"), _bad_int.map(str)),
    st.tuples(st.just("--pool"), _bad_pool),
    st.tuples(st.just("--layers"), _bad_layer),
    st.tuples(
        st.just("--dtype"),
        _word.filter(lambda w: w not in {"fp16", "bf16", "fp32", "float16", "bfloat16", "float32"}),
    ),
    st.tuples(
        st.just("--model-dtype"),
        _word.filter(
            lambda w: (
                w
                not in {
                    "auto",
                    "fp16",
                    "bf16",
                    "fp32",
                    "fp64",
                    "float",
                    "half",
                    "double",
                    "float16",
                    "float32",
                    "float64",
                    "bfloat16",
                }
            )
        ),
    ),
    st.tuples(
        st.just("--tower"), _word.filter(lambda w: w not in {"text", "vision", "none", "null"})
    ),
)


@SETTINGS
@given(bad=CAPTURE_BAD)
def test_bad_capture_arguments(fixtures, bad, capsys, no_model):
    out = fixtures["root"] / "never"
    before = _digest(fixtures["earlier"])
    argv = ["capture", "--model", str(fixtures["model"]), "--data", str(fixtures["photos"]),
            "--out", str(out), *bad]  # fmt: skip
    _assert_usage_error(capsys, argv)
    assert not out.exists()
    assert _digest(fixtures["earlier"]) == before


TRAIN_BAD = st.one_of(
    st.tuples(st.just("--lr"), st.floats(max_value=0, allow_nan=False).map(str)),
    st.tuples(st.just("--batch-size"), st.integers(max_value=0).map(str)),
    st.tuples(st.just("--width"), st.integers(max_value=0).map(str)),
    st.tuples(st.just("--k"), st.integers(min_value=65, max_value=10**6).map(str)),
    st.tuples(st.just("--tokens"), st.integers(max_value=0).map(str)),
    st.tuples(st.just("--decay"), _word.filter(lambda w: w not in {"linear", "cosine"})),
    st.tuples(st.just("--sae-kwargs"), st.sampled_from(["{", "[1,", "nope", '{"bogus_field": 1}'])),
)


@SETTINGS
@given(bad=TRAIN_BAD)
def test_bad_train_arguments(fixtures, bad, capsys):
    out = fixtures["earlier"]  # an earlier output folder: must stay byte-identical
    before = _digest(out)
    argv = ["train", "--activations", str(fixtures["store"]), "--out", str(out), "--width", "64",
            "--epochs", "1", "--no-progress", *bad]  # fmt: skip
    _assert_usage_error(capsys, argv)
    assert _digest(out) == before


# ------------------------------------------------------------------ captions files and images
_captions = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.lists(
        st.tuples(
            st.sampled_from(["astronaut.png", "missing.png", "", "../x.png", "chelsea.png"]),
            st.text(max_size=30),
        ),
        max_size=6,
    ).map(
        lambda rows: (
            "image,caption\n" + "".join(f'"{a}","{b.replace(chr(34), "")}"\n' for a, b in rows)
        )
    ),
)


@SETTINGS
@given(captions=_captions, kind=st.sampled_from(["captions.csv", "captions.jsonl"]))
def test_bad_captions_files(fixtures, captions, kind, capsys, no_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("caps")
    for name in ("astronaut.png", "chelsea.png"):
        (folder / name).write_bytes((fixtures["photos"] / name).read_bytes())
    data = captions if isinstance(captions, bytes) else captions.encode("utf-8", "surrogatepass")
    (folder / kind).write_bytes(data)
    argv = ["capture", "--model", str(fixtures["model"]), "--data", str(folder), "--out",
            str(folder / "out"), "--no-progress"]  # fmt: skip
    try:
        code = main(argv)
    except ModelLoaded:
        return  # a valid file: it passed every check
    assert code == 2
    _one_line_error(capsys, "capture")
    assert not (folder / "out").exists()


def _png_bytes(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return buf.getvalue()


_image_bytes = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=40).map(lambda n: _png_bytes((n, n))[: n * 3]),  # truncated
    st.just(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30),
)


@SETTINGS
@given(images=st.lists(_image_bytes, min_size=1, max_size=4))
def test_bad_image_files(images, capsys, no_model, fixtures, tmp_path_factory):
    """Undecodable images are skipped and named; a folder with nothing usable is refused."""
    from saeprobe.data import open_source

    folder = tmp_path_factory.mktemp("imgs")
    lines = ["image,caption"]
    for i, data in enumerate(images):
        (folder / f"bad{i}.png").write_bytes(data)
        lines.append(f"bad{i}.png,a caption {i}")
    (folder / "captions.csv").write_text("\n".join(lines) + "\n")
    source = open_source(str(folder), mode="images", validate="full")
    try:
        items = list(source)
    except (ValueError, OSError) as exc:
        assert "no usable items" in str(exc) and "\n" not in str(exc)
        assert "bad0.png" in str(exc)  # the skipped images are named
        return
    assert len(items) <= len(images)


# ------------------------------------------------------------------ store bytes
@SETTINGS
@given(
    shard=st.integers(min_value=0, max_value=50),
    offset=st.floats(min_value=0, max_value=1, exclude_max=True),
    how=st.sampled_from(["flip", "truncate", "overwrite", "append", "junk-manifest"]),
)
def test_damaged_store_bytes(tmp_path_factory, shard, offset, how, capsys):
    path = tmp_path_factory.mktemp("st") / "store"
    tiny_store(path)
    st_ = ActivationStore(path)
    info = st_.shards[shard % len(st_.shards)]
    f = path / info["file"]
    data = bytearray(f.read_bytes())
    at = int(offset * len(data))
    if how == "flip":
        data[at] ^= 0x40
    elif how == "truncate":
        data = data[:at]
    elif how == "overwrite":
        data[at : at + 16] = b"\xa5" * min(16, len(data) - at)
    elif how == "append":
        data += b"x"
    if how == "junk-manifest":
        (path / "manifest.json").write_bytes(os.urandom(64))
        with pytest.raises(StoreError) as ei:
            ActivationStore(path)
        assert "\n" not in str(ei.value)
        assert main(["store", "verify", str(path)]) == 2
        _one_line_error(capsys, "store")
        return
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError) as ei:
        ActivationStore(path).read_shard(shard % len(st_.shards))
    assert info["file"] in str(ei.value) and "\n" not in str(ei.value)
    report = verify_store(path)
    assert [name for name, _ in report.damaged] == [info["file"]]
    assert main(["store", "verify", str(path)]) == 1
    assert info["file"] in capsys.readouterr().out
