"""Run the daily flow from code or the CLI and summarise its final state as plain data."""
from __future__ import annotations

from typing import Any

from infra.orchestration import configure_prefect
from infra.settings import get_settings

RESULT_KEYS = ("model_version", "promoted", "pushed_slot", "ndcg@100", "recall@20", "recall@50",
               "ann_recall", "champion_ndcg@100", "reasons", "run_id", "seconds", "refit_version",
               "refit_shipped", "pushed_version", "pushed_model_dir", "evaluated_model_dir", "serving_watch")


def flow_parameters() -> dict[str, tuple[str, Any]]:
    """Knob name → (its group of the flow, effective default) for ``led run --list-params``."""
    from flows.params import GROUPS

    settings = get_settings()
    knobs = {name: (group, getattr(settings, name)) for group, names in GROUPS.items() for name in names}
    return {"run_date": ("run", "today (UTC)"), **knobs, "push": ("run", True)}


def run_daily(params: dict[str, Any]) -> dict[str, Any]:
    """Run ``led-daily`` in this process with flat knob names (``{"dim": 64, "run_date": ...}``);
    never raises for a failed run (the state says it)."""
    configure_prefect(get_settings())
    from flows.daily import daily
    from flows.params import grouped

    state = daily(**grouped(params), return_state=True)
    summary: dict[str, Any] = {"state": state.type.value, "state_name": state.name,
                               "run_date": params.get("run_date"), **{k: None for k in RESULT_KEYS},
                               "flow_run_id": str(state.state_details.flow_run_id)}
    if state.is_completed():
        summary |= state.result()
    else:
        try:
            state.result()
        except BaseException as exc:  # noqa: BLE001 - the failure is reported, not re-raised
            summary["error"] = f"{type(exc).__name__}: {exc}"
        summary["validation_failed"] = "ValidationFailed" in summary.get("error", "")
    return summary
