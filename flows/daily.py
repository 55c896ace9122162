"""The daily LED flow: one run per date D, on the events of [D-W, D) (docs/architecture.md, "One daily run").

    validate → vocabulary → pretrain → fine-tune → register → index → evaluate & gate
        → [promoted] refit on the whole window → register → index → ship → push → report → watch (rollback)

The index is built before the gate so the gate's sanity checks include its
measured ANN recall; the gate evaluates challenger and champion on the same
held-out clicks. A promoted model is refit on the whole window (the
evaluation day included) and the refit ships if it is sane
(docs/architecture.md, "Shipping the freshest day"). A validation failure fails the run before anything is
trained. Pre-training and fine-tuning are cached on their inputs (window
fingerprint, configuration, code), so a rerun after a late failure resumes
without recomputing them. The knobs come in one typed group per stage
(``flows.params``), each empty by default = its setting (``LED_*``), so the
Prefect UI's custom-run form can change any of them.
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.params import (DataParams, FineTuneParams, GateParams, IndexParams, PretrainParams, RunDate,
                          WatchParams, settings_for_run)
from infra.registry import RunInfo
from infra.resources import PeakRss
from models.gate import GateDecision
from models.led import LedConfig
from models.pipeline import Trained, WindowPlan
from models.pretrain import PretrainConfig
from serving.publish import SlotBuild
from tasks.common import with_timeout
from tasks.finetune import fine_tune_led
from tasks.gate import evaluate_and_gate
from tasks.index import build_index
from tasks.pretrain import pretrain_embeddings
from tasks.push import push_model
from tasks.refit import refit_led, ship_refit_model
from tasks.register import register_model
from tasks.report import publish_report
from tasks.validate import validate_events
from tasks.vocabulary import plan_run_window
from tasks.watch import watch_serving


def _today() -> dt.date:
    return dt.datetime.now(dt.timezone.utc).date()


def _run_name() -> str:
    return f"led-daily-{flow_run.parameters.get('run_date') or _today()}"


class _Stopwatch(dict):
    """Runs each stage task with the run's timeout for it (``tasks.common.with_timeout``) and records
    its seconds, in pipeline order; ``peak_rss_mb``: the peak memory of each stage (this process and
    the Spark JVM, ``infra.resources``)."""

    def __init__(self, settings):
        super().__init__()
        self.settings = settings
        self.peak_rss_mb: dict[str, int] = {}

    def run(self, stage: str, stage_task, *args, **kwargs):
        peak, t0 = PeakRss(), time.perf_counter()
        try:
            with peak:
                return with_timeout(stage_task, self.settings)(*args, **kwargs)
        finally:
            self[stage] = round(time.perf_counter() - t0, 3)
            self.peak_rss_mb[stage] = peak.mb


@flow(name="led-daily", flow_run_name=_run_name, log_prints=True, validate_parameters=True)
def daily(
    run_date: RunDate = None,
    data: DataParams = DataParams(),
    pretrain: PretrainParams = PretrainParams(),
    fine_tune: FineTuneParams = FineTuneParams(),
    index: IndexParams = IndexParams(),
    gate: GateParams = GateParams(),
    watch: WatchParams = WatchParams(),
    push: bool = True,
) -> dict:
    """Retrain LED for one day and ship it if it beats production.

    Args:
        run_date: Run date D; the run uses events of [D - window_days, D). Default: today (UTC).
        data: Event store, window and seed (empty fields: the settings).
        pretrain: Pre-training knobs: d, min_count, PMI smoothing, timeline cap, SVD power iterations.
        fine_tune: Fine-tuning knobs: loss, negatives, learning rate, batch size, epochs, keep_prob.
        index: Annoy index knobs: trees and search_k.
        gate: Champion/challenger gate tolerance; whether a promoted model is refit on the whole window.
        watch: Serving health watch after the push: endpoint, period, rollback thresholds.
        push: Push a promoted model to serving (false: train, register and gate only).
    """
    log = get_run_logger()
    settings = settings_for_run(data, pretrain, fine_tune, index, gate, watch)
    run_date = (run_date or _today()).isoformat()
    clock = _Stopwatch(settings)

    validation = clock.run("validate", validate_events, settings, run_date)
    plan = clock.run("vocabulary", plan_run_window, settings, run_date)
    pretrained = clock.run("pretrain", pretrain_embeddings, settings, plan, PretrainConfig.from_settings(settings))
    trained = clock.run("fine-tune", fine_tune_led, settings, plan, pretrained, LedConfig.from_settings(settings))
    registered = clock.run("register", register_model, settings, plan, trained, pretrained,
                           validation.report_path, dict(clock))
    slot = clock.run("index", build_index, settings, run_date, trained, registered)
    decision = clock.run("evaluate-and-gate", evaluate_and_gate, settings, trained, registered, slot)
    log.info("gate %s: %s", "promoted" if decision.promoted else "rejected", "; ".join(decision.reasons))
    shipped = None
    if decision.promoted and settings.refit_whole_window:
        shipped = _refit(settings, run_date, pretrained, trained, registered, clock)
        log.info("refit %s: %s", "shipped" if shipped.decision.promoted else "not shipped",
                 "; ".join(shipped.decision.reasons))
    live = shipped.slot if shipped and shipped.decision.promoted else slot
    pushed = clock.run("push", push_model, settings, live) if decision.promoted and push else None
    with_timeout(publish_report, settings)(settings, plan, validation, pretrained, trained, registered, slot,
                                           decision, pushed, dict(clock), shipped.decision if shipped else None)
    # after the report: a rollback fails the run, and the day's report must exist all the same
    watched = clock.run("watch", watch_serving, settings, pushed, live) if pushed else None
    return {
        "run_date": run_date, "model_version": registered.model_version, "run_id": registered.run_id,
        "promoted": decision.promoted, "reasons": decision.reasons,
        "pushed_slot": pushed.slot if pushed else None,
        "ndcg@100": trained.metrics["ndcg@100"], "recall@20": trained.metrics["recall@20"],
        "recall@50": trained.metrics["recall@50"], "ann_recall": slot.ann_recall,
        **trained.figures(),
        "ndcg@100_se": decision.challenger_metrics.get("ndcg_at_100_se"),
        "champion_ndcg@100": decision.champion_metrics.get("ndcg_at_100"), "seconds": dict(clock),
        "peak_rss_mb": clock.peak_rss_mb,
        "refit_version": shipped.registered.model_version if shipped else None,
        "refit_shipped": bool(shipped and shipped.decision.promoted),
        "pushed_version": live.model_version if pushed else None,
        "evaluated_model_dir": trained.model_dir,
        "pushed_model_dir": str(live.files["item_ids.npy"].parent) if pushed else None,
        "serving_watch": watched["summary"] if watched else None,
    }


@dataclass(frozen=True)
class _Refit:
    plan: WindowPlan
    trained: Trained
    registered: RunInfo
    slot: SlotBuild
    decision: GateDecision


def _refit(settings, run_date: str, pretrained, trained, registered, clock: _Stopwatch) -> _Refit:
    """vocabulary → pretrain → fine-tune (warm) → register → index → ship, on the whole window."""
    whole = clock.run("refit-vocabulary", plan_run_window, settings, run_date, whole_window=True)
    pretrained_whole = clock.run("refit-pretrain", pretrain_embeddings, settings, whole,
                                 PretrainConfig.from_settings(settings))
    refit = clock.run("refit", refit_led, settings, whole, pretrained_whole, trained, pretrained,
                      LedConfig.from_settings(settings))
    registered_refit = clock.run("refit-register", register_model, settings, whole, refit, pretrained_whole, None,
                                 dict(clock), refit_of=registered.model_version)
    slot = clock.run("refit-index", build_index, settings, run_date, refit, registered_refit, folder="index-refit")
    decision = clock.run("ship-refit", ship_refit_model, settings, registered_refit, registered, slot)
    return _Refit(whole, refit, registered_refit, slot, decision)
