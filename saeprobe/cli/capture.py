"""``saeprobe capture``: residual-stream activations of a model on a data set, into a store."""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "capture",
        help="capture per-token activations (+ pooled embeddings) into an activation store",
        description=(
            "Run a model over a data set and write per-token activations with their modality "
            "labels to a sharded, resumable activation store. Under torchrun each rank captures "
            "its share into its own shards of the same store."
        ),
    )
    p.add_argument("--model", required=True, help="hub id or local folder of a supported model")
    p.add_argument(
        "--data",
        required=True,
        help="COCO-Caption parquet (file/folder), an image folder with captions.csv/jsonl, "
        "or an M-BEIR task folder",
    )
    p.add_argument(
        "--layers",
        default="final_norm",
        help="hook points, comma-separated: 'final_norm' (HF hidden_states[-1], the paper's), "
        "an integer L or 'resid_post.L' (raw residual after layer L; -1 = last), 'resid_pre.0'",
    )
    p.add_argument("--out", required=True, help="store folder (created; resumed if it exists)")
    p.add_argument(
        "--pool",
        default="mean",
        help="poolings to store, comma-separated (mean, "
        "mean_data, last, mean_text, mean_image, mean_template, native)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float16", help="storage dtype: float16, bfloat16, float32")
    p.add_argument(
        "--model-dtype",
        default=None,
        help="model dtype (default: float32 on CPU, bfloat16 on CUDA)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument(
        "--mode",
        default=None,
        help="data mode, e.g. images+captions (default), images, captions, pairs",
    )
    p.add_argument("--tower", default=None, help="dual encoders: text or vision")
    p.add_argument(
        "--skip-system",
        action="store_true",
        help="drop leading system-prompt tokens (the paper's SAE training data)",
    )
    p.add_argument("--shard-tokens", type=int, default=None, help="tokens per shard")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing store")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from saeprobe.capture import capture
    from saeprobe.data import open_source
    from saeprobe.distributed import init_distributed
    from saeprobe.models import load_model, resolve_dtype

    info = init_distributed()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and info.world_size > 1:
        device = f"cuda:{info.local_rank}"
    model_dtype = resolve_dtype(args.model_dtype) or (
        torch.bfloat16 if device.startswith("cuda") else torch.float32
    )
    adapter = load_model(args.model, dtype=model_dtype, device=device)
    source_kwargs = {"mode": args.mode} if args.mode else {}
    source = open_source(args.data, **source_kwargs)
    store_kwargs = {}
    if args.shard_tokens:
        store_kwargs["shard_tokens"] = args.shard_tokens
    result = capture(
        adapter,
        source,
        args.layers,
        out=args.out,
        batch_size=args.batch_size,
        pools=[p for p in args.pool.split(",") if p],
        skip_system=args.skip_system,
        tower=args.tower,
        dtype=resolve_dtype(args.dtype),
        limit=args.limit,
        progress=not args.no_progress and info.rank == 0,
        resume=not args.no_resume,
        data_spec=str(args.data),
        model_name=args.model,
        **store_kwargs,
    )
    if info.rank == 0:
        print(f"captured {result.summary()}")
        print(f"store: {result.out}")
    return 0
