"""Checks shared by the tiny-checkpoint adapter tests (``tests/integration/test_models_*.py``):
the mixed text / image / image + text items, a hooked forward pass of one padded batch, and
assertions against HF's ``output_hidden_states`` reference.

Test modules import it as ``from tests import adapter_checks as checks``; a module whose
``run`` fixture is a :class:`HookedRun` (:func:`hooked_run`) gets the shared hook, padding,
hook-error and bf16 tests by subclassing :class:`HookedRunChecks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from PIL import Image

from saeprobe import Item, Modality

SHORT_TEXTS = ("A cat sitting on a laptop.", "Two dogs play.")
LONG_TEXTS = ("A cat sitting on a laptop keyboard.", "Two dogs play with a red ball.")


def photos() -> tuple[Image.Image, Image.Image]:
    """scikit-image's astronaut (512 x 512) and chelsea (451 x 300) photos."""
    import skimage.data

    return Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.chelsea())


def mixed_items(texts=SHORT_TEXTS, ids=("txt", "img", "both")) -> list[Item]:
    """A text item (``texts[0]``), an image item (the astronaut) and an image + text item
    (chelsea, ``texts[1]``): one padded batch of them mixes every kind of row."""
    astronaut, cat = photos()
    return [
        Item(ids[0], text=texts[0]),
        Item(ids[1], image=astronaut),
        Item(ids[2], text=texts[1], image=cat),
    ]


class HookedRun(NamedTuple):
    """A tiny checkpoint's adapter, one padded batch of ``items``, the batch's forward output
    (with hidden states) and what :func:`capture_forward` kept of it."""

    family: str
    path: Path
    adapter: Any
    items: list[Item]
    batch: Any
    out: Any
    captured: dict[str, torch.Tensor]


def load_tiny(family: str, tmp_path_factory) -> tuple[Path, Any]:
    """A freshly built tiny ``family`` checkpoint and its adapter: ``(path, adapter)``."""
    from saeprobe.models import load_model
    from saeprobe.testing import build_tiny_model

    path = build_tiny_model(family, tmp_path_factory.mktemp(family))
    return path, load_model(str(path))


