"""Benchmark: the width of the dense-factor panels in the SVD's sparse × dense products.

Every product of the randomized SVD multiplies a row block of PPMI (or PPMIᵀ) by an
``n × k`` float32 factor (k = 138 at d = 128). scipy streams the block once per panel of the
factor's columns, and each non-zero gathers one row of the panel, so a panel that stays in
the last-level cache is fast and one that does not is memory-bound. This measures
multiply-adds per second on real PPMI row blocks (2,500 rows, as in the Spark engine) of the
ML-20M-shaped synthetic world at each scale, for panel widths 8 .. 128 and one pass over
all k columns, against the old fixed 128 in the same process, and prints the width
``models.rsvd.panel_width`` picks (the widest power of two whose panel fits in
``PANEL_BYTES``).

    .venv/bin/python benchmarks/svd_panels.py                 # 1x and 2x ML-20M (~5 min)
    .venv/bin/python benchmarks/svd_panels.py --scales 0.25   # quick
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.svd import world  # noqa: E402
from infra import events  # noqa: E402
from models.pmi import build_pmi_local  # noqa: E402
from models.rsvd import FACTOR_DTYPE, panel_width, sparse_times_dense  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "svd_panels.json"
PLOT = Path(__file__).resolve().parent / "plots" / "svd_panels.png"
WIDTHS = (8, 16, 32, 64, 128)
K = 138  # d = 128 plus the default oversampling
BLOCK_ROWS = 2500


def product_seconds(block, x: np.ndarray, width: int, repeats: int = 3) -> float:
    """Best of ``repeats``: the shipped product (``models.rsvd.sparse_times_dense``) at ``width``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sparse_times_dense(block, x, width)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(scale: float, data: Path, window: int) -> dict:
    store = world(data, int(138_000 * scale), int(20_000 * scale), window + 1)
    run_date = events.list_days(store, "views")[-1] + dt.timedelta(days=1)  # the window [D-W, D) ends at the last day
    views = events.read_window(store, "views", run_date, window).select(["user_id", "item_id", "ts"])
    t0 = time.perf_counter()
    ppmi = build_pmi_local(views).matrix
    print(f"{scale}x: PPMI {ppmi.shape[0]} items, {ppmi.nnz / 1e6:.1f} M non-zeros ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    x = np.random.default_rng(0).standard_normal((ppmi.shape[1], K), dtype=FACTOR_DTYPE)
    starts = np.linspace(0, ppmi.shape[0] - BLOCK_ROWS, 3).astype(int)
    blocks = [ppmi[s:s + BLOCK_ROWS] for s in starts]
    nnz = sum(b.nnz for b in blocks)
    rates = {}
    for width in (*WIDTHS, K):
        seconds = sum(product_seconds(b, x, width) for b in blocks)
        rates[width] = nnz * K / seconds / 1e9
    chosen = panel_width(ppmi.shape[1])
    row = {"scale": scale, "items": int(ppmi.shape[1]), "ppmi_nnz": int(ppmi.nnz), "blocks_nnz": int(nnz),
           "gmac_per_s": {str(w): round(r, 2) for w, r in rates.items()}, "chosen_width": chosen,
           "chosen_vs_128": round(rates[chosen] / rates[128], 2),
           "best_width": int(max(rates, key=rates.get)), "best_vs_chosen": round(max(rates.values()) / rates[chosen], 2)}
    print("  GMAC/s by width: " + ", ".join(f"{w}: {r:.2f}" for w, r in rates.items())
          + f"; chosen {chosen} = {row['chosen_vs_128']}x the old 128", flush=True)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        widths = [int(w) for w in r["gmac_per_s"] if int(w) in WIDTHS]
        ax.plot(widths, [r["gmac_per_s"][str(w)] for w in widths], marker="o",
                label=f"{r['scale']}x ML-20M ({r['items']:,} items), picked {r['chosen_width']}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(WIDTHS, [str(w) for w in WIDTHS])
    ax.set_xlabel("panel width (factor columns per pass)")
    ax.set_ylabel("multiply-adds per second (G), one core")
    ax.set_title("SVD product on PPMI row blocks, k = 138")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,2", help="multiples of ML-20M (138k users, 20k items)")
    ap.add_argument("--window", type=int, default=37)
    ap.add_argument("--data", type=Path, help="where generated worlds are kept (default: a temporary folder)")
    args = ap.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="led-bench-panels-"))
    rows = [measure(float(s), data, args.window) for s in args.scales.split(",")]
    RESULTS.write_text(json.dumps({"rows": rows, "k": K, "block_rows": BLOCK_ROWS}, indent=1))
    plot(rows, PLOT)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
