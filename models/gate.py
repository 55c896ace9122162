"""The champion/challenger gate (docs/architecture.md, "Registry and gate").

Both models are downloaded from the registry (what would actually be served)
and scored by ``models.evaluation.evaluate_model`` on one eval set whose item
universe is every item of the evaluation window, so neither model's
vocabulary filters the targets. Promotion needs challenger NDCG@100 >=
champion NDCG@100 x (1 - gate_tolerance), or a shortfall within
``gate_noise_z`` standard errors of the paired per-user difference (noise),
and the sanity checks: finite arrays, a vocabulary within
[vocab_min_ratio, vocab_max_ratio] x the champion's, and an ANN recall >=
min_ann_recall when the caller measured one (the daily flow passes its index
build's). The first version becomes champion
when its sanity checks pass. An unreadable champion makes the gate refuse (a
human must look), never crash. The decision and its reasons are tags on the
version and its run (``infra.registry.record_decision``).
"""
from __future__ import annotations

import datetime as dt
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra import registry
from infra.errors import UserError
from models.data import EvalSet
from models.evaluation import evaluate_model_per_user, fingerprint
from models.metrics import beyond_noise, paired_difference, standard_error
from models.registration import download_exported

if TYPE_CHECKING:
    import numpy as np

    from infra.settings import Settings
    from models.export import ExportedModel

GATE_METRIC = registry.GATE_METRIC
REFIT_OF_TAG = "refit_of"  # on a refit's version: the promoted version it was refit from


