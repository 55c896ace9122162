"""Annoy index over ``[V_i, b_i]`` and the per-request recommender.

Scoring (docs/architecture.md, "Scoring"; ``models.scoring``): ``q = mean(V_x)``, ``score_i = q . V_i + b_i``, i.e. the
inner product of the item vector ``[V_i, b_i]`` with the query ``[q, 1]``.
Annoy's ``dot`` metric answers that maximum-inner-product search.

**Bias column conditioning.** Indexing ``[V_i, b_i]`` literally gave poor
recall@100 (0.90 at search_k=20000 on a 20k-item clustered catalog): log
popularity spans 7-15 nats, so the bias coordinate dominates the item norms and
Annoy's random hyperplanes split on popularity instead of on taste. Two
rank-preserving rewrites fix it (measured 0.999 at search_k=5000):

- shift: ``b_i - c`` with ``c = mean(b)`` (a constant added to every score
  changes no ranking);
- scale: items ``[V_i, (b_i - c) / s]``, query ``[q, s]``; the inner product is
  unchanged, ``q . V_i + b_i - c``.

``s`` is a multiple of the median ``||V_i||``, found by hill-climbing the
ladder 0.35x ... 3x from 0.75x on measured recall@100 (the best is kept):
synthetic clustered catalogs peak at 1.5x, trained LED vectors at 0.5-0.75x
(a 22k-item d=128 ``led train`` export, 50 trees, search_k 5000: recall@100
0.91 at 1x, 0.973 at 0.75x, 0.995 at 0.5x; the old ladder started at 1.5x and
kept the first scale above the floor, so it never got there). Returned candidates are re-scored exactly from ``V`` and ``b``,
so reported scores are the true ``q . V_i + b_i`` and only membership can
differ from exact top-k. ``shift`` and ``scale`` are recorded in the slot
manifest, so the server builds the same query the recall was measured with.

**Cheaper search for small k.** search_k (settings) is what recall@100 is
validated at. A k <= 10 request (the common case) needs far fewer inspected
nodes, so the build also tries search_k/16 ... /2 and records the first whose
recall@10 is within 0.01 of recall@10 at the full search_k (and >= the floor)
as ``small_search_k``; both figures are in the manifest.

**Recall measurement.** ANN recall@100 is the share of the exact top-100
(``ExportedModel.exact_topk``, inputs excluded) that the recommender returns,
averaged over held-out timelines: ``eval_timelines.json`` when the export has
it, else sampled *coherent* pseudo-timelines (a seed item drawn by popularity,
then 1-19 more items from its 50 nearest neighbours by ``V``), because real
timelines are topical and uniformly random ones would not be.

This module imports numpy, annoy and the numpy-only ``models.scoring``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from annoy import AnnoyIndex

from models import scoring

INDEX_FILE = "index.ann"
SCALE_MULTIPLIERS = (0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # bias-column scales tried, x median ||V_i||
SCALE_START = 0.75
RECALL_GOOD = 0.999  # a scale at this recall@100 is kept without trying more
RECALL_K = 100
SMALL_K = 10
SMALL_SEARCH_K_FRACTIONS = (16, 10, 8, 6, 5, 4, 3, 2)  # search_k/16 ... /2 tried for k <= SMALL_K
SMALL_K_MAX_LOSS = 0.01
SEARCH_K_GROWTH = (2, 4, 8, 16)  # search_k multipliers tried when the setting misses the recall floor


@dataclass(frozen=True)
class IndexParams:
    """What a server needs to query an index exactly as it was measured."""

    dim: int
    n_trees: int
    search_k: int
    bias_shift: float
    bias_scale: float
    small_k: int = SMALL_K
    small_search_k: int | None = None  # validated cheaper search_k for requests with k <= small_k

    def search_k_for(self, k: int) -> int:
        return self.small_search_k if self.small_search_k and k <= self.small_k else self.search_k

    def to_json(self) -> dict:
        return {"dim": self.dim, "n_trees": self.n_trees, "search_k": self.search_k,
                "bias_shift": self.bias_shift, "bias_scale": self.bias_scale, "small_k": self.small_k,
                "small_search_k": self.small_search_k}

    @classmethod
    def from_json(cls, data: dict) -> "IndexParams":
        small = data.get("small_search_k")
        return cls(int(data["dim"]), int(data["n_trees"]), int(data["search_k"]), float(data["bias_shift"]),
                   float(data["bias_scale"]), int(data.get("small_k", SMALL_K)), int(small) if small else None)


@dataclass
class Recommendation:
    ids: list[str]
    scores: list[float]
    unknown: int
    fallback: bool


class Recommender:
    """Answers ``recommend(items, k)`` from plain arrays plus an optional Annoy index.

    With ``index=None`` it scores exactly with numpy (used to validate and as a
    reference); with an index it asks Annoy for ``k + |inputs|`` candidates
    and re-scores them exactly.
    """

    def __init__(self, item_ids: np.ndarray, V: np.ndarray, b: np.ndarray, counts: np.ndarray,
                 index: AnnoyIndex | None = None, params: IndexParams | None = None):
        self.item_ids = [str(i) for i in item_ids]
        self.position = {item: i for i, item in enumerate(self.item_ids)}
        self.V, self.b, self.counts = V, b, counts
        self.index, self.params = index, params
        self.popular = np.argsort(-counts, kind="stable")

    @property
    def size(self) -> int:
        return len(self.item_ids)

    def recommend(self, items: Sequence[str], k: int, exclude: Sequence[str] = (),
                  candidates: Sequence[str] | None = None) -> Recommendation:
        """Top-k for a timeline; ``exclude`` ids are never returned, and with ``candidates`` only those
        can be. Both apply before k, so the answer has k items whenever that many remain."""
        known = [self.position[i] for i in items if i in self.position]
        unknown = len(items) - len(known)
        allowed = item_filter(self.position, known, exclude, candidates)
        if not known:
            return self._popularity(k, unknown, allowed)
        q = scoring.query_vector(self.V, known)
        excluded = allowed.banned
        if allowed.candidates is not None:
            top = allowed.candidates  # a candidate set is scored exactly, whole: the re-scoring below ranks it
        elif self.index is None:
            top = self._exact(q, excluded, k)
        else:
            top = self._approximate(q, excluded, k)
            if allowed.restricts and len(top) < min(k, self.size - len(excluded)):
                top = self._exact(q, excluded, k)  # the filter removed too many ANN candidates: k still holds
        scores = scoring.item_scores(self.V, self.b, q, top)  # exact re-scoring of the candidates
        order = np.argsort(-scores, kind="stable")[:k]
        return Recommendation([self.item_ids[top[i]] for i in order], scores[order].tolist(), unknown, False)

    def _approximate(self, q: np.ndarray, excluded: set[int], k: int) -> np.ndarray:
        p = self.params
        search_k = p.search_k_for(k)
        wanted = min(self.size, k + len(excluded))
        if 0 < search_k < wanted and len(excluded) > k:
            return np.empty(0, dtype=np.int64)  # a long exclude list: Annoy cannot return enough, score exactly
        query = np.empty(len(q) + 1, dtype=np.float32)
        query[:-1] = q
        query[-1] = p.bias_scale
        found = self.index.get_nns_by_vector(query, wanted, search_k=search_k)
        return np.fromiter((i for i in found if i not in excluded), dtype=np.int64)

    def _exact(self, q: np.ndarray, excluded: set[int], k: int) -> np.ndarray:
        scores = scoring.item_scores(self.V, self.b, q)
        scores[list(excluded)] = -np.inf
        k = min(k, self.size - len(excluded))
        if k <= 0:
            return np.empty(0, dtype=np.int64)
        return np.argpartition(-scores, k - 1)[:k]

    def _popularity(self, k: int, unknown: int, allowed: "ItemFilter") -> Recommendation:
        top = self.popular
        if allowed.restricts:
            top = top[allowed_mask(self.size, allowed)[top]]
        top = top[:k]
        return Recommendation([self.item_ids[i] for i in top], self.counts[top].astype(np.float64).tolist(),
                              unknown, True)


# --- business rules: exclude / candidates as index sets ---------------------------------------------

@dataclass(frozen=True)
class ItemFilter:
    """A request's item restrictions as catalog positions: ``banned`` (the inputs plus ``exclude``) are
    never returned; ``candidates`` (sorted, banned removed), when not None, are the only items that may be.
    Unknown ids in either list are ignored (they cannot be returned anyway)."""

    banned: set[int]
    candidates: np.ndarray | None
    restricts: bool  # anything beyond the inputs: exclude or candidates given


def item_filter(position: dict[str, int], inputs: Sequence[int], exclude: Sequence[str] = (),
                candidates: Sequence[str] | None = None) -> ItemFilter:
    banned = set(inputs)
    banned.update(position[i] for i in exclude if i in position)
    allowed = None
    if candidates is not None:
        known = np.fromiter((position[i] for i in candidates if i in position), dtype=np.int64)
        allowed = np.setdiff1d(known, np.fromiter(banned, dtype=np.int64, count=len(banned)))
    return ItemFilter(banned, allowed, bool(exclude) or candidates is not None)


def allowed_mask(size: int, allowed: ItemFilter) -> np.ndarray:
    """Boolean mask over the catalog: True where an item may be returned."""
    if allowed.candidates is not None:
        mask = np.zeros(size, dtype=bool)
        mask[allowed.candidates] = True
    else:
        mask = np.ones(size, dtype=bool)
    mask[list(allowed.banned)] = False
    return mask


def build_index(V: np.ndarray, b: np.ndarray, n_trees: int, search_k: int, bias_scale: float,
                out_path: Path, seed: int = 42) -> IndexParams:
    """Build and save the Annoy index of ``[V_i, (b_i - mean(b)) / bias_scale]``."""
    shift = float(np.mean(b))
    dim = V.shape[1]
    index = AnnoyIndex(dim + 1, "dot")
    index.set_seed(seed)
    rows = np.empty((len(V), dim + 1), dtype=np.float32)
    rows[:, :dim] = V
    rows[:, dim] = (b - shift) / bias_scale
    for i, row in enumerate(rows):
        index.add_item(i, row)
    index.build(n_trees, n_jobs=-1)
    index.save(str(out_path))
    index.unload()
    return IndexParams(dim, n_trees, search_k, shift, float(bias_scale))


def load_index(path: Path, params: IndexParams) -> AnnoyIndex:
    """Memory-map a saved index (read-only, pages shared between processes)."""
    index = AnnoyIndex(params.dim + 1, "dot")
    index.load(str(path), prefault=False)
    if index.get_n_items() == 0:
        raise ValueError(f"empty Annoy index: {path}")
    return index


def sample_timelines(V: np.ndarray, counts: np.ndarray, n: int = 300, seed: int = 0) -> list[list[int]]:
    """Coherent pseudo-timelines (item positions) when the export has no held-out ones."""
    rng = np.random.default_rng(seed)
    p = counts.astype(np.float64) + 1.0
    p /= p.sum()
    neighbours = min(50, len(V))
    out = []
    for seed_item in rng.choice(len(V), size=n, p=p):
        near = np.argpartition(-(V @ V[seed_item]), neighbours - 1)[:neighbours]
        length = int(rng.integers(1, min(20, neighbours) + 1))
        rest = rng.choice(near[near != seed_item], size=min(length - 1, neighbours - 1), replace=False)
        out.append([int(seed_item), *map(int, rest)])
    return out


def exact_answers(exact: Recommender, timelines: Sequence[Sequence[str]], k: int = RECALL_K) -> list:
    """Exact top-k per timeline, computed once and shared by every candidate index."""
    return [(timeline, exact.recommend(timeline, k)) for timeline in timelines]


def measure_recall(ann: Recommender, exact: Recommender | list, timelines: Sequence[Sequence[str]] = (),
                   k: int = RECALL_K) -> dict:
    """Mean recall@k of the ANN recommender against exact scoring (a ``Recommender`` or the
    precomputed ``exact_answers``), plus query latency."""
    answers = exact if isinstance(exact, list) else exact_answers(exact, timelines, k)
    recalls, latencies = [], []
    for timeline, truth in answers:
        if truth.fallback or not truth.ids:
            continue  # popularity answers are identical by construction
        start = time.perf_counter()
        got = ann.recommend(timeline, k)
        latencies.append(time.perf_counter() - start)
        recalls.append(len(set(truth.ids) & set(got.ids)) / len(truth.ids))
    if not recalls:
        raise ValueError("no evaluation timeline has a known item: cannot measure ANN recall")
    lat = np.asarray(latencies) * 1e3
    return {"recall": float(np.mean(recalls)), "min_recall": float(np.min(recalls)), "timelines": len(recalls),
            "query_ms_p50": float(np.percentile(lat, 50)), "query_ms_p99": float(np.percentile(lat, 99))}


@dataclass
class BuiltIndex:
    path: Path
    params: IndexParams
    recall: float
    report: dict = field(default_factory=dict)


def build_and_measure(model, out_dir: Path, n_trees: int, search_k: int, min_recall: float,
                      max_timelines: int = 500, seed: int = 42) -> BuiltIndex:
    """Build the index for an ``ExportedModel`` trying a few bias scales (``_scale_walk``); keep the
    best, raising search_k when even that misses ``min_recall`` (below it the caller refuses to push)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    V = np.ascontiguousarray(model.V, dtype=np.float32)
    b = np.asarray(model.b, dtype=np.float32)
    timelines, source = _eval_timelines(model, V, max_timelines, seed)
    exact = exact_answers(Recommender(model.item_ids, V, b, model.counts), timelines)
    base = float(np.median(np.linalg.norm(V, axis=1))) or 1.0
    tried, best = [], None

    def evaluate(mult: float) -> float:
        nonlocal best
        candidate = out_dir / f".candidate-{mult}.ann"
        start = time.perf_counter()
        params = build_index(V, b, n_trees, search_k, base * mult, candidate, seed)
        build_s = time.perf_counter() - start
        ann = Recommender(model.item_ids, V, b, model.counts, load_index(candidate, params), params)
        stats = measure_recall(ann, exact, timelines)
        ann.index.unload()
        tried.append({"bias_scale": params.bias_scale, "multiplier": mult, "build_seconds": round(build_s, 3),
                      **stats})
        if best is None or stats["recall"] > best[1]:
            if best is not None:
                best[2].unlink(missing_ok=True)
            best = (params, stats["recall"], candidate)
        else:
            candidate.unlink(missing_ok=True)
        return stats["recall"]

    _scale_walk(evaluate)
    params, recall, path = best
    if recall < min_recall and params.search_k > 0:
        params, recall = _raise_search_k(model, V, b, path, params, exact, timelines, min_recall, tried)
    final = out_dir / INDEX_FILE
    path.replace(final)
    params, small_report = _validate_small_k(model, V, b, final, params, timelines, min_recall)
    report = {"recall_k": RECALL_K, "timeline_source": source, "min_ann_recall": min_recall, "tried": tried,
              "small_k": small_report}
    return BuiltIndex(final, params, recall, report)


