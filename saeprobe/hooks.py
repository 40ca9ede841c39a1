"""Hook points on the residual stream and forward hooks with early stop.

Hook point names
----------------
``resid_pre.0``
    Input of the first decoder layer (HF ``hidden_states[0]``).
``resid_post.{L}``
    Output of decoder layer ``L`` (HF ``hidden_states[L + 1]`` for every layer but the
    last); negative ``L`` counts from the end. ``resid_post.-1`` is the *raw* residual
    after the last layer, which is not HF's ``hidden_states[-1]``.
``final_norm``
    Output of the model's final norm, which is what HF returns as
    ``hidden_states[-1]`` in transformers 5.x: the paper's embeddings and SAE inputs.
TransformerLens names (``blocks.{i}.hook_out``, ``hook_embed``, ...)
    Used as-is on a ``TransformerBridge``.

The forward pass stops right after the deepest requested point (no later layers,
no LM head) unless ``stop_early=False``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

FINAL_NORM = "final_norm"
_RESID = re.compile(r"^resid_(pre|post)\.(-?\d+)$")


class HookPointError(ValueError):
    """A hook point name or layer index that the model does not have."""


class StopForward(Exception):
    """Raised inside a hook to end the forward pass after the deepest hook point."""


@dataclass(frozen=True, order=True)
class HookPoint:
    """A resolved place in the residual stream.

    Attributes
    ----------
    depth : int
        Sort key: ``-1`` for ``resid_pre.0``, ``L`` for ``resid_post.L``,
        ``n_layers`` for ``final_norm``; TransformerLens names have no depth (``10**9``).
    name : str
        Canonical name (negative layers resolved).
    kind : str
        ``"resid_pre"``, ``"resid_post"``, ``"final_norm"`` or ``"tl"``.
    layer : int | None
        Layer index for residual points.
    """

    depth: int
    name: str
    kind: str
    layer: int | None = None

    def __str__(self) -> str:
        return self.name


def parse_hook_point(spec: str | int, n_layers: int, *, allow_tl: bool = False) -> HookPoint:
    """Resolve a hook point name (or a layer index) for a model with ``n_layers`` layers.

    An integer ``L`` (or the string ``"L"``) means ``resid_post.L``.
    """
    if isinstance(spec, int) or (isinstance(spec, str) and re.fullmatch(r"-?\d+", spec.strip())):
        spec = f"resid_post.{int(spec)}"
    spec = spec.strip()
    if spec in (FINAL_NORM, "final-norm", "norm", "hidden_states[-1]"):
        return HookPoint(n_layers, FINAL_NORM, "final_norm")
    m = _RESID.match(spec)
    if m:
        kind, layer = f"resid_{m.group(1)}", int(m.group(2))
        if not -n_layers <= layer < n_layers:
            raise HookPointError(
                f"layer {layer} is out of range for a model with {n_layers} layers; use "
                f"0..{n_layers - 1} or -{n_layers}..-1 (or 'final_norm' for HF hidden_states[-1])"
            )
        layer %= n_layers
        if kind == "resid_pre":
            if layer != 0:
                # resid_pre.L == resid_post.(L-1): keep one canonical name
                return HookPoint(layer - 1, f"resid_post.{layer - 1}", "resid_post", layer - 1)
            return HookPoint(-1, "resid_pre.0", "resid_pre", 0)
        return HookPoint(layer, f"resid_post.{layer}", "resid_post", layer)
    if allow_tl and re.match(r"^[A-Za-z_][\w.]*$", spec):
        return HookPoint(10**9, spec, "tl")
    raise HookPointError(
        f"unknown hook point {spec!r}; use 'final_norm', 'resid_pre.0', 'resid_post.L' or an "
        "integer layer index L"
    )


def parse_hook_points(
    specs: str | int | Iterable[str | int], n_layers: int, *, allow_tl: bool = False
) -> list[HookPoint]:
    """Resolve several hook points (a comma-separated string or a sequence), deduplicated,
    in forward order."""
    if isinstance(specs, int):
        specs = [specs]
    elif isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    points = {p.name: p for p in (parse_hook_point(s, n_layers, allow_tl=allow_tl) for s in specs)}
    if not points:
        raise HookPointError("no hook point given; e.g. 'final_norm' or '-1'")
    return sorted(points.values())


def _first_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (a Tensor, a tuple, or a ModelOutput)."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    for key in ("last_hidden_state", "hidden_states"):
        value = getattr(output, key, None)
        if torch.is_tensor(value):
            return value
    raise TypeError(f"cannot find the hidden states in a module output of type {type(output)}")


def _replace_first_tensor(output: Any, new: torch.Tensor) -> Any:
    if torch.is_tensor(output):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    if hasattr(output, "last_hidden_state"):
        output.last_hidden_state = new
        return output
    raise TypeError(f"cannot replace the hidden states in a module output of type {type(output)}")


def _hidden_from_pre(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and torch.is_tensor(args[0]):
        return args[0]
    if torch.is_tensor(kwargs.get("hidden_states")):
        return kwargs["hidden_states"]
    raise TypeError("cannot find the hidden-state input of the first decoder layer")


def is_bridge(model: Any) -> bool:
    """True for a TransformerLens ``TransformerBridge`` (duck-typed; no import)."""
    return hasattr(model, "hook_dict") and hasattr(model, "original_model")


#: TransformerLens block aliases that a bridge's ``hook_dict`` may lack, and their targets
_BRIDGE_BLOCK_ALIASES = {"hook_resid_pre": "hook_in", "hook_resid_post": "hook_out"}


def bridge_hook_name(point: HookPoint) -> str:
    """The ``TransformerBridge`` hook name of a point.

    ``resid_pre.0`` -> ``blocks.0.hook_in``, ``resid_post.L`` -> ``blocks.L.hook_out``,
    ``final_norm`` -> ``ln_final.hook_out``; bridge names are returned as they are.
    """
    if point.kind == "resid_post":
        return f"blocks.{point.layer}.hook_out"
    if point.kind == "resid_pre":
        return "blocks.0.hook_in"
    if point.kind == "final_norm":
        return "ln_final.hook_out"
    return point.name


def bridge_hook_module(bridge: Any, point: HookPoint) -> nn.Module:
    """The ``HookPoint`` module of ``bridge`` for a point (see :func:`bridge_hook_name`).

    ``blocks.L.hook_resid_pre`` / ``blocks.L.hook_resid_post`` (HookedTransformer names)
    resolve to ``blocks.L.hook_in`` / ``blocks.L.hook_out`` when the bridge has no alias.
    """
    name = bridge_hook_name(point)
    hooks = bridge.hook_dict
    if name in hooks:
        return hooks[name]
    head, _, last = name.rpartition(".")
    if last in _BRIDGE_BLOCK_ALIASES and f"{head}.{_BRIDGE_BLOCK_ALIASES[last]}" in hooks:
        return hooks[f"{head}.{_BRIDGE_BLOCK_ALIASES[last]}"]
    close = [k for k in hooks if k.split(".")[-1] == last][:5]
    if not close:
        close = [k for k in hooks if k.startswith(("blocks.0.hook_", "ln_final.hook_"))][:5]
    raise HookPointError(
        f"the bridge has no hook point {name!r}; e.g. {close or list(hooks)[:5]} "
        f"({int(bridge.cfg.n_layers)} blocks)"
    )


class ResidualHooks:
    """Context manager placing forward hooks at hook points of an adapter (or a bridge).

    Parameters
    ----------
    target : ModelAdapter | TransformerBridge
        Where to hook.
    points : sequence of HookPoint
        Resolved points (see :func:`parse_hook_points`).
    tower : str | None
        Tower of a dual encoder.
    stop_early : bool
        Raise :class:`StopForward` after the deepest point has been recorded.
    edit : dict[str, callable] | None
        Optional functions ``f(hidden [B, T, d]) -> hidden`` that replace the output at a
        point (used to splice SAE reconstructions); edited outputs are what is recorded.

    Attributes
    ----------
    outputs : dict[str, Tensor]
        Recorded ``[B, T, d]`` activations per point name (detached).
    calls : dict[str, int]
        How many times each hooked module ran (for tests and sanity checks).
    """

    def __init__(
        self,
        target: Any,
        points: Sequence[HookPoint],
        *,
        tower: str | None = None,
        stop_early: bool = True,
        edit: dict[str, Any] | None = None,
        record: bool = True,
    ):
        self.target = target
        self.points = sorted(points)
        self.tower = tower
        self.stop_early = stop_early
        self.edit = dict(edit or {})
        self.record = record
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles: list[Any] = []
        unknown = set(self.edit) - {p.name for p in self.points}
        if unknown:
            raise HookPointError(
                f"edit functions for points that are not hooked: {sorted(unknown)}"
            )

    # -- module lookup -------------------------------------------------------------------
    def _module_for(self, point: HookPoint) -> tuple[nn.Module, str]:
        if is_bridge(self.target):
            return bridge_hook_module(self.target, point), "post"
        layers = self.target.layers(self.tower)
        if point.kind == "resid_pre":
            return layers[0], "pre"
        if point.kind == "resid_post":
            return layers[point.layer], "post"
        if point.kind == "final_norm":
            norm = self.target.final_norm(self.tower)
            if norm is None:  # hidden_states[-1] is the raw output of the last layer
                return layers[len(layers) - 1], "post"
            return norm, "post"
        raise HookPointError(
            f"{point.name!r} is a TransformerLens name; it needs a TransformerBridge"
        )

    # -- hook functions ------------------------------------------------------------------
    def _make_hook(self, point: HookPoint, last: bool, where: str):
        name = point.name
        edit = self.edit.get(name)

        if is_bridge(self.target):
            # bridge names carry no depth: stop once every point has run
            last = True

        def store(hidden: torch.Tensor) -> torch.Tensor | None:
            self.calls[name] = self.calls.get(name, 0) + 1
            new = edit(hidden) if edit is not None else None
            if self.record:
                self.outputs[name] = (new if new is not None else hidden).detach()
            return new

        def done() -> bool:
            return last and self.stop_early and len(self.calls) == len(self.points)

        if where == "pre":

            def pre_hook(module, args, kwargs):
                hidden = _hidden_from_pre(args, kwargs)
                new = store(hidden)
                if done():
                    raise StopForward(name)
                if new is None:
                    return None
                if args and torch.is_tensor(args[0]):
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            return pre_hook

        def post_hook(module, args, output):
            hidden = _first_tensor(output)
            new = store(hidden)
            if done():
                raise StopForward(name)
            return None if new is None else _replace_first_tensor(output, new)

        return post_hook

    def __enter__(self) -> ResidualHooks:
        self.outputs.clear()
        self.calls.clear()
        deepest = self.points[-1]
        for point in self.points:
            module, where = self._module_for(point)
            hook = self._make_hook(point, point is deepest, where)
            if where == "pre":
                handle = module.register_forward_pre_hook(hook, with_kwargs=True)
            else:
                handle = module.register_forward_hook(hook)
            self._handles.append(handle)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def run_with_hooks(
    target: Any,
    batch: Any,
    points: Sequence[HookPoint],
    *,
    tower: str | None = None,
    stop_early: bool = True,
    edit: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Run one forward pass of ``batch`` and return ``{point name: [B, T, d]}``.

    ``target`` is a :class:`~saeprobe.models.ModelAdapter` or a TransformerLens
    ``TransformerBridge`` (then ``batch`` is an :class:`~saeprobe.models.EncodedBatch`
    whose ``input_ids``/``attention_mask``/pixel inputs are passed to the bridge).
    """
    hooks = ResidualHooks(target, points, tower=tower, stop_early=stop_early, edit=edit)
    with torch.inference_mode(), hooks:
        try:
            if is_bridge(target):
                extra = {
                    k: v
                    for k, v in batch.inputs.items()
                    if k not in ("input_ids", "attention_mask")
                }
                target(
                    batch.input_ids, attention_mask=batch.attention_mask, return_type=None, **extra
                )
            else:
                target.forward(batch)
        except StopForward:
            pass
    missing = [p.name for p in points if p.name not in hooks.outputs]
    if missing:
        raise RuntimeError(f"hook points {missing} were not reached in the forward pass")
    return hooks.outputs
