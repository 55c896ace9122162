"""Pre-training (PMI + randomized SVD in Spark) against scipy references, and the CLI."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from models.pmi import build_pmi, build_pmi_local
from models.pretrain import Embeddings, PretrainConfig, pretrain, pretrain_local
from models.rsvd import PANEL_BYTES, distribute, panel_width, randomized_svd, randomized_svd_local, sparse_times_dense


def reference_pmi(views: pd.DataFrame, min_count: int, alpha: float):
    """Textbook PPMI with context-distribution smoothing, straight from scipy (no timeline cap)."""
    items = np.array(sorted(views["item_id"].unique()))
    users = np.array(sorted(views["user_id"].unique()))
    pairs = views[["user_id", "item_id"]].drop_duplicates()
    x = sp.csr_matrix((np.ones(len(pairs)), (np.searchsorted(users, pairs["user_id"]),
                                             np.searchsorted(items, pairs["item_id"]))),
                      shape=(len(users), len(items)))
    c = (x.T @ x).toarray()
    np.fill_diagonal(c, 0)
    keep = c.sum(axis=1) >= min_count
    c = c[keep][:, keep]
    r = c.sum(axis=1)
    nonzero = r > 0
    items, c, r = items[keep][nonzero], c[nonzero][:, nonzero], r[nonzero]
    with np.errstate(divide="ignore"):
        pmi = np.log(c) - np.log(r)[:, None] - alpha * np.log(r)[None, :] + np.log(np.sum(r ** alpha))
    return items, np.maximum(pmi, 0)


def random_views(seed: int, users: int = 70, items: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, items + 1)  # Zipf: the tail items are rare and get dropped
    rows = []
    for u in range(users):
        n = rng.integers(1, 12)
        for i in rng.choice(items, size=n, p=pop / pop.sum()):
            rows.append((f"u{u:03d}", f"i{i:03d}", dt.datetime(2026, 1, 1) + dt.timedelta(minutes=len(rows))))
    rows += [("u000", "i001", dt.datetime(2026, 1, 2))] * 3  # repeated views count once in a set
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])


def test_pmi_equals_scipy_reference(spark):
    views = random_views(3)
    ref_items, ref = reference_pmi(views, min_count=5, alpha=0.75)
    result = build_pmi(spark, spark.createDataFrame(views), min_count=5, smoothing=0.75, max_timeline=200,
                       n_blocks=3)
    got = result.matrix.to_scipy().toarray()
    result.matrix.unpersist()
    assert 0 < len(ref_items) < views["item_id"].nunique(), "fixture must drop some rare items"
    assert list(result.item_ids) == list(ref_items)
    assert result.sizes["dropped_items"] == views["item_id"].nunique() - len(ref_items)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    expected_counts = views.groupby("item_id").size().loc[ref_items].to_numpy()
    np.testing.assert_array_equal(result.counts, expected_counts)


def test_local_pmi_equals_scipy_reference():
    views = random_views(3)
    ref_items, ref = reference_pmi(views, min_count=5, alpha=0.75)
    result = build_pmi_local(pa.Table.from_pandas(views), min_count=5, smoothing=0.75, max_timeline=200)
    assert list(result.item_ids) == list(ref_items)
    np.testing.assert_allclose(result.matrix.toarray(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.counts, views.groupby("item_id").size().loc[ref_items].to_numpy())
    assert result.sizes["dropped_items"] == views["item_id"].nunique() - len(ref_items)


def test_local_timelines_keep_the_most_recent_items():
    t = [dt.datetime(2026, 1, 1, h) for h in range(5)]
    views = pd.DataFrame({"user_id": ["a"] * 5 + ["b", "b"],
                          "item_id": ["i0", "i1", "i2", "i3", "i4", "i0", "i1"], "ts": t + t[:2]})
    result = build_pmi_local(pa.Table.from_pandas(views), min_count=1, max_timeline=3)
    dense = result.matrix.toarray()
    assert result.sizes["capped_users"] == 1 and result.sizes["cooccurrence_work"] == 3 * 3 + 2 * 2
    assert dense[0, 1] > 0 and dense[:2, 2:].sum() == 0 and dense[2:, :2].sum() == 0


def test_engines_agree_on_a_synthetic_window(spark, small_world):
    """Local and Spark pre-training of the same views: same items, counts and marginals, the same
    randomized subspace (same seed, same algorithm) up to float32 rounding."""
    from infra import events
    from models.pretrain import read_window_views

    cfg = PretrainConfig(dim=16, min_count=5)
    on_spark = pretrain(spark, read_window_views(spark, small_world, "2026-01-10", 9), cfg)
    local = pretrain_local(events.read_window(small_world, "views", "2026-01-10", 9), cfg)
    assert (on_spark.sizes["engine"], local.sizes["engine"]) == ("spark", "local")
    assert list(local.item_ids) == list(on_spark.item_ids)
    np.testing.assert_array_equal(local.counts, on_spark.counts)
    np.testing.assert_allclose(local.marginals, on_spark.marginals)
    for key in ("users", "user_item_pairs", "cooccurrence_nnz", "pmi_nnz", "dropped_items"):
        assert local.sizes[key] == on_spark.sizes[key], key
    np.testing.assert_allclose(local.singular_values, on_spark.singular_values, rtol=1e-4)
    np.testing.assert_allclose(local.explained_variance, on_spark.explained_variance, rtol=1e-4)
    cos_local, cos_spark = local.E @ local.E.T, on_spark.E @ on_spark.E.T  # rotation-free comparison
    assert np.abs(cos_local - cos_spark).max() < 1e-3


def test_long_timelines_keep_the_most_recent_items(spark):
    t = [dt.datetime(2026, 1, 1, h) for h in range(5)]
    views = pd.DataFrame({"user_id": ["a"] * 5 + ["b", "b"],
                          "item_id": ["i0", "i1", "i2", "i3", "i4", "i0", "i1"],
                          "ts": t + t[:2]})
    result = build_pmi(spark, spark.createDataFrame(views), min_count=1, max_timeline=3, n_blocks=2)
    dense = result.matrix.to_scipy().toarray()
    result.matrix.unpersist()
    assert result.sizes["capped_users"] == 1
    assert list(result.item_ids) == ["i0", "i1", "i2", "i3", "i4"]
    # User a keeps i2, i3, i4 only: i0/i1 co-occur with each other (user b) and with nothing else.
    assert dense[0, 1] > 0 and dense[:2, 2:].sum() == 0 and dense[2:, :2].sum() == 0
    assert result.sizes["cooccurrence_work"] == 3 * 3 + 2 * 2


def low_rank_plus_noise(m: int, n: int, rank: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    left = sp.random(m, rank, density=0.3, random_state=rng) @ sp.diags(np.geomspace(10, 1, rank))
    right = sp.random(rank, n, density=0.3, random_state=rng)
    noise = sp.random(m, n, density=0.01, random_state=rng, data_rvs=rng.standard_normal) * 0.05
    return (left @ right + noise).tocsr()


def test_panel_width_keeps_the_panel_in_the_cache_budget():
    assert panel_width(1_000) == 128
    for rows in (27_000, 54_000, 109_000, 10_000_000):
        width = panel_width(rows)
        assert 8 <= width <= 128 and width & (width - 1) == 0
        assert rows * width * 4 <= PANEL_BYTES or width == 8
    assert (panel_width(27_000), panel_width(54_000), panel_width(109_000)) == (64, 32, 16)


@pytest.mark.parametrize("rows", [50, 300_000])  # one panel of 128 columns; 8-column panels with a short last one
def test_sparse_times_dense_equals_the_plain_product(rows):
    rng = np.random.default_rng(0)
    m = sp.random(40, rows, density=0.01, random_state=rng, format="csr", dtype=np.float32)
    x = rng.standard_normal((rows, 138)).astype(np.float32)
    # Each output entry sums the same terms in the same order whatever the panel: equal to the bit.
    np.testing.assert_array_equal(sparse_times_dense(m, x), m @ x)


@pytest.mark.parametrize("m,n,rank,k,seed", [(700, 500, 30, 20, 0), (400, 900, 15, 10, 1)])
def test_randomized_svd_matches_svds(spark, m, n, rank, k, seed, capsys):
    matrix = low_rank_plus_noise(m, n, rank, seed)
    blocks = distribute(spark.sparkContext, matrix, 3)
    got = randomized_svd(spark.sparkContext, blocks, k, oversampling=10, power_iters=2, seed=seed)
    blocks.unpersist()
    u_ref, s_ref, _ = svds(matrix.astype(np.float64), k=k)
    order = np.argsort(-s_ref)
    s_ref, u_ref = s_ref[order], u_ref[:, order]
    rel = np.abs(got.s - s_ref) / s_ref
    cosines = np.clip(np.linalg.svd(got.U.T @ u_ref, compute_uv=False), -1, 1)
    angles = np.degrees(np.arccos(cosines))
    with capsys.disabled():
        print(f"\n[rsvd {m}x{n} k={k}] max rel err of singular values {rel.max():.2e}, "
              f"principal angles (deg) max {angles.max():.3f} mean {angles.mean():.3f}")
    assert rel.max() < 0.01
    assert angles.max() < 1.0
    np.testing.assert_allclose(got.U.T @ got.U, np.eye(k), atol=1e-5)


@pytest.mark.parametrize("m,n,rank,k,seed", [(700, 500, 30, 20, 0), (400, 900, 15, 10, 1)])
def test_local_randomized_svd_matches_svds(m, n, rank, k, seed):
    matrix = low_rank_plus_noise(m, n, rank, seed)
    got = randomized_svd_local(matrix, k, oversampling=10, power_iters=2, seed=seed)
    s_ref = np.sort(svds(matrix.astype(np.float64), k=k, return_singular_vectors=False))[::-1]
    assert (np.abs(got.s - s_ref) / s_ref).max() < 0.01
    np.testing.assert_allclose(got.U.T @ got.U, np.eye(k), atol=1e-5)
    np.testing.assert_allclose(matrix.T @ got.U, got.W * got.s, rtol=0, atol=1e-3 * got.s[0])  # Aᵀ U = W Σ


def test_randomized_svd_on_an_ill_conditioned_matrix(spark):
    """A steep spectrum (x0.5 per component) makes the samples ill-conditioned: second Cholesky QR pass."""
    rng = np.random.default_rng(5)
    sigma = 0.5 ** np.arange(300.0)
    perm_rows, perm_cols = rng.permutation(300), rng.permutation(300)
    matrix = sp.csr_matrix((sigma, (perm_rows, perm_cols)), shape=(300, 300))  # singular values = sigma
    blocks = distribute(spark.sparkContext, matrix, 3)
    got = randomized_svd(spark.sparkContext, blocks, 10, oversampling=10, power_iters=2, seed=0)
    blocks.unpersist()
    assert got.stats["qr_passes"] > got.stats["products"]
    np.testing.assert_allclose(got.s, sigma[:10], rtol=1e-4)
    np.testing.assert_allclose(got.U.T @ got.U, np.eye(10), atol=1e-5)


def test_pretrain_rejects_too_few_items(spark):
    views = spark.createDataFrame(pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"]}))
    with pytest.raises(ValueError, match="items"):
        pretrain(spark, views, PretrainConfig(dim=8, min_count=1))


def check_embeddings(emb: Embeddings, events_dir, run_date: str, window: int, dim: int) -> None:
    """Properties every pre-training output must have, checked against the raw event store."""
    import pyarrow.compute as pc

    from infra import events

    assert emb.E.shape == (len(emb.item_ids), dim) and emb.E.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.E, axis=1), 1.0, atol=1e-5)
    assert np.all(np.diff(emb.singular_values) <= 1e-9) and emb.singular_values[-1] > 0
    assert 0 < emb.explained_variance <= 1
    assert list(emb.item_ids) == sorted(emb.item_ids)
    # Counts are the window's views per item, read independently with pyarrow.
    table = events.read_window(events_dir, "views", run_date, window)
    ids, n = np.unique(table.column("item_id").to_numpy(zero_copy_only=False).astype(str), return_counts=True)
    lookup = dict(zip(ids, n))
    assert [lookup[i] for i in emb.item_ids] == emb.counts.tolist()
    assert emb.sizes["views"] == table.num_rows and emb.sizes["users"] == len(pc.unique(table.column("user_id")))
    # The synthetic world's sessions stay within a topic: each item has a close neighbour.
    sims = emb.E @ emb.E.T - 2 * np.eye(len(emb.E))
    assert np.mean(np.max(sims, axis=1)) > 0.5


@pytest.mark.parametrize("engine", ["local", "spark"])
def test_cli_pretrain(led, small_world, tmp_path, spark, engine):
    out = tmp_path / "emb"
    code, result, _, err = led("pretrain", "--events", small_world, "--date", "2026-01-11", "--window", "10",
                               "--dim", "8", "--out", out, "--engine", engine)
    assert code == 0, err
    assert result["engine"] == engine and result["dim"] == 8 and result["items"] > 8 and 0 < result["explained_variance"] <= 1
    assert result["seconds"] > 0
    emb = Embeddings.load(out)
    assert emb.E.shape == (result["items"], 8)
    check_embeddings(emb, small_world, "2026-01-11", 10, 8)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    # User mistakes: exit 2 with one line on stderr, nothing written.
    code, _, _, err = led("pretrain", "--events", small_world, "--date", "2026-01-11", "--window", "10",
                          "--dim", "8", "--out", out)
    assert code == 2 and "not empty" in err
    code, _, _, err = led("pretrain", "--events", tmp_path / "nowhere", "--date", "2026-01-11", "--out",
                          tmp_path / "x")
    assert code == 2 and "not found" in err
    code, _, _, err = led("pretrain", "--events", small_world, "--date", "2025-01-01", "--window", "3",
                          "--out", tmp_path / "y")
    assert code == 2 and "no views" in err and not (tmp_path / "y").exists()
    code, _, _, err = led("pretrain", "--events", small_world, "--date", "2026-01-11", "--dim", "100000",
                          "--out", tmp_path / "z")
    assert code == 2 and "items" in err and not (tmp_path / "z").exists()


def mult_vae_split(ratings: pd.DataFrame, heldout_share: float = 0.2, target_share: float = 0.2,
                   seed: int = 0):
    """Mult-VAE protocol (Liang et al. 2018): rating >= 4 is positive, users with >= 5 positives,
    a share of users held out; their positives split into fold-in and targets."""
    rng = np.random.default_rng(seed)
    pos = ratings[ratings["rating"] >= 4]
    n_pos = pos.groupby("user_id").size()
    users = np.array(sorted(n_pos[n_pos >= 5].index))
    heldout = set(rng.choice(users, size=int(heldout_share * len(users)), replace=False))
    train_views = ratings[~ratings["user_id"].isin(heldout)]
    train_pos = pos[~pos["user_id"].isin(heldout)]
    catalog = np.array(sorted(train_pos["item_id"].unique()))
    col = {item: j for j, item in enumerate(catalog)}
    fold_in, targets = [], []
    for _, group in pos[pos["user_id"].isin(heldout) & pos["item_id"].isin(col)].groupby("user_id"):
        items = np.array([col[i] for i in group["item_id"]])
        is_target = np.zeros(len(items), bool)
        is_target[rng.choice(len(items), size=max(1, int(target_share * len(items))), replace=False)] = True
        fold_in.append(items[~is_target])
        targets.append(set(items[is_target]))
    popularity = train_pos["item_id"].value_counts().reindex(catalog).to_numpy(dtype=np.float64)
    return train_views, catalog, fold_in, targets, popularity


def svd_average_scores(emb: Embeddings, catalog: np.ndarray, fold_in, with_bias: bool) -> np.ndarray:
    """No-training recommender: user = mean of E over fold-in items, score = user . E_i (+ log popularity)."""
    row = {item: r for r, item in enumerate(emb.item_ids)}
    known = np.array([item in row for item in catalog])
    e = np.zeros((len(catalog), emb.dim), np.float64)
    e[known] = emb.E[[row[item] for item in catalog[known]]]
    bias = np.zeros(len(catalog))
    if with_bias:
        counts = np.zeros(len(catalog))
        counts[known] = emb.counts[[row[item] for item in catalog[known]]]
        bias = np.log(np.maximum(counts, 1) / counts.sum())
    users = np.stack([e[items].mean(axis=0) if len(items) else np.zeros(emb.dim) for items in fold_in])
    scores = users @ e.T + bias
    scores[:, ~known] = -np.inf  # items without an embedding cannot be ranked
    return scores


def evaluate_scores(scores: np.ndarray, fold_in, targets) -> dict[str, float]:
    """Dense scores ranked through the product's own exclusion and top-k, then its metrics."""
    from models.metrics import evaluate_rankings
    from models.scoring import exclude_inputs, ranked

    rows = [np.asarray(list(items), dtype=np.int64) for items in fold_in]
    return evaluate_rankings(ranked(exclude_inputs(np.array(scores, dtype=np.float64), rows), 100), targets,
                             n_items=scores.shape[1])