def _scale_walk(evaluate) -> None:
    """Hill-climb the bias-scale ladder from SCALE_START: up while recall improves, else down; stop at
    RECALL_GOOD (nothing left to gain). Recall is unimodal in the scale on every catalog measured
    (synthetic clusters peak at 1.5x, trained LED vectors at 0.5-0.75x), so 3-4 builds find the peak."""
    start = SCALE_MULTIPLIERS.index(SCALE_START)
    recalls = {start: evaluate(SCALE_MULTIPLIERS[start])}
    for step in (1, -1):
        peak = max(recalls, key=recalls.get)
        if recalls[peak] >= RECALL_GOOD:
            return
        i = peak + step
        while 0 <= i < len(SCALE_MULTIPLIERS) and i not in recalls:
            recalls[i] = evaluate(SCALE_MULTIPLIERS[i])
            if recalls[i] <= recalls[i - step] or recalls[i] >= RECALL_GOOD:
                break
            i += step
        if max(recalls, key=recalls.get) != peak:
            return  # improved going up: the peak is bracketed


def _raise_search_k(model, V, b, path: Path, params: IndexParams, exact, timelines, min_recall: float,
                    tried: list) -> tuple[IndexParams, float]:
    """Recall falls as the catalog grows at a fixed search_k (measured 0.97 at 2k items, 0.92 at 10k):
    inspect more nodes, up to SEARCH_K_GROWTH x the setting, until the floor is reached. search_k is a
    query-time knob, so the index itself is not rebuilt; the chosen value travels in the manifest."""
    from dataclasses import replace

    index = load_index(path, params)
    best = (params, measure_recall(Recommender(model.item_ids, V, b, model.counts, index, params), exact,
                                   timelines)["recall"])
    try:
        for growth in SEARCH_K_GROWTH:
            candidate = replace(params, search_k=params.search_k * growth)
            stats = measure_recall(Recommender(model.item_ids, V, b, model.counts, index, candidate), exact,
                                   timelines)
            tried.append({"bias_scale": params.bias_scale, "search_k": candidate.search_k, **stats})
            if stats["recall"] > best[1]:
                best = (candidate, stats["recall"])
            if stats["recall"] >= min_recall:
                break
    finally:
        index.unload()
    return best


