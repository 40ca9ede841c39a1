"""The whole concept analysis of one SAE: statistics (store or pooled embeddings), tags,
bridge, attribution, distractors, ablation sweep, and the per-concept features table."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saeprobe import Modality
from saeprobe.atomic import atomic_write, atomic_write_parquet, atomic_write_text
from saeprobe.jsonconfig import JSONConfig

from .ablation import AblationSweep, ablation_sweep
from .attribution import Attribution, retrieval_attribution, top_distractors
from .bridge import BridgeResult, bridge_scores
from .codes import Codes, check_dim, encode_all, sae_decoder_bias, sae_dictionary
from .pairs import Pairs
from .stats import ConceptStats, ConceptStatsAccumulator
from .tags import TagConfig, bridge_concepts, modality_tags, tag_energy_share

logger = logging.getLogger(__name__)

#: the columns of ``features.parquet`` (and of :meth:`AnalysisResult.features`), in order
FEATURE_COLUMNS = (
    "feature",
    "energy",
    "energy_share",
    "frequency",
    "modality_score",
    "tag",
    "bridge_score",
    "attribution",
    "is_distractor",
    "is_bridge",
    "energy_text",
    "energy_image",
)


@dataclass
class AnalysisConfig(JSONConfig):
    """Settings of :func:`analyze` (JSON round-trip with ``to_dict`` / ``from_dict``; each
    field is a ``saeprobe analyze`` flag whose help is the docstring under it)."""

    batch_size: int = 4096
    """Tokens per store batch."""
    max_tokens: int | None = None
    """Stop the statistics pass after this many tokens (default: all)."""
    modality_level: str = "input"
    """input: tau / iota are text / image inputs, the paper's (an input with any image token is an image input); token: TEXT vs IMAGE tokens."""
    exclude_system: bool = True
    """Leave SYSTEM tokens out of the statistics (the paper masks them from SAE training)."""
    convention: str = "text"
    """Modality score convention: text (1 = textual, the paper's) or image (1 = visual)."""
    tags: TagConfig = field(default_factory=TagConfig)
    """Tag thresholds (textual / visual score cut-offs, bridge mass)."""
    top_m: int = 5
    """Top-activating inputs kept per concept (feature cards)."""
    n_top_pairs: int = 50
    """Bridge: concept pairs kept."""
    n_candidates: int = 1024
    """Bridge: candidate block size of the top-pair search."""
    n_distractors: int = 16
    """Concepts flagged as distractors (highest retrieval attribution)."""
    ablation_method: str = "subtract"
    """How distractors are removed: subtract, zero or project."""
    ablation_steps: list[int] | None = None
    """Numbers of ablated concepts in the sweep, e.g. 0,1,2,4,8 (default: 0, 1, 2, 4, ... up to n_distractors)."""
    ks: tuple[int, ...] = (1, 5, 10)
    """Recall@k cut-offs, e.g. 1,5,10."""
    query_side: str = "text"
    """Ablation sweep direction: text (text queries rank images) or image."""
    normalize_attribution: bool = True
    """Attribute the cosine (divide by the norms) rather than the dot product."""
    sweep_queries: int | None = None
    """Evaluate the ablation sweep on this many evenly spaced queries (all candidates are searched; default: every query)."""
    device: str = "cpu"
    """Device of the SAE encoder."""

    def __post_init__(self) -> None:
        if isinstance(self.tags, dict):
            self.tags = TagConfig.from_dict(self.tags)
        self.ks = tuple(int(k) for k in self.ks)
        if self.modality_level not in ("input", "token"):
            raise ValueError(
                f"modality_level must be 'input' or 'token', got {self.modality_level!r}"
            )
        if self.query_side not in ("text", "image"):
            raise ValueError(f"query_side must be 'text' or 'image', got {self.query_side!r}")


@dataclass
class AnalysisResult:
    """Everything :func:`analyze` computed (``bridge`` etc. are None without pairs)."""

    stats: ConceptStats
    tags: list[str]
    is_bridge: torch.Tensor
    tag_share: dict[str, float]
    bridge: BridgeResult | None = None
    attribution: Attribution | None = None
    distractors: list[int] = field(default_factory=list)
    sweep: AblationSweep | None = None
    pair_codes: tuple[Codes, Codes] | None = None
    dictionary: torch.Tensor | None = None
    config: AnalysisConfig = field(default_factory=AnalysisConfig)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def c(self) -> int:
        return self.stats.c

    def features(self) -> dict[str, list]:
        """Columns of the features table (:data:`FEATURE_COLUMNS`, in order), one row per
        concept."""
        c = self.c
        nan = [float("nan")] * c
        dset = set(self.distractors)
        return {
            "feature": list(range(c)),
            "energy": self.stats.energy.tolist(),
            "energy_share": self.stats.energy_share.tolist(),
            "frequency": self.stats.frequency.tolist(),
            "modality_score": self.stats.modality_score.tolist(),
            "tag": list(self.tags),
            "bridge_score": self.bridge.score.tolist() if self.bridge is not None else nan,
            "attribution": self.attribution.attribution.tolist()
            if self.attribution is not None
            else nan,
            "is_distractor": [i in dset for i in range(c)],
            "is_bridge": self.is_bridge.tolist(),
            "energy_text": self.stats.energy_text.tolist(),
            "energy_image": self.stats.energy_image.tolist(),
        }

    def summary(self) -> dict[str, Any]:
        s = {
            "c": self.c,
            "modality_convention": self.stats.modality_convention,
            "rows": self.stats.n_rows,
            "energy_share_per_tag": self.tag_share,
            "textual_energy_share": self.tag_share.get("textual", float("nan")),
            "distractors": self.distractors,
        }
        if self.attribution is not None:
            s["mean_pair_similarity"] = self.attribution.mean_similarity
            s["mean_reconstructed_similarity"] = self.attribution.mean_reconstructed
            s["n_pairs"] = self.attribution.n_pairs
        if self.sweep is not None:
            s["ablation"] = self.sweep.to_dict()
        s.update(self.meta)
        return s


