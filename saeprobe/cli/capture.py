"""``saeprobe capture``: residual-stream activations of a model on a data set, into a store.

Every field of :class:`saeprobe.capture.config.CaptureConfig` is a flag. All arguments,
the data and the hook points are checked before the model is loaded or a file is written.
"""

from __future__ import annotations

import argparse
import logging

from .flags import add_command, add_config_flags, config_from_args
from .runflags import add_run_flags, name_or_folder

logger = logging.getLogger(__name__)


HELP = "capture per-token activations (+ pooled embeddings) into an activation store"
DESCRIPTION = (
    "Run a model over a data set and write per-token activations with their modality "
    "labels to a sharded, resumable, checksummed activation store. Under torchrun each "
    "rank captures its share into its own shards of the same store."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from saeprobe.capture.config import CaptureConfig

    p = add_command(sub, "capture", HELP, description=DESCRIPTION)
    p.add_argument("--config", help="CaptureConfig JSON; flags override it")
    add_run_flags(p, "register the model and its store in")
    dests = add_config_flags(
        p,
        CaptureConfig,
        choices={"dtype": ("fp16", "bf16", "fp32", "float16", "bfloat16", "float32")},
    )
    p.set_defaults(func=run, config_dests=dests)


def build_config(args: argparse.Namespace):
    import json
    from pathlib import Path

    from saeprobe.capture.config import CaptureConfig

    base = json.loads(Path(args.config).read_text()) if args.config else {}
    cfg = config_from_args(CaptureConfig, args, args.config_dests, base)
    if args.run and not cfg.out:  # the store goes into the run folder
        cfg.out = str(Path(args.run) / "models" / name_or_folder(args, cfg.model) / "store")
    return cfg.validate()


def preflight(cfg) -> tuple:
    """Everything that needs no weights: the data source and the hook points' layer range.

    Returns ``(source, model config)``."""
    from saeprobe.data import open_source
    from saeprobe.hooks import parse_hook_points
    from saeprobe.models.registry import layer_count, read_config

    source = open_source(cfg.data, **({"mode": cfg.mode} if cfg.mode else {}))
    config = read_config(cfg.model)
    n_layers = layer_count(config, cfg.tower)
    if n_layers:
        parse_hook_points(cfg.layers, n_layers)
    return source, config


def run(args: argparse.Namespace) -> int:
    import torch

    from saeprobe.capture import capture
    from saeprobe.distributed import init_distributed
    from saeprobe.dtypes import to_torch
    from saeprobe.models import load_model

    cfg = build_config(args)
    source, _ = preflight(cfg)
    if args.run:  # opened (or created) before the store is written into it
        from saeprobe.run import RunWriter

        RunWriter(args.run)
    if not cfg.progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    info = init_distributed()
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and info.world_size > 1:
        device = f"cuda:{info.local_rank}"
    adapter = load_model(cfg.model, dtype=cfg.model_dtype, device=device)
    result = capture(
        adapter,
        source,
        cfg.layers,
        out=cfg.out,
        batch_size=cfg.batch_size,
        pools=cfg.pools,
        skip_system=cfg.skip_system,
        tower=cfg.tower,
        dtype=to_torch(cfg.dtype),
        limit=cfg.limit,
        progress=cfg.progress and info.rank == 0,
        resume=cfg.resume,
        data_spec=str(cfg.data),
        model_name=cfg.model,
        **({"shard_tokens": cfg.shard_tokens} if cfg.shard_tokens else {}),
    )
    if info.rank == 0:
        _report(cfg, result, source, adapter, args)
    return 0


def _report(cfg, result, source, adapter, args) -> None:
    print(f"captured {result.summary()}")
    for hook, path in result.stores.items():
        print(f"store ({hook}): {path}")
    summary = source.skipped_summary() if hasattr(source, "skipped_summary") else ""
    if summary:
        print(f"skipped {summary}")
    if args.run:
        _register(args, cfg, result, adapter)


def _register(args, cfg, result, adapter) -> None:
    """Register the capture in the run folder: one model, or with several hook points one
    model per hook point (``<name>-<hook>``), so the explorer offers each layer in its menu."""
    from saeprobe.run import RunWriter

    name = name_or_folder(args, cfg.model)
    w = RunWriter(args.run)
    several = len(result.stores) > 1
    for hook, store in result.stores.items():
        model = f"{name}-{hook}" if several else name
        w.add_adapter(model, adapter, path=cfg.model, hook_point=hook, pool=cfg.pools[0])
        w.set_part(model, "store", store)
        print(f"registered in run {args.run} as model {model!r} ({hook})")