@dataclass
class GateDecision:
    promoted: bool
    reasons: list[str]
    challenger_version: str
    champion_version: str | None
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    eval_set: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        tags = {
            "gate.decision": "promoted" if self.promoted else "rejected",
            "gate.reasons": " | ".join(self.reasons)[:5000],
            "gate.champion_version": self.champion_version or "none",
            "gate.eval_set": self.eval_set,
            "gate.evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        for side, values in (("challenger", self.challenger_metrics), ("champion", self.champion_metrics)):
            if GATE_METRIC in values:
                tags[f"gate.{side}_{GATE_METRIC}"] = f"{values[GATE_METRIC]:.6f}"
        return tags

    def figures(self) -> dict[str, float]:
        return ({f"gate/{k}": v for k, v in self.challenger_metrics.items()}
                | {f"gate/champion_{k}": v for k, v in self.champion_metrics.items()})


def _metrics(model: "ExportedModel", eval_set: EvalSet) -> tuple[dict[str, float], "np.ndarray"]:
    metrics, per_user = evaluate_model_per_user(model, eval_set)
    named = {registry.metric_name(k): float(v) for k, v in metrics.items()}
    named[f"{GATE_METRIC}_se"] = standard_error(per_user)  # the eval day's sampling noise, recorded with it
    return named, per_user


def _nonfinite(model: "ExportedModel") -> str | None:
    import numpy as np

    bad = [name for name, arr in (("V", model.V), ("b", model.b)) if not np.isfinite(arr).all()]
    return f"non-finite values (NaN/inf) in {', '.join(bad)}" if bad else None


def _card_ann_recall(model: "ExportedModel") -> float | None:
    value = (model.card.get("metrics") or {}).get("ann_recall", model.card.get("ann_recall"))
    return float(value) if value is not None else None


def sanity_checks(settings: "Settings", model: "ExportedModel", reference: "ExportedModel | None",
                  ann_recall: float | None, name: str = "challenger") -> tuple[list[str], list[str]]:
    """What any model must pass to be served: finite arrays, the index's recall floor, a vocabulary
    within [vocab_min_ratio, vocab_max_ratio] of ``reference``'s. (failed, passed) reasons."""
    failed, passed = [], []
    if problem := _nonfinite(model):
        failed.append(f"{name} has {problem}")
    else:
        passed.append(f"{name} arrays are finite")
    if ann_recall is not None:
        (passed if ann_recall >= settings.min_ann_recall else failed).append(
            f"ANN recall {ann_recall:.4f} {'>=' if ann_recall >= settings.min_ann_recall else '<'} "
            f"min_ann_recall {settings.min_ann_recall}")
    if reference is not None:
        ratio = len(model.item_ids) / max(1, len(reference.item_ids))
        within = settings.vocab_min_ratio <= ratio <= settings.vocab_max_ratio
        (passed if within else failed).append(
            f"vocabulary {len(model.item_ids)} = {ratio:.2f} x {len(reference.item_ids)} "
            f"{'within' if within else 'outside'} [{settings.vocab_min_ratio}, {settings.vocab_max_ratio}]")
    return failed, passed


def checks(settings: "Settings", challenger: "ExportedModel", champion: "ExportedModel | None",
           chal_metrics: dict[str, float], champ_metrics: dict[str, float],
           ann_recall: float | None, paired: tuple[float, float] | None = None) -> tuple[list[str], list[str]]:
    """The gate policy: the sanity checks against the champion, then NDCG@100 against the champion's.

    ``paired``: mean and standard error of the per-user NDCG@100 difference (challenger - champion) on
    the eval set. A challenger below the bar is still promoted when the bar is within
    ``gate_noise_z`` standard errors of that difference: both models are trained on nearly the same
    days, so a small shortfall is mostly which users happened to click, not a worse model.
    """
    failed, passed = sanity_checks(settings, challenger, champion, ann_recall)
    ndcg = chal_metrics.get(GATE_METRIC, math.nan)
    if not math.isfinite(ndcg):
        failed.append("challenger NDCG@100 on the eval set is not a number")
    if champion is None:
        return failed, passed
    champ = champ_metrics.get(GATE_METRIC, math.nan)
    bar = champ * (1 - settings.gate_tolerance)
    if math.isfinite(ndcg) and math.isfinite(bar):
        ok = ndcg >= bar
        reason = (f"NDCG@100 {ndcg:.4f} {'>=' if ok else '<'} champion {champ:.4f} "
                  f"x (1 - {settings.gate_tolerance}) = {bar:.4f}")
        if not ok and paired is not None and settings.gate_noise_z > 0 and math.isfinite(paired[1]):
            diff, se = paired
            upper, allowed = diff + settings.gate_noise_z * se, -settings.gate_tolerance * champ
            ok = not beyond_noise(diff, allowed, se, settings.gate_noise_z)
            reason += (f"; paired per-user difference {diff:+.4f} ± {se:.4f} (SE): {upper:+.4f} at "
                       f"{settings.gate_noise_z:g} SE {'>=' if ok else '<'} {allowed:+.4f}, "
                       f"{'within noise' if ok else 'a real shortfall'}")
        (passed if ok else failed).append(reason)
    return failed, passed


def gate(settings: "Settings", challenger_version: str | int, eval_set: EvalSet,
         ann_recall: float | None = None, model_name: str | None = None) -> GateDecision:
    """Evaluate challenger and champion on ``eval_set``; move ``champion`` if the challenger qualifies.

    ``ann_recall``: the challenger's measured index recall (default: the model card's, if any).
    """
    client = registry.connect(settings)
    name = model_name or settings.mlflow_model_name
    version = str(challenger_version)
    if not any(eval_set.target_sets()):
        raise UserError(f"eval set {eval_set.name!r} has no user with targets to predict")
    mv = registry.get_version(client, name, version)
    champ_version = registry.champion_version(client, name)
    decision = GateDecision(False, [], version, champ_version,
                            eval_set=f"{eval_set.name}#{fingerprint(eval_set)} ({len(eval_set)} users)")

    def record(reasons: list[str], promoted: bool = False) -> GateDecision:
        decision.reasons, decision.promoted = reasons, promoted
        registry.record_decision(client, name, version, mv.run_id, decision.tags(), decision.figures())
        return decision

    with tempfile.TemporaryDirectory(prefix="led-gate-") as tmp:
        try:
            challenger = download_exported(name, version, Path(tmp) / "challenger")
        except ValueError as exc:
            return record([f"challenger {exc}"])
        decision.challenger_metrics, challenger_per_user = _metrics(challenger, eval_set)
        if champ_version == version:
            return record([f"version {version} is already the champion"], promoted=True)
        if champ_version is not None and _refit_of(client, name, champ_version) == version:
            # a rerun: the champion is this challenger refit on the whole window (it saw the eval day)
            return record([f"version {version} is already the champion through its refit, version "
                           f"{champ_version}"], promoted=True)
        champion, paired = None, None
        if champ_version is not None:
            try:
                champion = download_exported(name, champ_version, Path(tmp) / "champion")
            except ValueError as exc:
                return record([f"refusing promotion: champion (version {champ_version}) {exc}; "
                               "inspect it, then promote a version explicitly"])
            decision.champion_metrics, champion_per_user = _metrics(champion, eval_set)
            paired = paired_difference(challenger_per_user, champion_per_user)
        recall = ann_recall if ann_recall is not None else _card_ann_recall(challenger)
        failed, passed = checks(settings, challenger, champion, decision.challenger_metrics,
                                decision.champion_metrics, recall, paired)
    if champion is None and not failed:
        passed.insert(0, "no champion yet: first model passing the sanity checks")
    if not failed:
        registry.move_champion(client, name, version, champ_version)
    return record(failed or passed, promoted=not failed)


def _refit_of(client, name: str, version: str) -> str | None:
    return (client.get_model_version(name, version).tags or {}).get(REFIT_OF_TAG)



def ship_refit(settings: "Settings", refit_version: str, evaluated_version: str,
               ann_recall: float | None, model_name: str | None = None) -> GateDecision:
    """Make the refit of a promoted version the champion if it passes the sanity checks
    (docs/architecture.md, "Shipping the freshest day"); else the evaluated version stays champion."""
    client = registry.connect(settings)
    name = model_name or settings.mlflow_model_name
    mv = registry.get_version(client, name, refit_version)
    champ = registry.champion_version(client, name)
    decision = GateDecision(False, [], str(refit_version), champ, eval_set=f"refit of version {evaluated_version}")
    if champ == str(refit_version):
        decision.promoted, decision.reasons = True, [f"version {refit_version} is already the champion"]
        return decision
    with tempfile.TemporaryDirectory(prefix="led-refit-") as tmp:
        try:
            refit = download_exported(name, str(refit_version), Path(tmp) / "refit")
            evaluated = download_exported(name, str(evaluated_version), Path(tmp) / "evaluated")
        except ValueError as exc:
            failed, passed = [f"refit {exc}"], []
        else:
            failed, passed = sanity_checks(settings, refit, evaluated, ann_recall, name="refit")
    decision.promoted = not failed and champ == str(evaluated_version)
    if not failed and not decision.promoted:
        failed = [f"the champion moved to version {champ} meanwhile: the refit of {evaluated_version} is not shipped"]
    decision.reasons = failed or [f"refit of promoted version {evaluated_version} on the whole window", *passed]
    if decision.promoted:
        registry.move_champion(client, name, str(refit_version), None)  # previous_champion stays the old one
    registry.record_decision(client, name, str(refit_version), mv.run_id, decision.tags(), {})
    return decision