def _sae_device_dtype(sae: Any) -> tuple[torch.device, torch.dtype]:
    p = next(iter(sae.parameters()))
    return p.device, p.dtype


def stats_from_store(
    sae: Any, store: Any, cfg: AnalysisConfig | None = None, progress: bool = True
) -> ConceptStats:
    """Stream an :class:`saeprobe.store.ActivationStore` through the SAE into concept statistics.

    Memory is bounded by one store batch plus ``O(c)`` accumulators.
    """
    from tqdm.auto import tqdm

    cfg = cfg or AnalysisConfig()
    check_dim(sae, int(store.d), "the store's activations")
    c = int(sae_dictionary(sae).shape[0])
    exclude = ["system"] if cfg.exclude_system else None
    image_sample: torch.Tensor | None = None
    if cfg.modality_level == "input":
        # pre-pass over labels only: an input with any image token is an image input
        n_max = 0
        img_ids = []
        for b in store.batches(
            1 << 20, shuffle=False, fields=("sample_id", "modality"), exclude=exclude
        ):
            n_max = max(n_max, int(b.sample_id.max()) + 1 if b.sample_id.numel() else 0)
            img_ids.append(b.sample_id[b.modality.long() == int(Modality.IMAGE)])
        image_sample = torch.zeros(n_max, dtype=torch.bool)
        if img_ids:
            image_sample[torch.cat(img_ids)] = True
    acc = ConceptStatsAccumulator(c, top_m=cfg.top_m)
    dev, dt = _sae_device_dtype(sae)
    total = store.count_tokens(exclude=exclude)
    if cfg.max_tokens is not None:
        total = min(total, cfg.max_tokens)
    seen = 0
    bar = tqdm(total=total, unit="tok", desc="concept stats", disable=not progress)
    with torch.no_grad():
        for b in store.batches(cfg.batch_size, shuffle=False, exclude=exclude):
            if b.modality is None:
                raise ValueError(
                    "the store has no modality labels; capture it with saeprobe capture"
                )
            acts = b.acts
            n = acts.shape[0]
            if cfg.max_tokens is not None and seen + n > cfg.max_tokens:
                n = cfg.max_tokens - seen
            if n <= 0:
                break
            codes = sae.encode_sparse(acts[:n].to(dev, dt))
            mod = b.modality[:n].long()
            sid = b.sample_id[:n].long()
            if image_sample is not None:
                mod = torch.where(image_sample[sid], int(Modality.IMAGE), int(Modality.TEXT))
            acc.update(codes.values.float().cpu(), codes.indices.cpu(), mod, sid)
            seen += n
            bar.update(n)
            if cfg.max_tokens is not None and seen >= cfg.max_tokens:
                break
    bar.close()
    return acc.result(cfg.convention)


def stats_from_codes(
    codes: Codes,
    modality: torch.Tensor,
    c: int,
    cfg: AnalysisConfig | None = None,
    sample_id: torch.Tensor | None = None,
) -> ConceptStats:
    """Concept statistics of in-memory codes (e.g. of pooled embeddings), one label per row."""
    cfg = cfg or AnalysisConfig()
    acc = ConceptStatsAccumulator(c, top_m=cfg.top_m if sample_id is not None else 0)
    acc.update(codes.values, codes.indices, modality, sample_id)
    return acc.result(cfg.convention)


