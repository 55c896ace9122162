"""Distributed randomized SVD (Halko, Martinsson & Tropp 2011) over Spark row blocks.

A sparse m × n matrix ``A`` lives in Spark as two RDDs of row blocks:
``(block_id, scipy CSR)`` for the rows of ``A`` and for the rows of ``Aᵀ``.
Keeping ``Aᵀ`` as its own row blocks makes both products the algorithm needs,
``A X`` and ``Aᵀ X``, embarrassingly parallel: each task multiplies its block
by a broadcast tall-skinny dense matrix ``X`` and returns its rows of the result.
Nothing sparse ever reaches the driver.

Algorithm (k = rank + oversampling), with re-orthonormalisation after every
product so power iterations do not lose the small singular directions
(Halko et al., Algorithm 4.4):

    Y = A Ω                   Ω ~ N(0, 1), n × k, seeded
    Q = orth(Y)
    repeat power_iters:  Q' = orth(Aᵀ Q);  Q = orth(A Q')
    Bᵀ = Aᵀ Q                 (n × k, B = Qᵀ A is k × n)
    Bᵀ = Q₂ R                 (orthonormalised like Y, R is k × k)
    Rᵀ = Ũ Σ Wᵀ               (k × k SVD on the driver)
    A ≈ (Q Ũ) Σ (Q₂ W)ᵀ

``orth`` is Cholesky QR on the distributed tall-skinny matrix: the Gram matrix
``G = Σ_b Y_bᵀ Y_b`` (k × k) is reduced from the blocks, the driver factors it
(``G = RᵀR``, after scaling the columns to unit norm) and broadcasts ``R⁻¹``;
every block computes ``Y_b R⁻¹``. One pass loses about ``κ(Y)²·2⁻⁵³`` of
orthogonality; κ(Y) is read off G, and when that bound is above 1e-9 a second
pass runs (CholeskyQR2, orthogonal to machine precision up to κ ~ 1e7). A Gram
matrix that is not numerically positive definite (rank-deficient sample) falls
back to an eigen-decomposition with the tiny eigenvalues clamped.

Precision: sparse blocks and the broadcast factors are float32 (the products
are memory-bound, halving bytes nearly halves time); Gram matrices,
triangular factors and the small SVD are float64.

Memory model (k = rank + oversampling, B row blocks, nnz of A):
- driver: one or two dense n × k float32 factors (``4·n·k`` bytes each), plus
  k × k float64 matrices; never a sparse block.
- executors: cached blocks ``2 · nnz · 8`` bytes (float32 value + int32 column
  index, for A and Aᵀ), the broadcast factor ``4·n·k`` per executor, and per task
  its dense output rows ``8 · (m/B) · k``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

FACTOR_DTYPE = np.float32
ORTHO_TOL = 1e-9  # accepted ‖QᵀQ − I‖ bound after one Cholesky QR pass (factors are float32 anyway)


@dataclass
class BlockSparse:
    """A sparse m × n matrix as row blocks of A and of Aᵀ in two cached RDDs.

    ``row_offsets[b]:row_offsets[b+1]`` are the rows of A held by block b of
    ``rows``; ``col_offsets`` plays the same role for the blocks of Aᵀ.
    """

    rows: Any  # RDD[(int, csr_matrix)]
    cols: Any  # RDD[(int, csr_matrix)]
    row_offsets: np.ndarray
    col_offsets: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.row_offsets[-1]), int(self.col_offsets[-1])

    def unpersist(self) -> None:
        self.rows.unpersist()
        self.cols.unpersist()

    def to_scipy(self) -> sp.csr_matrix:
        """Assemble A on the driver (tests and small matrices only)."""
        blocks = sorted(self.rows.collect(), key=lambda kv: kv[0])
        if not blocks:
            return sp.csr_matrix(self.shape, dtype=np.float32)
        return sp.vstack([m for _, m in blocks], format="csr")

    def frobenius_sq(self) -> float:
        """‖A‖²_F, exact, summed over the blocks."""
        return float(self.rows.map(lambda kv: float(np.square(kv[1].data, dtype=np.float64).sum())).sum())


def even_offsets(n: int, blocks: int) -> np.ndarray:
    """Offsets of ``blocks`` contiguous ranges covering 0..n (sizes differ by at most one)."""
    blocks = max(1, min(blocks, max(n, 1)))
    return np.linspace(0, n, blocks + 1).round().astype(np.int64)


def distribute(sc, matrix: sp.spmatrix, blocks: int) -> BlockSparse:
    """Split a scipy matrix into cached row blocks of A and Aᵀ (tests and baselines)."""
    a = sp.csr_matrix(matrix, dtype=np.float32)
    at = a.T.tocsr()
    row_off, col_off = even_offsets(a.shape[0], blocks), even_offsets(a.shape[1], blocks)

    def split(m: sp.csr_matrix, off: np.ndarray) -> list[tuple[int, sp.csr_matrix]]:
        return [(b, m[off[b]:off[b + 1]]) for b in range(len(off) - 1)]

    rows = sc.parallelize(split(a, row_off), len(row_off) - 1).cache()
    cols = sc.parallelize(split(at, col_off), len(col_off) - 1).cache()
    return BlockSparse(rows, cols, row_off, col_off)


# --- distributed dense helpers -------------------------------------------------

# The product streams the sparse block once per panel of the dense factor's columns, and each
# non-zero gathers a row of that panel: the panel should stay in the last-level cache (two tasks
# share it on 2 cores; docs/architecture.md, "Pre-training"). Measured on PPMI row blocks
# (benchmarks/svd_panels.py): 64 columns at 27k rows 1.9x faster than 128, 32 at 54k 3.9x,
# 16 at 109k about 2.2x.
PANEL_BYTES = 8 << 20
FACTOR_ITEMSIZE = np.dtype(FACTOR_DTYPE).itemsize


def panel_width(rows: int) -> int:
    """Columns of the dense factor per sparse-product pass: the widest power of two in 8..128
    whose ``rows × width`` float32 panel fits in ``PANEL_BYTES``."""
    width = 128
    while width > 8 and rows * width * FACTOR_ITEMSIZE > PANEL_BYTES:
        width //= 2
    return width


def sparse_times_dense(m: sp.csr_matrix, x: np.ndarray, width: int | None = None) -> np.ndarray:
    """``m @ x`` (float64 out) in panels of ``width`` columns of ``x`` (default :func:`panel_width`):
    both engines' product."""
    out = np.empty((m.shape[0], x.shape[1]), dtype=np.float64)
    width = width or panel_width(x.shape[0])
    for lo in range(0, x.shape[1], width):
        out[:, lo:lo + width] = m @ np.ascontiguousarray(x[:, lo:lo + width])
    return out


