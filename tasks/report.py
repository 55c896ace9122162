"""Task: the run's Prefect artifacts: a markdown report and a table of metrics."""
from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from infra.registry import RunInfo
from infra.settings import Settings
from models.gate import GateDecision
from models.pipeline import Pretrained, Trained, WindowPlan
from serving.publish import SlotBuild
from serving.storage import Push
from tasks.validate import ValidationReport

METRICS = ("recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20")


def mlflow_run_link(settings: Settings, registered: RunInfo) -> str:
    uri = settings.mlflow_tracking_uri.rstrip("/")
    path = f"#/experiments/{registered.experiment_id}/runs/{registered.run_id}"
    return f"[{registered.run_id}]({uri}/{path})" if uri.startswith("http") else registered.run_id


def metrics_rows(decision: GateDecision) -> list[dict]:
    rows = []
    for name in METRICS:
        chal = decision.challenger_metrics.get(name)
        champ = decision.champion_metrics.get(name)
        delta = chal - champ if chal is not None and champ is not None else None
        rows.append({"metric": name, "challenger": chal, "champion": champ, "delta": delta})
    return rows


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _refit_md(refit: GateDecision | None) -> str:
    if refit is None:
        return ""
    head = (f"Refit on the whole window: version {refit.challenger_version} "
            f"{'ships' if refit.promoted else 'NOT shipped (the evaluated model ships)'}")
    return f"\n### {head}\n" + "\n".join("- " + r for r in refit.reasons) + "\n"


@task(name="report", cache_policy=NO_CACHE)
def publish_report(settings: Settings, plan: WindowPlan, validation: ValidationReport, pretrained: Pretrained,
                   trained: Trained, registered: RunInfo, slot: SlotBuild, decision: GateDecision,
                   pushed: Push | None, timings: dict, refit: GateDecision | None = None) -> str:
    rows = metrics_rows(decision)
    gain = trained.side_by_side()
    gain_table = "\n".join(f"| {name} | {_fmt(gain[name].get('ndcg@100'))} | {_fmt(gain[name].get('recall@20'))} |"
                           for name in ("popularity", "initialisation", "trained", "gain"))
    table = "\n".join(f"| {r['metric']} | {_fmt(r['challenger'])} | {_fmt(r['champion'])} | {_fmt(r['delta'])} |"
                      for r in rows)
    push_line = (f"pushed model version {pushed.model_version} to slot **{pushed.slot}** ({pushed.store})"
                 if pushed else "not pushed: serving keeps the current champion")
    md = f"""# LED daily run {plan.run_date}

## Data
Window [{plan.start}, {plan.run_date}): {plan.views:,} views; trained on the days before
{plan.eval_day}, evaluated on its clicks. Items seen {plan.items_seen:,}, vocabulary
{plan.vocabulary_size:,}, embedded {pretrained.items:,} (d={pretrained.dim},
explained variance {pretrained.explained_variance:.3f}).

## Validation
{validation.summary_md}

## Challenger vs champion (same held-out clicks, every item of the window: {decision.eval_set})
| metric | challenger v{decision.challenger_version} | champion v{decision.champion_version or '-'} | delta |
|---|---|---|---|
{table}

## What the fine-tuning added (challenger, same held-out clicks)
| model | NDCG@100 | Recall@20 |
|---|---|---|
{gain_table}

Trainable parameters {trained.trainable_params:,}, best step {trained.best_step} (epoch {trained.best_epoch}),
ANN recall@100 {slot.ann_recall:.4f}.

## Gate: {'PROMOTED' if decision.promoted else 'REJECTED'}
{chr(10).join('- ' + r for r in decision.reasons)}
{_refit_md(refit)}
## Serving
{push_line}

MLflow run: {mlflow_run_link(settings, registered)}

Seconds per stage: {', '.join(f'{k} {v:.1f}' for k, v in timings.items())}
"""
    create_markdown_artifact(key="daily-report", markdown=md, description=f"LED daily run {plan.run_date}")
    create_table_artifact(key="daily-metrics", table=rows, description=f"metrics {plan.run_date}")
    return md