def test_svd_average_beats_popularity_on_ml100k(spark, ml100k_dir, capsys):
    ratings = pd.read_csv(ml100k_dir / "ml-100k.inter", sep="\t")
    ratings.columns = ["user_id", "item_id", "rating", "timestamp"]
    ratings = ratings.astype({"user_id": str, "item_id": str})
    ratings["ts"] = pd.to_datetime(ratings["timestamp"], unit="s", utc=True)
    train_views, catalog, fold_in, targets, popularity = mult_vae_split(ratings, seed=0)
    views = spark.createDataFrame(train_views[["user_id", "item_id", "ts"]])
    emb = pretrain(spark, views, PretrainConfig(dim=256, min_count=5, seed=0))
    ndcg = {
        "popularity": evaluate_scores(np.tile(popularity, (len(fold_in), 1)), fold_in, targets)["ndcg@100"],
        "svd_average": evaluate_scores(svd_average_scores(emb, catalog, fold_in, False), fold_in, targets)["ndcg@100"],
        "svd_average_log_pop": evaluate_scores(svd_average_scores(emb, catalog, fold_in, True), fold_in,
                                               targets)["ndcg@100"],
    }
    with capsys.disabled():
        print(f"\n[ML-100K, {len(fold_in)} held-out users, {len(emb.item_ids)} items, d=256] NDCG@100 "
              + ", ".join(f"{k} {v:.3f}" for k, v in ndcg.items())
              + f"; explained variance {emb.explained_variance:.3f}")
    assert ndcg["svd_average"] > ndcg["popularity"]
    assert ndcg["svd_average_log_pop"] > ndcg["popularity"]
    # The reference band on this protocol (docs/architecture.md, "Evaluation"): catches gross bugs, not a tuning
    # target.
    assert 0.2 < ndcg["popularity"] < 0.35 and 0.28 < ndcg["svd_average"] < 0.5