def capture_forward(adapter, batch, pre0: bool = False, **forward_kwargs):
    """``adapter.forward(batch, **forward_kwargs)`` under ``no_grad`` with hooks that keep a
    copy of each layer's output (``layer{i}``), the final norm's output (``norm``) and, with
    ``pre0``, the first layer's input (``pre0``); the hooks are removed afterwards.
    Returns ``(output, captured)``."""
    captured: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            captured[name] = out.detach().clone()

        return hook

    def keep_input(module, args, kwargs):
        captured["pre0"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    layers = adapter.layers()
    handles = [layer.register_forward_hook(keep(f"layer{i}")) for i, layer in enumerate(layers)]
    handles.append(adapter.final_norm().register_forward_hook(keep("norm")))
    if pre0:
        handles.append(layers[0].register_forward_pre_hook(keep_input, with_kwargs=True))
    try:
        with torch.no_grad():
            out = adapter.forward(batch, **forward_kwargs)
    finally:
        for h in handles:
            h.remove()
    return out, captured


def hooked_run(family: str, tmp_path_factory, items: list[Item], pre0: bool = False) -> HookedRun:
    """Build and load a tiny ``family`` checkpoint, encode ``items`` as one padded batch and
    run it through :func:`capture_forward` with ``output_hidden_states=True``."""
    path, adapter = load_tiny(family, tmp_path_factory)
    batch = adapter.encode(items)
    out, captured = capture_forward(adapter, batch, pre0=pre0, output_hidden_states=True)
    return HookedRun(family, path, adapter, items, batch, out, captured)


def assert_hooks_match_hidden_states(adapter, batch, out, captured) -> None:
    """Hooked activations equal HF's ``output_hidden_states`` bit for bit on the real
    (unpadded) tokens: the first layer's input (when captured) is ``hidden_states[0]``, layer
    ``i``'s output ``hidden_states[i + 1]`` for all but the last layer, the final norm's output
    ``hidden_states[-1]`` and ``last_hidden_state``; the last layer's raw output is not
    ``hidden_states[-1]`` (that one is post-norm)."""
    hs = out.hidden_states
    n = adapter.n_layers
    assert len(hs) == n + 1
    m = batch.attention_mask.bool()
    if "pre0" in captured:
        assert torch.equal(captured["pre0"][m], hs[0][m])
    for i in range(n - 1):
        assert torch.equal(captured[f"layer{i}"][m], hs[i + 1][m]), f"layer {i}"
    assert torch.equal(captured["norm"][m], hs[-1][m])
    assert torch.equal(captured["norm"][m], out.last_hidden_state[m])
    assert not torch.allclose(captured[f"layer{n - 1}"][m], hs[-1][m])


def assert_batch_matches_single_items(adapter, items: list[Item], batch, out) -> None:
    """``batch`` (of ``items``, forward output ``out``) is really padded (rows of different
    lengths), on the right, and each item encoded alone (no padding) has its row's ids and
    modality labels and, within 1e-5, its row's hidden states at every layer."""
    assert (batch.attention_mask == 0).any()
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1
    assert (batch.attention_mask[:, 0] == 1).all()
    for b, item in enumerate(items):
        single = adapter.encode([item])
        assert single.attention_mask.all()
        with torch.no_grad():
            hs = adapter.forward(single, output_hidden_states=True).hidden_states
        m = batch.attention_mask[b].bool()
        assert torch.equal(single.input_ids[0], batch.input_ids[b][m])
        assert torch.equal(single.modality[0], batch.modality[b][m])
        assert len(hs) == len(out.hidden_states)
        for k, h in enumerate(hs):
            torch.testing.assert_close(h[0], out.hidden_states[k][b][m], atol=1e-5, rtol=1e-5)


def assert_hook_exception_propagates(adapter, module, batch) -> None:
    """An exception raised in a forward hook on ``module`` reaches the caller of
    ``adapter.forward(batch)`` (it is not swallowed)."""

    class Stop(Exception):
        pass

    def raise_stop(*_):
        raise Stop

    h = module.register_forward_hook(raise_stop)
    try:
        with pytest.raises(Stop), torch.no_grad():
            adapter.forward(batch)
    finally:
        h.remove()


def assert_bf16_forward(adapter, items: list[Item]) -> None:
    """A bf16-loaded ``adapter`` runs ``items``: its final hidden states (``hidden_states[-1]``
    and ``last_hidden_state``) are bf16 and finite."""
    assert adapter.dtype == torch.bfloat16
    with torch.no_grad():
        out = adapter.forward(adapter.encode(items), output_hidden_states=True)
    for h in (out.hidden_states[-1], out.last_hidden_state):
        assert h.dtype == torch.bfloat16 and torch.isfinite(h.float()).all()


def unpadded_rows(batch):
    """``(b, input_ids, modality)`` of each row of ``batch`` without its padding."""
    for b in range(batch.input_ids.shape[0]):
        m = batch.attention_mask[b].bool()
        yield b, batch.input_ids[b][m], batch.modality[b][m]


def assert_row_labels(tokenizer, ids, mod, item: Item, image_id: int) -> None:
    """One unpadded row of ``item``: IMAGE labels exactly at the image tokens, no labels but
    TEMPLATE / TEXT / IMAGE, and the TEXT positions one contiguous run decoding to the item's
    text (none for an image-only item)."""
    assert torch.equal(mod == Modality.IMAGE, ids == image_id)
    assert set(mod.tolist()) <= {Modality.TEMPLATE, Modality.TEXT, Modality.IMAGE}
    text_pos = (mod == Modality.TEXT).nonzero().flatten()
    if item.text:
        assert tokenizer.decode(ids[text_pos]) == item.text
        assert torch.equal(text_pos, torch.arange(text_pos[0], text_pos[-1] + 1))
    else:
        assert text_pos.numel() == 0


def assert_text_decodes(tokenizer, batch, items: list[Item]) -> None:
    """Each row's attended TEXT-labelled tokens decode (up to surrounding spaces) to its
    item's text; an image-only item has none."""
    text = (batch.modality == Modality.TEXT) & batch.attention_mask.bool()
    for b, item in enumerate(items):
        text_ids = batch.input_ids[b][text[b]]
        if item.text is None:
            assert text_ids.numel() == 0
        else:
            assert tokenizer.decode(text_ids).strip() == item.text


def collapse_image_runs(ids: torch.Tensor, image_id: int) -> torch.Tensor:
    """``ids`` with each run of ``image_id`` tokens shortened to one token."""
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[1:] = ~((ids[1:] == image_id) & (ids[:-1] == image_id))
    return ids[keep]


class HookedRunChecks:
    """Tests every adapter passes on its test module's ``run`` fixture (a :class:`HookedRun`):
    hooks see HF's hidden states (on the forward pass that returns them, and on a plain one),
    the padded batch equals each item alone, an exception in a forward hook propagates, and
    the checkpoint loads and runs in bf16. Subclass it as ``Test...`` in the module; override
    :meth:`hooked_module`, ``hook_items`` or ``bf16_items`` where a family tests elsewhere."""

    hook_items = slice(0, 1)  # of run.items, run by test_hook_exception_propagates
    bf16_items = slice(2, None)  # of run.items, run by test_bf16: the image + text item

    @staticmethod
    def hooked_module(adapter):
        """The module whose forward hook raises in :meth:`test_hook_exception_propagates`."""
        return adapter.layers()[0]

    def test_hooks_match_hidden_states(self, run):
        adapter, batch, out = run.adapter, run.batch, run.out
        text_width = adapter.model.config.get_text_config().hidden_size
        assert adapter.d_model == out.hidden_states[-1].shape[-1] == text_width
        assert_hooks_match_hidden_states(adapter, batch, out, run.captured)
        _, plain = capture_forward(adapter, batch)  # no output_hidden_states
        assert_hooks_match_hidden_states(adapter, batch, out, plain)

    def test_padded_batch_matches_single_items(self, run):
        assert_batch_matches_single_items(run.adapter, run.items, run.batch, run.out)

    def test_hook_exception_propagates(self, run):
        batch = run.adapter.encode(run.items[self.hook_items])
        assert_hook_exception_propagates(run.adapter, self.hooked_module(run.adapter), batch)

    def test_bf16(self, run):
        from saeprobe.models import load_model

        assert_bf16_forward(load_model(str(run.path), dtype="bf16"), run.items[self.bf16_items])
