"""Bridge concepts over matched image-text pairs, without forming the dense c x c matrix.

``B = E_gamma[z_img^T z_txt] * (D D^T)`` (rows: image-side concept i, columns: text-side
concept j). Per-concept score = row sum + column sum:

* ``row_i = sum_j B_ij = E_p[z_img[p, i] <d_i, xhat_txt[p]>]`` and
* ``col_j = sum_i B_ij = E_p[z_txt[p, j] <d_j, xhat_img[p]>]``,

with ``xhat = sum_j z_j d_j`` (no decoder bias), so both need only the k active rows of D per
pair. The top pairs ``(i, j)`` are searched exactly inside the block of the ``n_candidates``
concepts with the largest ``|row|`` (image side) and ``|col|`` (text side); with
``n_candidates >= c`` this is the exact top of the full matrix.
"""

from __future__ import annotations

import logging
import warnings
from typing import NamedTuple

import torch

from .codes import Codes, check_codes, paired_decode_dots, transposed_csr

logger = logging.getLogger(__name__)


class BridgeResult(NamedTuple):
    """Bridge scores.

    Attributes
    ----------
    score : Tensor [c]
        ``row + col`` per concept.
    row : Tensor [c]
        Row sums (concept on the image side).
    col : Tensor [c]
        Column sums (concept on the text side).
    top_pairs : Tensor [n, 2]
        ``(image concept i, text concept j)``, largest ``B_ij`` first.
    top_values : Tensor [n]
        ``B_ij`` of those pairs.
    """

    score: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    top_pairs: torch.Tensor
    top_values: torch.Tensor


def _check_pairs(img: Codes, txt: Codes, c: int) -> tuple[Codes, Codes]:
    img = check_codes(img[0], img[1], c)
    txt = check_codes(txt[0], txt[1], c)
    if img.values.shape[0] != txt.values.shape[0]:
        raise ValueError(
            f"matched pairs need as many image rows ({img.values.shape[0]}) as text rows "
            f"({txt.values.shape[0]}); row p of each must be the same pair"
        )
    if img.values.shape[0] == 0:
        raise ValueError("no matched pairs given")
    return img, txt


def _block(codes: Codes, lookup: torch.Tensor, m: int, dtype: torch.dtype) -> torch.Tensor:
    pos = lookup[codes.indices]
    ok = pos >= 0
    out = torch.zeros(codes.values.shape[0], m, dtype=dtype)
    return out.scatter_add_(1, pos.clamp(min=0), torch.where(ok, codes.values.to(dtype), 0))


def _block_csr(codes: Codes, lookup: torch.Tensor, m: int) -> torch.Tensor:
    """CSR ``[m, N]`` of the entries whose concept is in the block (``lookup >= 0``)."""
    pos = lookup[codes.indices]
    keep = (pos >= 0) & (codes.values != 0)
    vals = torch.where(keep, codes.values.float(), 0.0)
    return transposed_csr(vals, torch.where(keep, pos, 0), m)


