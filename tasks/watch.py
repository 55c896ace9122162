"""Task: watch serving after the push; on a regression mark the registry, raise a Prefect event, fail.

docs/architecture.md, "Automatic rollback": ``serving.watch.watch_push`` does the watching and the
ACTIVE flip; this task adds what needs MLflow and Prefect: the version's ``rolled_back`` tag and the
champion alias moved back (``infra.registry.mark_rolled_back``), the event an automation can match
(``led.model.rolled-back``, or ``led.model.rollback-failed`` when no rollback was possible), the
run's ``rollback-watch`` artifact, and the exception that fails the run with the reasons.
"""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from infra import registry
from infra.settings import Settings
from models.evaluation import eval_set_json, load_eval_set, sample_eval_set
from models.export import EVAL_SET
from serving.publish import SlotBuild
from serving.storage import BlueGreenStore, Push
from serving.watch import ROLLED_BACK, ServingRegression, WatchReport, watch_push

ROLLED_BACK_EVENT = "led.model.rolled-back"
ROLLBACK_FAILED_EVENT = "led.model.rollback-failed"


def canary_probes(model_dir: Path, users: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """The fixed probe set: ``users`` of the model's eval set drawn by seed, as (timeline, targets) ids."""
    path = Path(model_dir) / EVAL_SET
    if users <= 0 or not path.is_file():
        return []
    data = eval_set_json(sample_eval_set(load_eval_set(path), users, seed))
    return [(inputs, targets) for inputs, targets in zip(data["inputs"], data["targets"]) if inputs and targets]


def model_resource(settings: Settings, version: str) -> dict[str, str]:
    name = settings.mlflow_model_name
    return {"prefect.resource.id": f"led.model-version.{name}.{version}",
            "prefect.resource.name": f"{name} version {version}", "led.model.name": name,
            "led.model.version": str(version)}


def _report_md(report: WatchReport, marked: dict | None) -> str:
    lines = [f"# Serving watch: {report.status}", "", report.summary(), ""]
    for title, values in (("Canary", report.canary), ("Health since the swap", report.health),
                          ("Rollback", report.rollback), ("Registry", marked), ("Thresholds", report.thresholds)):
        if values:
            lines += [f"## {title}", "| figure | value |", "|---|---|",
                      *(f"| {k} | {v} |" for k, v in values.items()), ""]
    return "\n".join(lines)


def act_on_regression(settings: Settings, report: WatchReport) -> dict:
    """Mark the registry and emit the event; returns the registry's changes."""
    reason = "; ".join(report.reasons)
    marked = None
    if report.status == ROLLED_BACK:
        figures = {f"rollback/canary_{k}": v for k, v in (report.canary or {}).items()
                   if k in ("ndcg", "previous_ndcg", "drop")}
        marked = registry.mark_rolled_back(settings, report.model_version, reason, report.previous_version, figures)
    related = [{**model_resource(settings, report.previous_version), "prefect.resource.role": "restored-version"}] \
        if report.previous_version else []
    emit_event(ROLLED_BACK_EVENT if report.status == ROLLED_BACK else ROLLBACK_FAILED_EVENT,
               resource=model_resource(settings, report.model_version), related=related + _run_resources(),
               payload={**report.as_dict(), "registry": marked})
    return marked or {}


def _run_resources() -> list[dict[str, str]]:
    """The flow run and deployment this task runs in (what an automation on the deployment matches)."""
    from prefect.runtime import deployment, flow_run

    found = [("flow-run", flow_run.id), ("deployment", deployment.id)]
    return [{"prefect.resource.id": f"prefect.{role}.{rid}", "prefect.resource.role": role}
            for role, rid in found if rid]


@task(name="watch", cache_policy=NO_CACHE)
def watch_serving(settings: Settings, pushed: Push | None, slot: SlotBuild) -> dict:
    """Skipped without a serving endpoint; raises ``ServingRegression`` (the run fails) after a rollback."""
    watching = settings.serving_url and settings.rollback_watch_seconds > 0
    probes = canary_probes(Path(slot.files["item_ids.npy"]).parent, settings.rollback_probe_users,
                           settings.seed) if watching else []
    report = watch_push(settings, BlueGreenStore.from_settings(settings), pushed, probes)
    marked = act_on_regression(settings, report) if report.regressed else None
    create_markdown_artifact(key="rollback-watch", markdown=_report_md(report, marked),
                             description=report.summary()[:500])
    if report.regressed:
        raise ServingRegression(report)
    return report.as_dict()