def _times(blocks, factor_bc):
    """Row blocks of (sparse blocks) @ X for a broadcast dense X; float64 output."""
    return blocks.mapValues(lambda m: sparse_times_dense(m, factor_bc.value))


def _gram(dense_blocks) -> np.ndarray:
    return dense_blocks.map(lambda kv: kv[1].T @ kv[1]).reduce(np.add)


def _inverse_factor(gram: np.ndarray) -> np.ndarray:
    """T such that Y T has orthonormal columns, given G = YᵀY.

    Cholesky (G = RᵀR, T = R⁻¹) when G is numerically positive definite,
    else the eigen-decomposition G = V Λ Vᵀ with Λ clamped (T = V Λ^-1/2).
    """
    try:
        r = scipy.linalg.cholesky(gram, lower=False)
        return scipy.linalg.solve_triangular(r, np.eye(len(gram)), lower=False)
    except np.linalg.LinAlgError:
        lam, vec = np.linalg.eigh(gram)
        floor = max(lam.max(), 1e-300) * 1e-14
        return vec / np.sqrt(np.maximum(lam, floor))


def _cholesky_qr(sc, y_blocks, n: int, k: int, want_q: bool = True) -> tuple[np.ndarray | None, np.ndarray, int]:
    """Cholesky QR of a distributed tall-skinny Y (n × k): returns (Q collected, R, passes), Y = Q R.

    Pass 1 is one Spark job: the sparse product fills the cached blocks of Y
    and their Gram matrix is reduced. The orthogonality lost by one Cholesky
    QR pass is about ``κ(Y)² · 2⁻⁵³``, and κ(Y)² = κ(G) is known on the driver
    from the k × k Gram matrix, so a second pass (CholeskyQR2, one more job)
    runs only when that bound exceeds ``ORTHO_TOL``. The last job collects
    the blocks of ``Y T`` (the next product broadcasts them).
    """
    y_blocks = y_blocks.cache()
    passes = 1
    try:
        gram = _gram(y_blocks)
        t = _equilibrated_inverse_factor(gram)
        if _condition(gram) * np.finfo(np.float64).eps > ORTHO_TOL:
            t1_bc = sc.broadcast(t)
            t = t @ _equilibrated_inverse_factor(_gram(y_blocks.mapValues(lambda y: y @ t1_bc.value)))
            passes = 2
        q = None
        if want_q:
            t_bc = sc.broadcast(t)
            q = _collect(y_blocks.mapValues(lambda y: (y @ t_bc.value).astype(FACTOR_DTYPE)), n, k)
    finally:
        y_blocks.unpersist()
    return q, np.linalg.pinv(t), passes