def bridge_scores(
    img: Codes | tuple[torch.Tensor, torch.Tensor],
    txt: Codes | tuple[torch.Tensor, torch.Tensor],
    dictionary: torch.Tensor,
    n_top_pairs: int = 50,
    n_candidates: int = 1024,
    chunk_size: int = 8192,
    exclude_diagonal: bool = False,
) -> BridgeResult:
    """Bridge scores from sparse codes of matched pairs (row p of ``img`` matches row p of ``txt``).

    Parameters
    ----------
    img, txt : (values [P, k], indices [P, k])
    dictionary : Tensor [c, d]
    n_top_pairs : number of ``(i, j)`` pairs to return.
    n_candidates : size of the candidate block per side for the top-pair search.
    exclude_diagonal : leave ``i == j`` out of the top pairs (scores always include it).
    """
    c = dictionary.shape[0]
    img, txt = _check_pairs(img, txt, c)
    D = dictionary.float()
    P = img.values.shape[0]
    acc = torch.float64
    row = torch.zeros(c, dtype=acc)
    col = torch.zeros(c, dtype=acc)
    for s in range(0, P, chunk_size):
        vi, ii = img.values[s : s + chunk_size].float(), img.indices[s : s + chunk_size]
        vt, it = txt.values[s : s + chunk_size].float(), txt.indices[s : s + chunk_size]
        # row_i += z_img[p, i] <d_i, x_txt[p]>, col_j += z_txt[p, j] <d_j, x_img[p]>
        _, _, di, dt = paired_decode_dots(vi, ii, vt, it, D)
        row.index_add_(0, ii.reshape(-1).long(), (vi * di).reshape(-1).double())
        col.index_add_(0, it.reshape(-1).long(), (vt * dt).reshape(-1).double())
    row /= P
    col /= P
    m = min(n_candidates, c)
    R = torch.argsort(row.abs(), descending=True, stable=True)[:m]
    C = torch.argsort(col.abs(), descending=True, stable=True)[:m]
    block = bridge_block(img, txt, D, R, C, chunk_size)
    if exclude_diagonal:
        block[R[:, None] == C[None, :]] = float("-inf")
    n = min(n_top_pairs, block.numel())
    vals, flat = torch.topk(block.reshape(-1), n)
    keep = torch.isfinite(vals) & (vals != 0)
    vals, flat = vals[keep], flat[keep]
    pairs = torch.stack([R[flat // m], C[flat % m]], 1)
    return BridgeResult(row + col, row, col, pairs, vals)


def bridge_matrix_dense(
    img_dense: torch.Tensor, txt_dense: torch.Tensor, dictionary: torch.Tensor
) -> torch.Tensor:
    """Reference: dense ``E_p[z_img^T z_txt] * (D D^T)`` -> ``[c, c]`` (small c only)."""
    P = img_dense.shape[0]
    D = dictionary.double()
    return (img_dense.double().T @ txt_dense.double() / P) * (D @ D.T)


def bridge_partners(
    concept: int,
    img: Codes | tuple[torch.Tensor, torch.Tensor],
    txt: Codes | tuple[torch.Tensor, torch.Tensor],
    dictionary: torch.Tensor,
    n: int = 5,
    include_self: bool = False,
) -> list[tuple[int, float]]:
    """The concepts ``j`` with the largest ``B_ij + B_ji`` for one concept ``i`` (exact).

    Uses only the pairs where ``i`` is active: ``B_i. = E_p[z_img[p,i] z_txt[p]] * (D d_i)``.

    Parameters
    ----------
    include_self
        Also rank ``j = i`` (its ``2 B_ii`` is the concept bridging with itself: active in an
        image and in the paired text). Off by default: partners are other concepts.

    Returns
    -------
    Up to ``n`` ``(j, B_ij + B_ji)`` pairs, largest first, zero scores left out.
    """
    c = dictionary.shape[0]
    img, txt = _check_pairs(img, txt, c)
    P = img.values.shape[0]
    D = dictionary.double()
    g = D @ D[concept]  # [c]
    out = torch.zeros(c, dtype=torch.float64)
    for a, b in ((img, txt), (txt, img)):
        zi = (a.values.double() * (a.indices == concept)).sum(1)  # [P]
        sel = zi != 0
        if sel.any():
            out.index_add_(
                0, b.indices[sel].reshape(-1), (zi[sel, None] * b.values[sel].double()).reshape(-1)
            )
    out = out / P * g
    if not include_self:
        out[concept] = float("-inf")
    vals, idx = torch.topk(out, min(n, c))
    return [(int(i), float(v)) for i, v in zip(idx, vals) if v != 0 and v != float("-inf")]


def bridge_block(
    img: Codes | tuple[torch.Tensor, torch.Tensor],
    txt: Codes | tuple[torch.Tensor, torch.Tensor],
    dictionary: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    chunk_size: int = 2048,
) -> torch.Tensor:
    """Exact block ``B[rows][:, cols]`` -> ``[len(rows), len(cols)]`` (float64), streaming the
    pairs; memory ``O(chunk * (len(rows) + len(cols)))``."""
    c = dictionary.shape[0]
    img, txt = _check_pairs(img, txt, c)
    rows, cols = torch.as_tensor(rows).long(), torch.as_tensor(cols).long()
    P = img.values.shape[0]
    acc = torch.float64
    lut_r = torch.full((c,), -1, dtype=torch.long)
    lut_r[rows] = torch.arange(len(rows))
    lut_c = torch.full((c,), -1, dtype=torch.long)
    lut_c[cols] = torch.arange(len(cols))
    co = torch.zeros(len(rows), len(cols), dtype=acc)
    for s in range(0, P, chunk_size):
        sl = slice(s, s + chunk_size)
        a = _block_csr(Codes(img.values[sl], img.indices[sl]), lut_r, len(rows))
        b = _block(Codes(txt.values[sl], txt.indices[sl]), lut_c, len(cols), torch.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            co += (a @ b).to(acc)
    D = dictionary.double()
    return (co / P) * (D[rows] @ D[cols].T)
