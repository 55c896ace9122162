"""The MLflow adapter: runs, registered versions, aliases, tags and comparison (no model logic).

Design (docs/architecture.md, "Registry and gate")
--------------------------------------------------
- **One registered model** (``settings.mlflow_model_name``). Every training logs
  one run in ``settings.mlflow_experiment`` and one model version; the new
  version always gets alias ``challenger``. Alias ``champion`` is what
  production serves; only the gate (``models.gate``), an explicit
  :func:`promote` or a serving rollback (:func:`mark_rolled_back`) moves it,
  and the version it replaced gets ``previous_champion`` (rollback target).
- This module knows MLflow, not LED: what a model is, how it is scored and
  when it deserves promotion live in ``models/`` (``models.registration``
  logs an export through :func:`log_run`; ``models.gate`` decides). It imports
  nothing above ``infra/``.
- **Any backend from settings**: ``sqlite:////abs/mlflow.db`` (artifacts next to
  the database) or an MLflow server over HTTP. A server that does not answer
  ``/health`` after a few bounded attempts is one ``UserError``; MLflow's own
  HTTP retries (7 by default, exponential back-off) are capped so a server
  that dies mid-run also fails in bounded time.

Metric names: MLflow refuses ``@``, so ``ndcg@100`` is logged as
``ndcg_at_100``. Per-epoch history is logged as ``history/<name>`` with the
epoch as step, stage timings as ``seconds/<stage>``, gate figures as
``gate/<name>``.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from infra.errors import UserError

if TYPE_CHECKING:  # heavy imports stay inside functions
    from mlflow import MlflowClient

    from infra.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
RUN_DATE_TAG = "run_date"
MODEL_SHA_TAG = "model_sha256"
GATE_METRIC = "ndcg_at_100"
DECISION_TAG, REASONS_TAG = "gate.decision", "gate.reasons"
FINAL_METRICS = ("recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20")
HEALTH_ATTEMPTS, HEALTH_TIMEOUT_S, HEALTH_PAUSE_S = 3, 3.0, 1.0
# MLflow's HTTP client defaults: 7 retries with back-off factor 2 (minutes of waiting) and a 120 s timeout.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
MAX_PARAM_CHARS = 6000
# MLflow 3's UI opens an experiment without this tag in the GenAI overview; this kind opens the
# training-runs view (the value is the UI's own enum, "custom_model_development").
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
TREND_DAYS = 30
TREND_CHART = "plots/daily_metrics.png"


@dataclass(frozen=True)
class RunInfo:
    """A logged training: its run and the registered version (``reused``: a rerun found it)."""

    run_id: str
    model_version: str
    model_uri: str
    experiment_id: str
    reused: bool = False


@dataclass(frozen=True)
class DatasetRef:
    """The data a run trained on, logged with ``mlflow.log_input`` (the digest is the caller's fingerprint)."""

    name: str
    digest: str
    source: str


@dataclass(frozen=True)
class PyfuncModel:
    """What :func:`log_run` needs to log a models-from-code pyfunc (prepared by ``models.registration``)."""

    code_file: Path
    code_paths: tuple[Path, ...]
    artifacts: dict[str, str]
    signature: Any
    pip_requirements: tuple[str, ...]


# --------------------------------------------------------------------------- connection
def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().resolve()


def check_server(uri: str, attempts: int = HEALTH_ATTEMPTS, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """``UserError`` unless the MLflow server at ``uri`` answers ``/health`` within a few bounded attempts."""
    import requests

    last = ""
    for attempt in range(attempts):
        try:
            r = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        if attempt + 1 < attempts:
            time.sleep(HEALTH_PAUSE_S)
    raise UserError(
        f"MLflow tracking server {uri} is unreachable ({last} after {attempts} attempts); "
        "start it with `led stack up` or set LED_MLFLOW_TRACKING_URI (e.g. sqlite:////abs/path/mlflow.db)"
    )


def connect(settings: "Settings") -> "MlflowClient":
    """Point MLflow at ``settings.mlflow_tracking_uri`` (checked) and return a client."""
    for key, value in HTTP_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = settings.mlflow_tracking_uri.strip()
    if _is_http(uri):
        check_server(uri)
    elif (db := _sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
    else:
        raise UserError(
            f"unsupported MLflow tracking URI {uri!r}: use http(s)://host:port or sqlite:////abs/path/mlflow.db "
            "(MLflow's file store is in maintenance mode)"
        )
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(settings: "Settings", client: "MlflowClient") -> str:
    """The experiment id, created on first use (artifacts beside the database for SQLite)."""
    name = settings.mlflow_experiment
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise UserError(f"MLflow experiment {name!r} is deleted; restore it or set LED_MLFLOW_EXPERIMENT")
        if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        return exp.experiment_id
    db = _sqlite_path(settings.mlflow_tracking_uri.strip())
    location = (db.parent / "mlartifacts").as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id




# --------------------------------------------------------------------------- helpers
def metric_name(name: str) -> str:
    """MLflow-safe metric/param name: ``ndcg@100`` -> ``ndcg_at_100``."""
    name = str(name).replace("@", "_at_")
    return re.sub(r"[^\w.\-/ :]", "_", name)


def finite_numbers(values: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in (values or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[metric_name(key)] = float(value)
    return out


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of the code (plus ``-dirty`` when tracked files changed), or None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def card_params(card: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten the model card into params (``metrics`` are logged as metrics instead)."""
    out: dict[str, str] = {}
    for key, value in card.items():
        if not prefix and key in ("metrics", "history", "timings"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(card_params(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = str(value)
    return out


def _walk(card: dict[str, Any], prefix: str = ""):
    """(dotted path, value) of every leaf of a nested dict."""
    for key, value in card.items():
        if isinstance(value, dict):
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def card_figures(card: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, timings) the model card carries outside ``metrics``: the SVD explained variance
    and every ``timings`` block / ``*_seconds`` figure (e.g. the pre-training stages)."""
    metrics, timings = {}, {}
    for path, value in _walk({k: v for k, v in card.items() if k != "metrics"}):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        parts = path.split(".")
        if parts[-1] == "explained_variance":
            metrics["svd_explained_variance"] = float(value)
        elif "timings" in parts[:-1]:
            timings[".".join(p for p in parts if p != "timings")] = float(value)
        elif parts[-1].endswith("_seconds"):
            timings[".".join(parts[:-1] + [parts[-1].removesuffix("_seconds")])] = float(value)
    return metrics, timings


def card_run_date(card: dict[str, Any]) -> str | None:
    """The run date an exporter wrote in the card (top level, ``data_window`` or ``window``)."""
    for source in (card, card.get("data_window") or {}, card.get("window") or {}):
        if isinstance(source, dict) and source.get("run_date"):
            return str(source["run_date"])
    return None


def _log_params(params: dict[str, Any]) -> None:
    import mlflow

    items = [(metric_name(k), str(v)[:MAX_PARAM_CHARS]) for k, v in params.items() if v is not None]
    for start in range(0, len(items), 100):  # MLflow's batch limit is 100 params
        mlflow.log_params(dict(items[start:start + 100]))


def _log_history(history: Sequence[dict[str, Any]]) -> None:
    import mlflow

    for position, row in enumerate(history or []):
        step = int(row.get("step", row.get("epoch", position)))  # optimizer steps when the history has them
        values = {f"history/{k}": v for k, v in finite_numbers(row).items() if k != "step"}
        if values:
            mlflow.log_metrics(values, step=step)


def training_curve_png(history: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """Loss (left axis) and every validation metric (right axis) per optimizer step (per epoch when the
    history has no steps); None without history."""
    rows = [r for r in history or [] if finite_numbers(r)]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = "step" if all("step" in r for r in rows) else "epoch"
    epochs = [int(r.get(axis, i)) for i, r in enumerate(rows)]
    keys = sorted({k for r in rows for k in finite_numbers(r)} - {"epoch", "step", "learning_rate"})
    loss_keys = [k for k in keys if "loss" in k]
    # validation metrics only: counters such as examples or seconds would flatten the [0, 1] curves
    other = [k for k in keys if k not in loss_keys and (k.startswith("val") or "_at_" in k)]
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = iter(f"C{i}" for i in range(100))  # one colour per curve across both axes
    for k in loss_keys:
        ax.plot(epochs, [finite_numbers(r).get(k, math.nan) for r in rows], marker="o", label=k,
                color=next(colors))
    ax.set_xlabel(axis)
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if other:
        ax2 = ax.twinx()
        for k in other:
            ax2.plot(epochs, [finite_numbers(r).get(k, math.nan) for r in rows], marker="s", ls="--", label=k,
                     color=next(colors))
        ax2.set_ylabel("validation")
        ax2.legend(loc="upper right", fontsize=8)
    if loss_keys:
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title("training curve")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out




def trend_rows(client: "MlflowClient", experiment_id: str, keys: Sequence[str],
               last: int = TREND_DAYS) -> list[tuple[str, dict[str, float]]]:
    """(run date, metrics) of the newest run per run date that has any of ``keys``, the last ``last``
    dates in date order (a rerun or refit of a date replaces its point)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.{RUN_DATE_TAG} != ''",
                              order_by=["attributes.start_time DESC"], max_results=2000)
    newest: dict[str, dict[str, float]] = {}
    for run in runs:
        day = run.data.tags.get(RUN_DATE_TAG)
        values = {k: run.data.metrics[k] for k in keys if k in run.data.metrics}
        if day and values and day not in newest:
            newest[day] = values
    return sorted(newest.items())[-last:]


def trend_png(client: "MlflowClient", experiment_id: str, keys: list[str], out: Path) -> Path | None:
    """``keys`` over the last run dates: [0, 1] metrics on the left axis, counts (e.g. a catalog size)
    on the right one; None when no run has them yet."""
    rows = trend_rows(client, experiment_id, keys)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [day for day, _ in rows]
    ratios = [k for k in keys if all(0 <= v.get(k, 0) <= 1 for _, v in rows)]
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = iter(f"C{i}" for i in range(100))
    for k in ratios:
        ax.plot(days, [v.get(k, math.nan) for _, v in rows], marker="o", label=k, color=next(colors))
    ax.set_ylabel(" / ".join(ratios))
    ax.legend(loc="upper left", fontsize=8)
    if counts := [k for k in keys if k not in ratios]:
        ax2 = ax.twinx()
        for k in counts:
            ax2.plot(days, [v.get(k, math.nan) for _, v in rows], marker="s", ls="--", label=k,
                     color=next(colors))
        ax2.set_ylabel(" / ".join(counts))
        ax2.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("run date")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.set_title(f"last {len(days)} run date(s)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _log_files(model_dir: Path, reports: list[Path], history: list[dict[str, Any]], tmp: Path) -> None:
    """Exported arrays + card under ``exported/``, reports under ``reports/``, curve under ``plots/``."""
    import mlflow

    mlflow.log_artifacts(str(model_dir), artifact_path="exported")
    for path in reports:
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=f"reports/{path.name}")
        else:
            mlflow.log_artifact(str(path), artifact_path="reports")
    if history:
        (tmp / "history.json").write_text(json.dumps(history, default=str, indent=1))
        mlflow.log_artifact(str(tmp / "history.json"), artifact_path="plots")
    png = training_curve_png(history, tmp / "training_curve.png")
    if png is not None:
        mlflow.log_artifact(str(png), artifact_path="plots")



def _log_dataset(dataset: DatasetRef | None):
    """``mlflow.log_input`` of the training data (context ``training``); the logged dataset or None."""
    if dataset is None:
        return None
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    # MLflow stores at most 36 characters of a digest: a prefix of a sha256 still identifies the data
    with warnings.catch_warnings():  # a local folder matches two equivalent source types
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(dataset.source)
    data = MetaDataset(source=source, name=dataset.name, digest=dataset.digest[:36])
    mlflow.log_input(data, context="training")
    return data


def _log_pyfunc(model: PyfuncModel, registered_name: str) -> tuple[str, str]:
    """Log the pyfunc model in the active run and register it; returns (new version, logged model id)."""
    import mlflow

    with warnings.catch_warnings():  # input-example advice: the explicit signature is the contract
        warnings.simplefilter("ignore", UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(model.code_file), code_paths=[str(p) for p in model.code_paths],
            artifacts=model.artifacts, signature=model.signature,
            registered_model_name=registered_name, pip_requirements=list(model.pip_requirements),
        )
    return str(info.registered_model_version), info.model_id


def log_run(settings: "Settings", run_date: str, model_dir: Path, pyfunc: PyfuncModel, *,
            params: dict[str, Any], metrics: dict[str, float], history: Sequence[dict[str, Any]],
            timings: dict[str, float], artifacts: Iterable[Path], version_tags: dict[str, str],
            dataset: DatasetRef | None = None, trend_metrics: Sequence[str] = ()) -> RunInfo:
    """One MLflow run: params, the training dataset (``log_input``), per-epoch history, timings, the
    exported folder under ``exported/``, reports under ``reports/``, the curve under ``plots/``, the
    registered pyfunc (alias ``challenger``), then the final metrics linked to the logged model (and
    the dataset), ``version_tags`` on the new version, and the chart of ``trend_metrics`` over the
    last run dates (``plots/daily_metrics.png``)."""
    import mlflow

    extra = [Path(p) for p in artifacts]
    missing = [str(p) for p in extra if not p.exists()]
    if missing:
        raise UserError(f"artifact(s) to log not found: {', '.join(missing)}")
    client = connect(settings)
    experiment_id = ensure_experiment(settings, client)
    commit = git_commit()
    name = settings.mlflow_model_name
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"led-{run_date}",
                          nested=mlflow.active_run() is not None) as run, \
            tempfile.TemporaryDirectory(prefix="led-register-") as tmp:
        tags = {RUN_DATE_TAG: run_date, "model_dir": str(model_dir)}
        if commit:
            tags["mlflow.source.git.commit"] = commit
        mlflow.set_tags(tags)
        _log_params(params | {"git_commit": commit})
        data = _log_dataset(dataset)
        if timings:
            mlflow.log_metrics({f"seconds/{metric_name(k)}": v for k, v in finite_numbers(timings).items()})
        _log_history(history)
        _log_files(model_dir, extra, list(history), Path(tmp))
        version, model_id = _log_pyfunc(pyfunc, name)
        if metrics:  # after the model: MLflow 3's logged-model views show metrics carrying its model_id
            mlflow.log_metrics(finite_numbers(metrics), model_id=model_id, dataset=data)
        mlflow.set_tag("model_version", version)
        run_id = run.info.run_id
        if trend_metrics:
            png = trend_png(client, experiment_id, list(trend_metrics), Path(tmp) / Path(TREND_CHART).name)
            if png is not None:
                mlflow.log_artifact(str(png), artifact_path=str(Path(TREND_CHART).parent))
    client.set_registered_model_alias(name, CHALLENGER, version)
    for key, value in ({RUN_DATE_TAG: run_date, "run_id": run_id, "git_commit": commit or "unknown"}
                       | version_tags).items():
        client.set_model_version_tag(name, version, key, value)
    return RunInfo(run_id=run_id, model_version=version, model_uri=f"models:/{name}/{version}",
                   experiment_id=experiment_id)


def find_version(settings: "Settings", tags: dict[str, str]) -> RunInfo | None:
    """The newest version carrying every tag in ``tags`` (e.g. a date's model fingerprint), if any."""
    client = connect(settings)
    name = settings.mlflow_model_name
    query = " and ".join([f"name='{name}'"] + [f"tags.{k}='{v}'" for k, v in tags.items()])
    try:
        versions = client.search_model_versions(query)
    except Exception:  # noqa: BLE001 - no registered model yet
        return None
    if not versions:
        return None
    mv = max(versions, key=lambda v: int(v.version))
    run = client.get_run(mv.run_id)
    return RunInfo(run_id=mv.run_id, model_version=str(mv.version), model_uri=f"models:/{name}/{mv.version}",
                   experiment_id=run.info.experiment_id, reused=True)


def download_model_artifact(name: str, version: str, key: str, dst: Path) -> Path:
    """The local folder of the pyfunc artifact ``key`` of a registered version; ``ValueError`` when missing."""
    import mlflow
    from mlflow.models import Model

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                         dst_path=str(dst)))
        conf = Model.load(str(local / "MLmodel")).flavors["python_function"]
        return local / conf["artifacts"][key]["path"]
    except Exception as exc:  # any failure to fetch the artifacts is a refusal reason, not a crash
        raise ValueError(f"artifacts of version {version} cannot be downloaded: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


# --------------------------------------------------------------------------- aliases and decisions
def champion_version(client: "MlflowClient", name: str) -> str | None:
    aliases = client.get_registered_model(name).aliases or {}
    return str(aliases[CHAMPION]) if CHAMPION in aliases else None


def move_champion(client: "MlflowClient", name: str, version: str, old: str | None) -> None:
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old)
    client.set_registered_model_alias(name, CHAMPION, version)


def version_model_id(mv) -> str | None:
    """The id of a version's logged model (MLflow 3): its ``model_id``, else its ``models:/m-...`` source."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = mv.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def record_decision(client: "MlflowClient", name: str, version: str, run_id: str | None,
                    tags: dict[str, str], metrics: dict[str, float]) -> None:
    """Decision tags on the version and its run, the decision as the version's description (what the
    registry UI shows first); decision figures as run metrics linked to the version's logged model."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
        if run_id:
            client.set_tag(run_id, key, value)
    mv = client.get_model_version(name, version)
    if DECISION_TAG in tags:
        reasons = tags.get(REASONS_TAG, "").replace(" | ", "; ")
        client.update_model_version(name, version, description=f"{tags[DECISION_TAG]}: {reasons}"[:5000])
    if run_id and metrics:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        model_id = version_model_id(mv)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0, model_id=model_id)
                                          for k, v in finite_numbers(metrics).items()])


def get_version(client: "MlflowClient", name: str, version: str):
    """The model version, or ``UserError`` when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise UserError(f"model {name!r} has no version {version}") from None


def promote(settings: "Settings", version: str | int, reason: str, model_name: str | None = None) -> None:
    """Explicit human override (e.g. after a corrupted champion): move ``champion`` and record why."""
    client = connect(settings)
    name = model_name or settings.mlflow_model_name
    mv = get_version(client, name, str(version))
    move_champion(client, name, str(version), champion_version(client, name))
    record_decision(client, name, str(version), mv.run_id,
                    {DECISION_TAG: "promoted-manually", REASONS_TAG: reason}, {})


ROLLED_BACK_TAG = "rolled_back"  # on a version serving rolled back: why (docs/architecture.md, "Automatic rollback")
RESTORED_TAG = "rolled_back.restored_version"


def mark_rolled_back(settings: "Settings", version: str, reason: str, restored: str | None,
                     metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """Record that serving rolled ``version`` back to ``restored``: tag ``rolled_back=<reason>`` on the
    version and its run (plus the description), figures as run metrics, and ``champion`` moved back to
    ``restored`` when it still names ``version`` (a ``previous_champion`` alias on ``restored`` is
    dropped: it is the champion again). Returns what was changed; a version the registry does not know
    (an unregistered push, ``sha-...``) changes nothing."""
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    name = settings.mlflow_model_name
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        return {"marked": False, "why": f"version {version} is not in the registry {name!r}"}
    tags = {ROLLED_BACK_TAG: reason[:5000], RESTORED_TAG: str(restored or "none")}
    record_decision(client, name, str(version), mv.run_id, tags, metrics or {})
    client.update_model_version(name, str(version),
                                description=f"ROLLED BACK in serving: {reason}\n\n{mv.description or ''}"[:5000])
    out: dict[str, Any] = {"marked": True, "version": str(version), "champion_moved": False}
    aliases = client.get_registered_model(name).aliases or {}
    if restored is not None and str(aliases.get(CHAMPION)) == str(version):
        try:
            client.get_model_version(name, str(restored))
        except MlflowException:
            return out | {"why": f"restored version {restored} is not in the registry: champion left as is"}
        client.set_registered_model_alias(name, CHAMPION, str(restored))
        if str(aliases.get(PREVIOUS)) == str(restored):
            client.delete_registered_model_alias(name, PREVIOUS)
        out["champion_moved"] = True
    out["champion"] = str(restored) if out["champion_moved"] else aliases.get(CHAMPION)
    return out


# --------------------------------------------------------------------------- comparison
def compare(settings: "Settings", last_n: int = 10, model_name: str | None = None) -> list[dict[str, Any]]:
    """The last ``last_n`` versions, newest first: run date, metrics, deltas vs the champion, aliases, gate."""
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    name = model_name or settings.mlflow_model_name
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise UserError(f"no registered model {name!r} at {settings.mlflow_tracking_uri}") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda mv: -int(mv.version))
    rows = [_version_row(client, mv, aliases) for mv in versions[:max(1, last_n)]]
    champ = (registered.aliases or {}).get(CHAMPION)
    champ_row = next((r for r in rows if r["version"] == str(champ)), None)
    if champ is not None and champ_row is None:
        champ_row = _version_row(client, client.get_model_version(name, str(champ)), aliases)
    for row in rows:
        # Training-time metrics come from each run's own validation split; the gate's same-set
        # comparison (gate_ndcg_at_100 vs gate_champion_ndcg_at_100) is the one that decides.
        row["delta_vs_champion"] = {
            k: row["metrics"][k] - champ_row["metrics"][k]
            for k in FINAL_METRICS if champ_row and k in row["metrics"] and k in champ_row["metrics"]
        }
    return rows


def _version_row(client: "MlflowClient", mv, aliases: dict[str, list[str]]) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    tags = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    if mv.run_id:
        try:
            run_metrics = client.get_run(mv.run_id).data.metrics
            metrics = {k: run_metrics[k] for k in FINAL_METRICS if k in run_metrics}
            for key in (f"gate/{GATE_METRIC}", f"gate/champion_{GATE_METRIC}"):
                if key in run_metrics:
                    metrics[key.replace("/", "_")] = run_metrics[key]
        except MlflowException:
            pass  # run deleted: the version row is still shown
    return {
        "version": str(mv.version),
        "run_id": mv.run_id,
        "run_date": tags.get(RUN_DATE_TAG),
        "created": dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.timezone.utc).isoformat(
            timespec="seconds"),
        "aliases": sorted(aliases.get(str(mv.version), [])),
        "metrics": metrics,
        "gate": tags.get("gate.decision", "pending"),
        "gate_reasons": tags.get("gate.reasons", ""),
        "gate_champion_version": tags.get("gate.champion_version"),
    }

