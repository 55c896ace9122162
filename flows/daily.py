"""The daily LED flow: one run per date D, on the events of [D-W, D).

    validate → vocabulary → pretrain → fine-tune → register → index → evaluate & gate → push → report

The index is built (and its ANN recall logged) before the gate so the gate's
sanity checks include it; the gate evaluates challenger and champion on the
same held-out clicks. A validation failure fails the run before anything is
trained. Pre-training and fine-tuning are cached on their inputs (window
fingerprint, configuration, code), so a rerun after a late failure resumes
without recomputing them. Every knob is a typed flow parameter whose default
comes from the settings (``LED_*``), so the Prefect UI's custom-run form can
change any of them.
"""
from __future__ import annotations

import datetime as dt
import time
from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from infra.settings import Settings, get_settings
from models.led import LedConfig
from models.pretrain import PretrainConfig
from tasks.finetune import fine_tune_led
from tasks.gate import evaluate_and_gate
from tasks.index import build_index
from tasks.pretrain import pretrain_embeddings
from tasks.push import push_model
from tasks.register import register_model
from tasks.report import publish_report
from tasks.validate import validate_events
from tasks.vocabulary import plan_window

_S = get_settings()


def _run_name() -> str:
    return f"led-daily-{flow_run.parameters.get('run_date') or dt.datetime.now(dt.timezone.utc).date()}"


class _Stopwatch(dict):
    """Seconds per stage, in pipeline order."""

    def run(self, stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self[stage] = round(time.perf_counter() - t0, 3)


@flow(name="led-daily", flow_run_name=_run_name, log_prints=True, validate_parameters=True)
def daily(
    run_date: str | None = None,
    events_dir: str = str(_S.events_dir),
    window_days: int = _S.window_days,
    dim: int = _S.dim,
    min_count: int = _S.min_count,
    max_timeline: int = _S.max_timeline,
    svd_power_iters: int = _S.svd_power_iters,
    loss: Literal["bpr", "ns", "css", "multi"] = _S.loss,
    num_negatives: int = _S.num_negatives,
    negative_sampling: Literal["uniform", "popularity"] = _S.negative_sampling,
    learning_rate: float = _S.learning_rate,
    batch_size: int = _S.batch_size,
    epochs: int = _S.epochs,
    keep_prob: float = _S.keep_prob,
    seed: int = _S.seed,
    gate_tolerance: float = _S.gate_tolerance,
    n_trees: int = _S.n_trees,
    search_k: int = _S.search_k,
    push: bool = True,
) -> dict:
    """Retrain LED for one day and ship it if it beats production.

    Args:
        run_date: Run date D (YYYY-MM-DD); the run uses events of [D - window_days, D). Default: today (UTC).
        events_dir: Event store folder (views/ and clicks/ partitioned by date).
        window_days: Window W in days; its last day with events is the evaluation day.
        dim: Embedding size d (pre-training and LED).
        min_count: Minimum views (vocabulary) and co-occurrences (PMI) for an item to be embedded.
        max_timeline: Cap on the items per user timeline (co-occurrence and LED inputs).
        svd_power_iters: Power iterations of the randomized SVD.
        loss: Fine-tuning loss: bpr, ns, css (sampled) or multi (full softmax, small catalogs).
        num_negatives: Sampled negatives per batch.
        negative_sampling: Negatives drawn uniformly or by popularity.
        learning_rate: Adam learning rate.
        batch_size: Users per batch.
        epochs: Maximum epochs (early stopping on validation NDCG@100).
        keep_prob: Probability of keeping a timeline item in the input while training.
        seed: Seed of every random choice (deterministic reruns).
        gate_tolerance: The challenger is promoted if its NDCG@100 >= champion's x (1 - tolerance).
        n_trees: Annoy trees.
        search_k: Annoy search_k (nodes inspected per query).
        push: Push a promoted model to serving (false: train, register and gate only).
    """
    log = get_run_logger()
    run_date = run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    settings = Settings(**(_S.model_dump() | {
        "events_dir": events_dir, "window_days": window_days, "dim": dim, "min_count": min_count,
        "max_timeline": max_timeline, "svd_power_iters": svd_power_iters, "loss": loss,
        "num_negatives": num_negatives, "negative_sampling": negative_sampling, "learning_rate": learning_rate,
        "batch_size": batch_size, "epochs": epochs, "keep_prob": keep_prob, "seed": seed,
        "gate_tolerance": gate_tolerance, "n_trees": n_trees, "search_k": search_k}))
    clock = _Stopwatch()

    validation = clock.run("validate", validate_events, settings, run_date)
    plan = clock.run("vocabulary", plan_window, settings, run_date)
    pretrained = clock.run("pretrain", pretrain_embeddings, settings, plan, PretrainConfig.from_settings(settings))
    trained = clock.run("fine-tune", fine_tune_led, settings, plan, pretrained, LedConfig.from_settings(settings))
    registered = clock.run("register", register_model, settings, plan, trained, pretrained, validation, dict(clock))
    index = clock.run("index", build_index, settings, run_date, trained, registered)
    decision = clock.run("evaluate-and-gate", evaluate_and_gate, settings, trained, registered)
    pushed = None
    if decision["promoted"] and push:
        pushed = clock.run("push", push_model, settings, index)
    log.info("gate %s: %s", "promoted" if decision["promoted"] else "rejected", "; ".join(decision["reasons"]))
    publish_report(settings, plan, validation, pretrained, trained, registered, index, decision, pushed, dict(clock))
    return {
        "run_date": run_date, "model_version": registered["model_version"], "run_id": registered["run_id"],
        "promoted": decision["promoted"], "reasons": decision["reasons"],
        "pushed_slot": pushed["slot"] if pushed else None,
        "ndcg@100": trained["metrics"]["ndcg@100"], "recall@20": trained["metrics"]["recall@20"],
        "recall@50": trained["metrics"]["recall@50"], "ann_recall": index["ann_recall"],
        "champion_ndcg@100": decision["champion_metrics"].get("ndcg_at_100"), "seconds": dict(clock),
    }