def _validate_small_k(model, V, b, path: Path, params: IndexParams, timelines, min_recall: float):
    """Find the cheapest search_k whose recall@SMALL_K is within SMALL_K_MAX_LOSS of the full search_k's
    (and >= min_recall); requests with k <= SMALL_K then use it. The typical request (k=10) needs far
    fewer inspected nodes than a top-100 (measured 1000 vs 5000 at 20k items for recall@10 0.999)."""
    from dataclasses import replace

    exact = exact_answers(Recommender(model.item_ids, V, b, model.counts), timelines, SMALL_K)
    index = load_index(path, params)
    try:
        full = measure_recall(Recommender(model.item_ids, V, b, model.counts, index, params), exact,
                              k=SMALL_K)["recall"]
        needed = max(min_recall, full - SMALL_K_MAX_LOSS)
        report = {"k": SMALL_K, "recall_at_full_search_k": full, "required": needed, "tried": []}
        if params.search_k <= 0:
            return params, report
        for fraction in SMALL_SEARCH_K_FRACTIONS:
            candidate = replace(params, small_search_k=max(params.search_k // fraction, 1))
            got = measure_recall(Recommender(model.item_ids, V, b, model.counts, index, candidate), exact,
                                 k=SMALL_K)
            report["tried"].append({"search_k": candidate.small_search_k, "recall": got["recall"],
                                    "query_ms_p50": got["query_ms_p50"]})
            if got["recall"] >= needed:
                report["chosen"] = candidate.small_search_k
                return candidate, report
        return params, report
    finally:
        index.unload()


def _eval_timelines(model, V: np.ndarray, limit: int, seed: int) -> tuple[list[list[str]], str]:
    if model.eval_timelines:
        timelines = [list(map(str, t)) for t in model.eval_timelines if t]
        if len(timelines) > limit:
            pick = np.random.default_rng(seed).choice(len(timelines), size=limit, replace=False)
            timelines = [timelines[i] for i in sorted(pick)]
        return timelines, "eval_timelines.json"
    ids = [str(i) for i in model.item_ids]
    sampled = sample_timelines(V, np.asarray(model.counts), n=min(limit, 300), seed=seed)
    return [[ids[i] for i in t] for t in sampled], "sampled (coherent pseudo-timelines)"