def analyze(
    sae: Any,
    store: Any = None,
    pairs: Pairs | None = None,
    cfg: AnalysisConfig | None = None,
    stats: ConceptStats | None = None,
    progress: bool = True,
) -> AnalysisResult:
    """Run the analysis. Statistics come from ``stats`` if given, else from ``store``, else
    from the codes of the pooled ``pairs`` (image rows labelled IMAGE, text rows TEXT).
    Bridge, attribution, distractors and the ablation sweep need ``pairs``."""
    cfg = cfg or AnalysisConfig()
    D = sae_dictionary(sae).float().cpu()
    c = D.shape[0]
    bias = sae_decoder_bias(sae)
    pair_codes = None
    if pairs is not None:
        check_dim(sae, pairs.d, "the pair embeddings")
        img_codes = encode_all(sae, pairs.image_emb)
        txt_codes = encode_all(sae, pairs.text_emb)
        pair_codes = (img_codes, txt_codes)
    if stats is None:
        if store is not None:
            stats = stats_from_store(sae, store, cfg, progress)
        elif pair_codes is not None:
            codes = Codes(
                torch.cat([pair_codes[0].values, pair_codes[1].values]),
                torch.cat([pair_codes[0].indices, pair_codes[1].indices]),
            )
            P = pairs.n
            mod = torch.cat(
                [torch.full((P,), int(Modality.IMAGE)), torch.full((P,), int(Modality.TEXT))]
            )
            stats = stats_from_codes(codes, mod, c, cfg)  # rows are not data items: no top inputs
        else:
            raise ValueError("analyze needs an activation store, pairs, or precomputed stats")
    tags = modality_tags(stats.modality_score, stats.energy, cfg.tags, stats.modality_convention)
    result = AnalysisResult(
        stats=stats,
        tags=tags,
        is_bridge=torch.zeros(c, dtype=torch.bool),
        tag_share={},
        config=cfg,
        pair_codes=pair_codes,
        dictionary=D,
    )
    if pair_codes is not None:
        img_codes, txt_codes = pair_codes
        result.bridge = bridge_scores(
            img_codes, txt_codes, D, n_top_pairs=cfg.n_top_pairs, n_candidates=cfg.n_candidates
        )
        result.is_bridge = bridge_concepts(result.bridge.score, cfg.tags)
        if cfg.query_side == "text":
            xq, xc, cq, cc = pairs.text_emb, pairs.image_emb, txt_codes, img_codes
        else:
            xq, xc, cq, cc = pairs.image_emb, pairs.text_emb, img_codes, txt_codes
        result.attribution = retrieval_attribution(
            cq, cc, D, x_q=xq, x_c=xc, normalize=cfg.normalize_attribution
        )
        result.distractors = top_distractors(
            result.attribution.attribution, cfg.n_distractors
        ).tolist()
        sq, sc, relevant = retrieval_task(pairs, cfg.query_side)
        result.sweep = ablation_sweep(
            xq[sq],
            xc[sc],
            Codes(cq.values[sq], cq.indices[sq]),
            Codes(cc.values[sc], cc.indices[sc]),
            D,
            result.distractors,
            relevant=relevant,
            steps=cfg.ablation_steps,
            ks=cfg.ks,
            method=cfg.ablation_method,
            bias=bias,
            query_rows=_spaced(len(sq), cfg.sweep_queries),
        )
    result.tag_share = tag_energy_share(
        tags, stats.energy, result.is_bridge if pairs is not None else None
    )
    return result


def retrieval_task(
    pairs: Pairs, query_side: str = "text"
) -> tuple[torch.Tensor, torch.Tensor, list[set[int]]]:
    """Query rows, candidate rows and relevant sets of the matched-pair retrieval task.

    Without ``pairs.image_keys`` row p is relevant to row p. With them (several captions per
    image) each image is a single candidate (t->i) or a single query (i->t), so duplicates
    neither tie nor count twice.
    """
    n = pairs.n
    if pairs.image_keys is None:
        rows = torch.arange(n)
        return rows, rows, [{p} for p in range(n)]
    first: dict[str, int] = {}
    group, first_rows = [], []
    for p, key in enumerate(pairs.image_keys):
        if key not in first:
            first[key] = len(first)
            first_rows.append(p)
        group.append(first[key])
    uniq = torch.tensor(first_rows, dtype=torch.long)
    if query_side == "text":
        return torch.arange(n), uniq, [{g} for g in group]
    captions: list[set[int]] = [set() for _ in first]
    for p, g in enumerate(group):
        captions[g].add(p)
    return uniq, torch.arange(n), captions


def _spaced(n: int, m: int | None) -> torch.Tensor | None:
    if m is None or m >= n:
        return None
    return torch.linspace(0, n - 1, m).round().long().unique()


def write_features(result: AnalysisResult, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``features.parquet`` and ``features.csv`` (one row per concept) atomically."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    out = Path(out_dir)
    cols = result.features()
    table = pa.table(cols)
    pq_path, csv_path = out / "features.parquet", out / "features.csv"
    atomic_write_parquet(pq_path, table, what="features table")
    atomic_write(csv_path, lambda p: pacsv.write_csv(table, p), what="features table")
    return pq_path, csv_path


def write_summary(result: AnalysisResult, out_dir: str | os.PathLike) -> Path:
    """Write ``summary.json`` (config, tag shares, ablation sweep) atomically."""
    path = Path(out_dir) / "summary.json"
    obj = {"summary": result.summary(), "config": result.config.to_dict()}

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return atomic_write_text(path, json.dumps(clean(obj), indent=2), what="analysis summary")