def _condition(gram: np.ndarray) -> float:
    scale = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    lam = np.linalg.eigvalsh(gram / np.outer(scale, scale))
    return float(lam[-1] / max(lam[0], 1e-300))


def _equilibrated_inverse_factor(gram: np.ndarray) -> np.ndarray:
    # Equilibrate columns first: a sample whose columns differ by orders of
    # magnitude would otherwise make the Gram matrix needlessly ill-conditioned.
    scale = np.sqrt(np.maximum(np.diag(gram), 1e-300))
    return _inverse_factor(gram / np.outer(scale, scale)) / scale[:, None]


def _collect(dense_blocks, n: int, k: int) -> np.ndarray:
    out = np.empty((n, k), dtype=FACTOR_DTYPE)
    row = 0
    for _, block in sorted(dense_blocks.collect(), key=lambda kv: kv[0]):
        out[row:row + len(block)] = block
        row += len(block)
    if row != n:
        raise RuntimeError(f"collected {row} rows, expected {n}")
    return out


@dataclass
class SVDResult:
    U: np.ndarray        # m × rank, float64, orthonormal columns (left singular vectors)
    s: np.ndarray        # rank, float64, descending
    stats: dict          # products, Gram reductions, ...
    W: np.ndarray | None = None  # n × rank, float64, right singular vectors (fold-in of new rows: m W = u Σ)


def randomized_svd(sc, a: BlockSparse, rank: int, oversampling: int = 10, power_iters: int = 2,
                   seed: int = 42) -> SVDResult:
    """Top-``rank`` left singular vectors and singular values of a distributed sparse matrix."""
    m, n = a.shape
    k = min(rank + oversampling, m, n)

    def orth_product(transposed: bool, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        bc = sc.broadcast(factor)
        try:
            return _cholesky_qr(sc, _times(a.cols if transposed else a.rows, bc), n if transposed else m, k)
        finally:
            bc.destroy()

    return _halko(orth_product, m, n, rank, oversampling, power_iters, seed)


def randomized_svd_local(a: sp.spmatrix, rank: int, oversampling: int = 10, power_iters: int = 2,
                         seed: int = 42) -> SVDResult:
    """The same algorithm on one in-memory sparse matrix (the local pre-training engine): the products
    are scipy's, orthonormalisation is Householder QR; same seed, same Ω, so the same subspace as
    :func:`randomized_svd` up to rounding."""
    a = sp.csr_matrix(a, dtype=FACTOR_DTYPE)
    at = a.T.tocsr()

    def orth_product(transposed: bool, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        q, r = np.linalg.qr(sparse_times_dense(at if transposed else a, factor))
        signs = np.where(np.diag(r) < 0, -1.0, 1.0)  # R with a positive diagonal, as Cholesky QR gives
        return (q * signs).astype(FACTOR_DTYPE), r * signs[:, None], 1

    return _halko(orth_product, a.shape[0], a.shape[1], rank, oversampling, power_iters, seed)


def _halko(orth_product, m: int, n: int, rank: int, oversampling: int, power_iters: int,
           seed: int) -> SVDResult:
    """The algorithm of the module docstring over ``orth_product(transposed, X) -> (Q, R, passes)``,
    Q R = A X (or Aᵀ X): the one place both engines share."""
    k = min(rank + oversampling, m, n)
    rank = min(rank, k)
    if rank < 1:
        raise ValueError(f"cannot take a rank-{rank} SVD of a {m} × {n} matrix")
    rng = np.random.default_rng(seed)
    stats = {"k": k, "power_iters": power_iters, "products": 0, "qr_passes": 0}

    def product(transposed: bool, factor: np.ndarray):
        q, r, passes = orth_product(transposed, factor)
        stats["products"] += 1
        stats["qr_passes"] += passes
        return q, r

    q, _ = product(False, rng.standard_normal((n, k), dtype=np.float32))
    for _ in range(power_iters):
        q_right, _ = product(True, q)
        q, _ = product(False, q_right)
    # q is the m × k basis of A's range. Bᵀ = Aᵀ Q = Q₂ R, so B = Qᵀ A = Rᵀ Q₂ᵀ.
    q_right, r = product(True, q)
    u_small, s, w_small_t = np.linalg.svd(r.T)
    u = q.astype(np.float64) @ u_small[:, :rank]
    w = q_right.astype(np.float64) @ w_small_t[:rank].T  # A ≈ (Q Ũ) Σ (Q₂ W)ᵀ
    return SVDResult(U=u, s=s[:rank], stats=stats, W=w)
