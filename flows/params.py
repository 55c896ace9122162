"""The daily flow's parameters: one typed group per stage, each knob defined once in ``infra.settings``.

Each group is a pydantic model whose fields mirror settings fields (same
type, same description), all defaulting to ``None`` = "the setting's value"
(``LED_<FIELD>``, ``led.toml`` or its default), so the Prefect UI's custom-run
form shows the knobs grouped by stage and a rerun changes only what is
filled in. :func:`settings_for_run` applies the filled ones through
``Settings.with_overrides``, the one validated override path.
"""
from __future__ import annotations

import datetime as dt
import types
from typing import Any, Union, get_args

from pydantic import BaseModel, Field, create_model, model_serializer
from pydantic.json_schema import SkipJsonSchema

from infra.errors import UserError
from infra.settings import Settings, get_settings

GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("events_dir", "window_days", "seed"),
    "pretrain": ("dim", "min_count", "pmi_smoothing", "max_timeline", "svd_power_iters", "pretrain_engine",
                 "pretrain_local_max_views"),
    "fine_tune": ("loss", "num_negatives", "negative_sampling", "learning_rate", "batch_size", "max_steps",
                  "epochs", "eval_every", "patience", "lr_schedule", "warmup_share", "bias_lr_scale",
                  "init_scale", "keep_prob", "max_train_users"),
    "index": ("n_trees", "search_k"),
    "gate": ("gate_tolerance", "gate_noise_z", "refit_whole_window", "max_eval_users"),
    "watch": ("serving_url", "rollback_watch_seconds", "rollback_max_error_rate", "rollback_max_p99_ms",
              "rollback_max_fallback_share", "rollback_max_ndcg_drop"),
}
TITLES = {"data": "Data", "pretrain": "Pretrain", "fine_tune": "FineTune", "index": "Index", "gate": "Gate",
          "watch": "Watch"}


def optional(annotation: Any) -> Any:
    """``T | None`` whose JSON schema is just ``T``: the Prefect UI then renders T's own input (a
    number box, a select, a date picker; empty = not given) instead of a T/None union toggle."""
    args = get_args(annotation) if isinstance(annotation, types.UnionType) or \
        getattr(annotation, "__origin__", None) is Union else (annotation,)
    present = tuple(a for a in args if a is not type(None))
    return Union[(Union[present] if len(present) > 1 else present[0]), SkipJsonSchema[None]]


def _no_default(schema: dict) -> None:
    schema.pop("default", None)  # a null default would prefill the form with "None"


class _Group(BaseModel):
    @model_serializer(mode="wrap")
    def _filled_only(self, handler):
        """Dump only the filled-in knobs, so the form's group defaults are empty, not nulls."""
        return {k: v for k, v in handler(self).items() if v is not None}


RunDate = optional(dt.date)


def _group(name: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for knob in GROUPS[name]:
        info = Settings.model_fields[knob]
        default = info.default if info.default is not None else "derived from home"
        fields[knob] = (optional(info.annotation), Field(
            None, description=f"{info.description or knob} Empty: LED_{knob.upper()} or {default!r}.",
            json_schema_extra=_no_default))
    return create_model(f"{TITLES[name]}Params", __doc__=f"{TITLES[name]} stage knobs (empty = settings).",
                        __base__=_Group, **fields)


DataParams = _group("data")
PretrainParams = _group("pretrain")
FineTuneParams = _group("fine_tune")
IndexParams = _group("index")
GateParams = _group("gate")
WatchParams = _group("watch")


def settings_for_run(*groups: BaseModel) -> Settings:
    """The run's settings: the environment's, with every filled-in parameter applied (validated)."""
    changes: dict[str, Any] = {}
    for group in groups:
        changes |= group.model_dump(exclude_none=True)
    return get_settings().with_overrides(**changes)


def grouped(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"dim": 64, "run_date": ...}`` → ``{"pretrain": {"dim": 64}, "run_date": ...}`` for the flow call.

    Names that belong to no group (``run_date``, ``push``) pass through; an unknown name is a ``UserError``.
    """
    owner = {knob: group for group, knobs in GROUPS.items() for knob in knobs}
    out: dict[str, Any] = {}
    for name, value in flat.items():
        if name in owner:
            out.setdefault(owner[name], {})[name] = value
        elif name in ("run_date", "push") or name in GROUPS:
            out[name] = value
        else:
            raise UserError(f"unknown flow parameter {name!r} (see `led run --list-params`)")
    return out
