"""``saeprobe retrieve``: zero-shot retrieval on an M-BEIR task, base vs whitening."""

from __future__ import annotations

import argparse
import logging

from .flags import add_command
from .runflags import add_run_flags, name_or_folder

logger = logging.getLogger(__name__)


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by ``retrieve`` and ``sweep``."""
    p.add_argument("--model", required=True, help="hub id or local folder of a supported model")
    p.add_argument(
        "--data",
        required=True,
        help="M-BEIR task folder in the MRBench layout (query-*.parquet, corpus-*.parquet, "
        "qrels-*.parquet)",
    )
    p.add_argument(
        "--task",
        type=int,
        default=None,
        help="the paper's task type 1-8 (default: inferred from the modalities)",
    )
    p.add_argument("--alpha", type=float, default=0.1, help="ReAlign shrinkage (default 0.1)")
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument(
        "--stats",
        default="separate",
        help="whitening statistics: separate (each side its own, the reference), candidates, joint",
    )
    p.add_argument(
        "--pool",
        default=None,
        help="pooling: mean (MLLM default, the paper's), "
        "mean_data, last, ...; native (dual-encoder default)",
    )
    p.add_argument("--limit-queries", type=int, default=None, help="only the first N queries")
    p.add_argument(
        "--limit-corpus",
        type=int,
        default=None,
        help="only the first N candidates (smoke tests; changes the task)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--cache",
        default=None,
        help="embedding cache folder (default ~/.cache/saeprobe/retrieval; 'none' to disable)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument(
        "--model-dtype",
        default="auto",
        help="model dtype: auto (bf16 where the device runs it natively, else fp32), fp32, bf16, fp16",
    )
    p.add_argument("--force", action="store_true", help="replace an existing results file")
    p.add_argument("--depth", type=int, default=100, help="neighbours retrieved per query")


HELP = "zero-shot retrieval on an M-BEIR task: base vs ReAlign and other whitening"
DESCRIPTION = (
    "Embed the queries and candidates of an M-BEIR task (paper prompts; mean-pooled "
    "final_norm for MLLMs, the projected embedding for CLIP/SigLIP), cache them, and "
    "print Recall@1/5/10, MRR and nDCG@10 for each whitening method. Under torchrun "
    "each rank embeds its share (through the cache folder) and rank 0 scores."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "retrieve", HELP, description=DESCRIPTION)
    add_common(p)
    p.add_argument(
        "--whiten",
        default="realign",
        help="comma-separated methods compared "
        "with the base embedding: realign, zca, pca, ledoit_wolf, oas, abtt",
    )
    p.add_argument(
        "--layer",
        default=None,
        help="hook point: final_norm (the paper's; the default) or resid_post.L; with --run, the "
        "default is the hook point the model was registered with",
    )
    p.add_argument("--out", default=None, help="results JSON path")
    add_run_flags(p, "add the task's embeddings and scores to")
    p.add_argument(
        "--task-name",
        default=None,
        help="task name in the run folder (default: the --data folder name)",
    )
    p.set_defaults(func=run)


def setup(args: argparse.Namespace):
    """Load the model and the task; returns (adapter, task, cache, rank)."""
    import torch

    from saeprobe.cli import CLIError
    from saeprobe.data.mbeir import open_mbeir
    from saeprobe.models import load_model
    from saeprobe.retrieval import DEFAULT_CACHE, EmbeddingCache

    try:
        from saeprobe.distributed import init_distributed

        info = init_distributed()
        rank, world, local = info.rank, info.world_size, info.local_rank
    except ImportError:  # pragma: no cover
        rank, world, local = 0, 1, 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and world > 1:
        device = f"cuda:{local}"
    if args.limit_queries is not None and args.limit_queries < 1:
        raise CLIError("--limit-queries must be >= 1")
    task = open_mbeir(
        args.data, task=args.task, limit_queries=args.limit_queries, limit_corpus=args.limit_corpus
    )
    adapter = load_model(args.model, dtype=args.model_dtype, device=device)
    cache_dir = None if str(args.cache).lower() == "none" else (args.cache or DEFAULT_CACHE)
    return adapter, task, EmbeddingCache(cache_dir), rank


def check_out(path, force: bool) -> None:
    """Refuse to overwrite a results file unless --force (checked before any work)."""
    from pathlib import Path

    from saeprobe.cli import CLIError

    if path and Path(path).exists() and not force:
        raise CLIError(f"{path} already exists; pass --force to replace it or choose another --out")


def make_config(args: argparse.Namespace, methods: list[str]):
    from saeprobe.retrieval import RetrievalConfig

    return RetrievalConfig(
        methods=methods,
        alpha=args.alpha,
        eps=args.eps,
        stats=args.stats,
        pool=args.pool,
        layer=getattr(args, "layer", "final_norm"),
        batch_size=args.batch_size,
        depth=args.depth,
        device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    from saeprobe.retrieval import evaluate, format_table, write_json
    from saeprobe.whitening import canonical_method

    methods = ["none"]
    for m in (args.whiten or "").split(","):
        m = m.strip()
        if m and canonical_method(m) not in methods:
            methods.append(canonical_method(m))
    args.layer = resolve_layer(args)
    config = make_config(args, methods)
    check_out(args.out, args.force)
    adapter, task, cache, rank = setup(args)
    result = evaluate(adapter, task, config, cache=cache)
    if result is None:  # not rank 0
        return 0
    print(f"{task}  model={args.model}  layer={result.layer}  pool={result.pool}")
    print(format_table(result.results))
    if args.out:
        path = write_json(result.to_dict(), args.out)
        print(f"results: {path}")
    if args.run:
        where = add_to_run(args, adapter, task, result)
        print(f"embeddings and scores: {where}")
    return 0


def resolve_layer(args: argparse.Namespace) -> str:
    """``--layer``, else (with ``--run``) the registered model's hook point, else
    ``final_norm``; a layer other than the registered one is refused (one model, one layer)."""
    from saeprobe.cli import CLIError
    from saeprobe.run import RunFolder, is_run_folder

    registered = None
    if args.run and is_run_folder(args.run):
        folder = RunFolder(args.run)
        name = name_or_folder(args, args.model)
        if name in folder.models:
            registered = folder.model(name).get("hook_point")
    if args.layer and registered and args.layer != registered:
        raise CLIError(
            f"model {name!r} of run {args.run} is at hook point {registered}, not "
            f"{args.layer}; drop --layer, or pass --name for a model of that layer"
        )
    return args.layer or registered or "final_norm"


def add_to_run(args: argparse.Namespace, adapter, task, result) -> str:
    """Register the model (when new) and the task's embeddings + scores in ``--run``."""
    from pathlib import Path

    from saeprobe.run import RunWriter
    from saeprobe.run.layout import check_name

    writer = RunWriter(args.run)
    name = name_or_folder(args, args.model)
    if name not in writer.index["models"]:
        writer.add_adapter(
            name, adapter, path=args.model, hook_point=result.layer, pool=result.pool
        )
    task_name = check_name(args.task_name or Path(str(args.data).rstrip("/")).name, "task")
    q, c = result.embeddings
    modality = {"text": "text", "image": "image"}
    folder = writer.add_task(
        name,
        task_name,
        queries=q,
        candidates=c,
        relevant=task.relevant_rows(),
        query_ids=task.queries.ids,
        candidate_ids=task.corpus.ids,
        query_modality=modality.get(task.queries.kind),
        candidate_modality=modality.get(task.corpus.kind),
        task_type=task.task,
        results=result.to_dict(),
    )
    return str(folder)
