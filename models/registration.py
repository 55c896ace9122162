"""Registering an exported LED model in MLflow (docs/architecture.md, "Registry and gate").

The MLflow mechanics live in ``infra.registry``; this module says what an LED
model's run holds: the model card flattened into params, its final metrics,
per-epoch history and stage timings, the exported folder, and the model as a
pyfunc logged from code (``models/pyfunc.py`` plus the numpy-only files it
imports, no pickle, no TensorFlow). The version is tagged with the model's
fingerprint (``models.export.model_fingerprint``) so a rerun of a date with
byte-identical arrays reuses its version instead of registering a duplicate.
"""
from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from infra import registry
from infra.errors import UserError
from infra.events import parse_date
from models.export import ExportedModel, load_model, model_fingerprint

if TYPE_CHECKING:
    from infra.settings import Settings

MODELS_DIR = Path(__file__).resolve().parent
# What the pyfunc imports at load time: numpy-only files, never TensorFlow.
PYFUNC_CODE = ("__init__.py", "export.py", "scoring.py", "metrics.py", "pyfunc.py")
# The daily chart (plots/daily_metrics.png): the model, the popularity baseline on the same clicks,
# and the catalog it covers, over the last run dates.
TREND_METRICS = ("ndcg_at_100", "popularity_ndcg_at_100", "catalog_size")


def _load(model_dir: Path) -> ExportedModel:
    try:
        return load_model(Path(model_dir))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _pyfunc(model_dir: Path, tmp: Path) -> registry.PyfuncModel:
    """Copy the pyfunc's code into ``tmp/models`` (no caches, no TensorFlow code) and describe it."""
    from importlib.metadata import version

    from models.pyfunc import ARTIFACT_KEY, signature

    package = tmp / "models"
    package.mkdir()
    for name in PYFUNC_CODE:
        shutil.copy2(MODELS_DIR / name, package / name)
    pins = tuple(f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "numpy", "pandas"))
    return registry.PyfuncModel(package / "pyfunc.py", (package,), {ARTIFACT_KEY: str(model_dir)}, signature(),
                                pins)


def register_export(settings: "Settings", model_dir: Path, run_date: str | dt.date,
                    params: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                    history: Sequence[dict[str, Any]] | None = None, timings: dict[str, float] | None = None,
                    artifacts: Iterable[Path] = (), tags: dict[str, str] | None = None,
                    dataset: registry.DatasetRef | None = None) -> registry.RunInfo:
    """Log one training of ``model_dir`` as an MLflow run, register its pyfunc, alias it ``challenger``.

    ``params`` override what the model card says; ``metrics`` are final
    figures (``recall@20`` ...); ``history`` one dict per evaluation (``epoch``,
    ``loss``, ``val_ndcg@100`` ...), default the card's; ``timings`` seconds per
    stage; ``artifacts`` extra files or folders (the validation report) logged
    under ``reports/``; ``tags`` extra version tags (e.g. ``refit_of``); ``dataset`` the training
    window (``mlflow.log_input``). The run also gets the popularity baseline's NDCG@100 and the
    catalog size as metrics, and the chart of ``TREND_METRICS`` over the last run dates.
    """
    model_dir = Path(model_dir).resolve()
    model = _load(model_dir)
    run_date = parse_date(run_date).isoformat()
    card = model.card
    all_params = registry.card_params(card) | {
        "run_date": run_date, "vocabulary_size": len(model.item_ids), "d": model.dim} | dict(params or {})
    card_metrics, card_timings = registry.card_figures(card)
    popularity = (card.get("baselines") or {}).get("popularity") or {}
    final = (card_metrics | registry.finite_numbers(card.get("metrics", {}))
             | {f"popularity_{k}": v for k, v in registry.finite_numbers(popularity).items()}
             | {"catalog_size": float(len(model.item_ids))} | registry.finite_numbers(metrics or {}))
    history = list(history if history is not None else card.get("history", []) or [])
    tags = {"vocabulary_size": str(len(model.item_ids)), registry.MODEL_SHA_TAG: model_fingerprint(model_dir)
            } | dict(tags or {})
    with tempfile.TemporaryDirectory(prefix="led-pyfunc-") as tmp:
        return registry.log_run(settings, run_date, model_dir, _pyfunc(model_dir, Path(tmp)), params=all_params,
                                metrics=final, history=history, timings=card_timings | dict(timings or {}),
                                artifacts=artifacts, version_tags=tags, dataset=dataset,
                                trend_metrics=TREND_METRICS)


def find_registered(settings: "Settings", model_dir: Path, run_date: str | dt.date) -> registry.RunInfo | None:
    """The version already registered for this run date with byte-identical arrays, if any."""
    return registry.find_version(settings, {registry.MODEL_SHA_TAG: model_fingerprint(Path(model_dir)),
                                            registry.RUN_DATE_TAG: str(parse_date(run_date))})


def download_exported(name: str, version: str, dst: Path) -> ExportedModel:
    """The exported arrays of a registered version; ``ValueError`` when missing or corrupt."""
    from models.pyfunc import ARTIFACT_KEY

    folder = registry.download_model_artifact(name, version, ARTIFACT_KEY, dst)
    try:
        return load_model(folder)
    except ValueError as exc:
        raise ValueError(f"artifacts of version {version} are unreadable: {exc}") from None
    except Exception as exc:  # e.g. a truncated .npy raising EOFError
        raise ValueError(f"artifacts of version {version} are unreadable: {type(exc).__name__}: {exc}") from None
