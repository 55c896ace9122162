"""MLflow tracking and registry: one run per training, the champion/challenger gate, comparison.

Design
------
- **One registered model** (``settings.mlflow_model_name``). Every training logs
  one run in ``settings.mlflow_experiment`` and one model version; the new
  version always gets alias ``challenger``. Alias ``champion`` is what
  production serves; only :func:`gate` (or an explicit :func:`promote`) moves
  it, and the version it replaced gets ``previous_champion`` (rollback target).
- **The model is a pyfunc over the exported arrays** (``models/pyfunc.py``,
  logged from code, no pickle, no TensorFlow). The same exported folder is also
  logged under the run's ``exported/`` artifacts so a run is self-describing.
- **The gate compares on the same evaluation set.** Both the challenger and the
  champion are downloaded from the registry (what would actually be served) and
  ranked with ``ExportedModel.exact_topk`` on one :class:`EvalSet` (held-out
  timelines and the items clicked next). Promotion needs challenger
  NDCG@100 >= champion NDCG@100 x (1 - gate_tolerance) and sanity checks:
  finite arrays, vocabulary size within [vocab_min_ratio, vocab_max_ratio] x the
  champion's, and ``ann_recall`` >= min_ann_recall when the run or the model
  card reports one. The first version becomes champion when its sanity checks
  pass. An unreadable champion makes the gate refuse (a human must look), never
  crash. The decision and its reasons are tags on the version and on the run.
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
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from infra.errors import UserError
from models.export import content_sha256

if TYPE_CHECKING:  # heavy imports stay inside functions
    from mlflow import MlflowClient

    from infra.settings import Settings
    from models.export import ExportedModel

REPO_ROOT = Path(__file__).resolve().parents[1]
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
RUN_DATE_TAG = "run_date"
MODEL_SHA_TAG = "model_sha256"
GATE_METRIC = "ndcg_at_100"
FINAL_METRICS = ("recall_at_20", "recall_at_50", "ndcg_at_100", "coverage_at_20")
HEALTH_ATTEMPTS, HEALTH_TIMEOUT_S, HEALTH_PAUSE_S = 3, 3.0, 1.0
# MLflow's HTTP client defaults: 7 retries with back-off factor 2 (minutes of waiting) and a 120 s timeout.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
PYFUNC_CODE = ("__init__.py", "export.py", "pyfunc.py")
MAX_PARAM_CHARS = 6000


# --------------------------------------------------------------------------- data types
@dataclass
class RunInfo:
    run_id: str
    model_version: str
    model_uri: str
    experiment_id: str


@dataclass
class EvalSet:
    """Held-out users: ``inputs[u]`` is a timeline, ``targets[u]`` the items to predict next.

    File format (JSON): ``{"inputs": [[item ids]], "targets": [[item ids]]}``
    plus optional ``"name"``. Targets that are also inputs are dropped (the
    ranking excludes inputs, as in the fold-in protocol).
    """

    inputs: list[list[str]]
    targets: list[list[str]]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"eval set has {len(self.inputs)} inputs but {len(self.targets)} targets")
        self.inputs = [[str(i) for i in row] for row in self.inputs]
        self.targets = [[str(i) for i in row] for row in self.targets]

    @property
    def fingerprint(self) -> str:
        blob = json.dumps([self.inputs, self.targets], separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def target_sets(self) -> list[set[str]]:
        return [set(t) - set(x) for x, t in zip(self.inputs, self.targets)]


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
        return exp.experiment_id
    db = _sqlite_path(settings.mlflow_tracking_uri.strip())
    location = (db.parent / "mlartifacts").as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
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


def _finite_numbers(values: dict[str, Any]) -> dict[str, float]:
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
        step = int(row.get("epoch", position))
        values = {f"history/{k}": v for k, v in _finite_numbers(row).items() if k != "epoch"}
        if values:
            mlflow.log_metrics(values, step=step)


def training_curve_png(history: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """Loss (left axis) and every validation metric (right axis) per epoch; None without history."""
    rows = [r for r in history or [] if _finite_numbers(r)]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r.get("epoch", i)) for i, r in enumerate(rows)]
    keys = sorted({k for r in rows for k in _finite_numbers(r)} - {"epoch"})
    loss_keys = [k for k in keys if "loss" in k]
    # validation metrics only: counters such as examples or seconds would flatten the [0, 1] curves
    other = [k for k in keys if k not in loss_keys and (k.startswith("val") or "_at_" in k)]
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = iter(f"C{i}" for i in range(100))  # one colour per curve across both axes
    for k in loss_keys:
        ax.plot(epochs, [_finite_numbers(r).get(k, math.nan) for r in rows], marker="o", label=k,
                color=next(colors))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if other:
        ax2 = ax.twinx()
        for k in other:
            ax2.plot(epochs, [_finite_numbers(r).get(k, math.nan) for r in rows], marker="s", ls="--", label=k,
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


def _stage_pyfunc_code(tmp: Path) -> tuple[Path, Path]:
    """Copy the few files the pyfunc needs into ``tmp/models`` (no caches, no TensorFlow code)."""
    package = tmp / "models"
    package.mkdir()
    for name in PYFUNC_CODE:
        shutil.copy2(REPO_ROOT / "models" / name, package / name)
    return package / "pyfunc.py", package


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "numpy", "pandas")]


def _load_exported(model_dir: Path) -> "ExportedModel":
    from models.export import load_model

    try:
        return load_model(Path(model_dir))
    except ValueError as exc:
        raise UserError(str(exc)) from None


# --------------------------------------------------------------------------- logging a training
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


def _log_pyfunc(model_dir: Path, registered_name: str, tmp: Path) -> str:
    """Log the pyfunc model (from code, arrays as its artifact) in the active run; the new version."""
    import mlflow

    from models.pyfunc import ARTIFACT_KEY, signature

    code_file, package = _stage_pyfunc_code(tmp)
    with warnings.catch_warnings():  # input-example advice: the explicit signature is the contract
        warnings.simplefilter("ignore", UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code_file), code_paths=[str(package)],
            artifacts={ARTIFACT_KEY: str(model_dir)}, signature=signature(),
            registered_model_name=registered_name, pip_requirements=_pip_requirements(),
        )
    return str(info.registered_model_version)


def log_training_run(settings: "Settings", model_dir: Path, run_date: str | dt.date,
                     params: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                     history: Sequence[dict[str, Any]] | None = None, timings: dict[str, float] | None = None,
                     artifacts: Iterable[Path] = ()) -> RunInfo:
    """Log one training as an MLflow run, register its pyfunc model, alias it ``challenger``.

    ``params`` override what the model card says; ``metrics`` are final
    figures (``recall@20`` ...); ``history`` one dict per epoch (``epoch``,
    ``loss``, ``val_ndcg@100`` ...); ``timings`` seconds per stage;
    ``artifacts`` extra files or folders (validation report) logged under
    ``reports/``.
    """
    import mlflow

    from infra.events import parse_date

    model_dir = Path(model_dir).resolve()
    model = _load_exported(model_dir)
    run_date = parse_date(run_date).isoformat()
    extra = [Path(p) for p in artifacts]
    missing = [str(p) for p in extra if not p.exists()]
    if missing:
        raise UserError(f"artifact(s) to log not found: {', '.join(missing)}")
    client = connect(settings)
    experiment_id = ensure_experiment(settings, client)
    commit = git_commit()
    card = model.card
    all_params = card_params(card) | {
        "run_date": run_date, "vocabulary_size": len(model.item_ids), "d": model.dim, "git_commit": commit,
    } | dict(params or {})
    card_metrics, card_timings = card_figures(card)
    final = card_metrics | _finite_numbers(card.get("metrics", {})) | _finite_numbers(metrics or {})
    history = list(history if history is not None else card.get("history", []) or [])
    timings = card_timings | dict(timings or {})
    name = settings.mlflow_model_name

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"led-{run_date}",
                          nested=mlflow.active_run() is not None) as run, \
            tempfile.TemporaryDirectory(prefix="led-register-") as tmp:
        tags = {RUN_DATE_TAG: run_date, "model_dir": str(model_dir)}
        if commit:
            tags["mlflow.source.git.commit"] = commit
        mlflow.set_tags(tags)
        _log_params(all_params)
        if final:
            mlflow.log_metrics(final)
        if timings:
            mlflow.log_metrics({f"seconds/{metric_name(k)}": v for k, v in _finite_numbers(timings).items()})
        _log_history(history)
        _log_files(model_dir, extra, history, Path(tmp))
        version = _log_pyfunc(model_dir, name, Path(tmp))
        mlflow.set_tag("model_version", version)
        run_id = run.info.run_id

    client.set_registered_model_alias(name, CHALLENGER, version)
    for key, value in {RUN_DATE_TAG: run_date, "run_id": run_id, "git_commit": commit or "unknown",
                       "vocabulary_size": str(len(model.item_ids)),
                       MODEL_SHA_TAG: content_sha256(model_dir)}.items():
        client.set_model_version_tag(name, version, key, value)
    return RunInfo(run_id=run_id, model_version=version, model_uri=f"models:/{name}/{version}",
                   experiment_id=experiment_id)


# --------------------------------------------------------------------------- evaluation sets
def load_eval_set(path: Path) -> EvalSet:
    """Read an eval-set JSON; ``UserError`` naming the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return EvalSet(inputs=data["inputs"], targets=data["targets"], name=str(data.get("name", path.name)))
    except FileNotFoundError:
        raise UserError(f"eval set not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"not an eval set ({{\"inputs\": [[ids]], \"targets\": [[ids]]}}): {path}: {exc}") from None


def save_eval_set(path: Path, eval_set: EvalSet) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"name": eval_set.name, "inputs": eval_set.inputs, "targets": eval_set.targets}))
    os.replace(tmp, path)
    return path


def eval_set_from_split(split) -> EvalSet:
    """The held-out clicks of a ``models.data.TemporalSplit`` in item ids (what the gate scores)."""
    ids = split.item_ids
    return EvalSet(inputs=[[str(ids[i]) for i in row] for row in split.test.inputs.rows()],
                   targets=[[str(ids[i]) for i in row] for row in split.test.targets.rows()],
                   name=f"clicks-{split.eval_date}")


def build_eval_set(events_dir: Path, target_day: str | dt.date, window_days: int,
                   max_users: int | None = 2000, seed: int = 0) -> EvalSet:
    """Users who clicked on ``target_day``: inputs = their views and clicks in the ``window_days``
    before it, targets = the items they clicked that day (the daily run's temporal protocol,
    ``models.data.temporal_split``, over every item of the window).

    Pick a ``target_day`` neither model trained on (e.g. the day after the
    challenger's window) so the comparison is fair to both.
    """
    import datetime as _dt

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from infra import events
    from models.data import temporal_split

    day = events.parse_date(target_day)
    events.require_event_store(Path(events_dir))
    if events.read_day(events_dir, "clicks", day).num_rows == 0:
        raise UserError(f"no clicks on {day} in {events_dir}: cannot build an eval set")
    end = day + _dt.timedelta(days=1)
    views, clicks = (events.read_window(events_dir, kind, end, window_days + 1) for kind in ("views", "clicks"))
    items = sorted(pc.unique(pa.concat_arrays([views.column("item_id").combine_chunks(),
                                               clicks.column("item_id").combine_chunks()])).to_pylist())
    eval_set = eval_set_from_split(temporal_split(views, clicks, items))
    if not eval_set.inputs:
        raise UserError(f"no user clicking on {day} has history in the {window_days} days before")
    if max_users and len(eval_set.inputs) > max_users:
        keep = sorted(np.random.default_rng(seed).choice(len(eval_set.inputs), size=max_users, replace=False))
        eval_set = EvalSet([eval_set.inputs[i] for i in keep], [eval_set.targets[i] for i in keep])
    eval_set.name = f"clicks-{day}-w{window_days}"
    return eval_set


def exact_rankings(model: "ExportedModel", timelines: Sequence[Sequence[str]], k: int,
                   chunk: int = 256) -> list[list[str]]:
    """``ExportedModel.exact_topk`` for many timelines at once (one matrix product per chunk).

    Same rule: ``q = mean(V_x)``, ``score = q . V + b`` in the arrays' float32,
    inputs excluded, popularity (counts) when no input item is known. About
    8x faster than the per-user loop on a 20k-item catalog, identical rankings
    (benchmarks/registry_gate.py).
    """
    import numpy as np

    from models.metrics import top_k_indices

    index, out = model.index_of, []
    for start in range(0, len(timelines), chunk):
        rows = [[index[str(i)] for i in t if str(i) in index] for t in timelines[start:start + chunk]]
        Q = np.zeros((len(rows), model.dim), dtype=model.V.dtype)
        for r, known in enumerate(rows):
            if known:
                Q[r] = model.V[known].mean(axis=0)
        scores = (Q @ model.V.T + model.b).astype(np.float64)
        for r, known in enumerate(rows):
            if known:
                scores[r, known] = -np.inf
            else:
                scores[r] = model.counts
        top = top_k_indices(scores, k)
        out.extend([[str(model.item_ids[i]) for i in row] for row in top])
    return out


def evaluate_exported(model: "ExportedModel", eval_set: EvalSet, k: int = 100) -> dict[str, float]:
    """Recall@20/50, NDCG@100, coverage@20 of exact top-k (inputs excluded) on ``eval_set``."""
    from models.metrics import evaluate_rankings

    rankings = exact_rankings(model, eval_set.inputs, k)
    raw = evaluate_rankings(rankings, eval_set.target_sets(), n_items=len(model.item_ids))
    return {metric_name(key): float(value) for key, value in raw.items()}


# --------------------------------------------------------------------------- the gate
def download_version(client: "MlflowClient", name: str, version: str, dst: Path) -> "ExportedModel":
    """The exported arrays of a registered version; ``ValueError`` when missing or corrupt."""
    import mlflow
    from mlflow.models import Model

    from models.export import load_model
    from models.pyfunc import ARTIFACT_KEY

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                         dst_path=str(dst)))
        conf = Model.load(str(local / "MLmodel")).flavors["python_function"]
        folder = local / conf["artifacts"][ARTIFACT_KEY]["path"]
    except Exception as exc:  # any failure to fetch the artifacts is a refusal reason, not a crash
        raise ValueError(f"artifacts of version {version} cannot be downloaded: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    try:
        return load_model(folder)
    except ValueError as exc:
        raise ValueError(f"artifacts of version {version} are unreadable: {exc}") from None
    except Exception as exc:  # e.g. a truncated .npy raising EOFError
        raise ValueError(f"artifacts of version {version} are unreadable: {type(exc).__name__}: {exc}") from None


def _nonfinite(model: "ExportedModel") -> str | None:
    import numpy as np

    bad = [name for name, arr in (("V", model.V), ("b", model.b)) if not np.isfinite(arr).all()]
    return f"non-finite values (NaN/inf) in {', '.join(bad)}" if bad else None


def _ann_recall(client: "MlflowClient", run_id: str | None, model: "ExportedModel") -> float | None:
    """The hook for the serving stage: ``ann_recall`` from the run's metrics or the model card."""
    if run_id:
        value = client.get_run(run_id).data.metrics.get("ann_recall")
        if value is not None:
            return float(value)
    value = (model.card.get("metrics") or {}).get("ann_recall", model.card.get("ann_recall"))
    return float(value) if value is not None else None


def champion_version(client: "MlflowClient", name: str) -> str | None:
    aliases = client.get_registered_model(name).aliases or {}
    return str(aliases[CHAMPION]) if CHAMPION in aliases else None


def _record(client: "MlflowClient", name: str, run_id: str | None, decision: GateDecision) -> None:
    """Decision, reasons and figures as tags on the version and its run (metrics on the run too)."""
    tags = {
        "gate.decision": "promoted" if decision.promoted else "rejected",
        "gate.reasons": " | ".join(decision.reasons)[:5000],
        "gate.champion_version": decision.champion_version or "none",
        "gate.eval_set": decision.eval_set,
        "gate.evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for side, values in (("challenger", decision.challenger_metrics), ("champion", decision.champion_metrics)):
        if GATE_METRIC in values:
            tags[f"gate.{side}_{GATE_METRIC}"] = f"{values[GATE_METRIC]:.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(name, decision.challenger_version, key, value)
        if run_id:
            client.set_tag(run_id, key, value)
    if run_id:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        figures = {f"gate/{k}": v for k, v in _finite_numbers(decision.challenger_metrics).items()}
        figures |= {f"gate/champion_{k}": v for k, v in _finite_numbers(decision.champion_metrics).items()}
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in figures.items()])


def _checks(settings: "Settings", challenger: "ExportedModel", champion: "ExportedModel | None",
            chal_metrics: dict[str, float], champ_metrics: dict[str, float],
            ann_recall: float | None) -> tuple[list[str], list[str]]:
    """(failed, passed) human-readable check results."""
    failed, passed = [], []
    if problem := _nonfinite(challenger):
        failed.append(f"challenger has {problem}")
    else:
        passed.append("challenger arrays are finite")
    if ann_recall is not None:
        (passed if ann_recall >= settings.min_ann_recall else failed).append(
            f"ANN recall {ann_recall:.4f} {'>=' if ann_recall >= settings.min_ann_recall else '<'} "
            f"min_ann_recall {settings.min_ann_recall}")
    ndcg = chal_metrics.get(GATE_METRIC, math.nan)
    if not math.isfinite(ndcg):
        failed.append("challenger NDCG@100 on the eval set is not a number")
    if champion is None:
        return failed, passed
    ratio = len(challenger.item_ids) / max(1, len(champion.item_ids))
    within = settings.vocab_min_ratio <= ratio <= settings.vocab_max_ratio
    (passed if within else failed).append(
        f"vocabulary {len(challenger.item_ids)} = {ratio:.2f} x champion's {len(champion.item_ids)} "
        f"{'within' if within else 'outside'} [{settings.vocab_min_ratio}, {settings.vocab_max_ratio}]")
    bar = champ_metrics.get(GATE_METRIC, math.nan) * (1 - settings.gate_tolerance)
    if math.isfinite(ndcg) and math.isfinite(bar):
        ok = ndcg >= bar
        (passed if ok else failed).append(
            f"NDCG@100 {ndcg:.4f} {'>=' if ok else '<'} champion {champ_metrics[GATE_METRIC]:.4f} "
            f"x (1 - {settings.gate_tolerance}) = {bar:.4f}")
    return failed, passed


def gate(settings: "Settings", challenger_version: str | int, eval_set: EvalSet,
         model_name: str | None = None) -> GateDecision:
    """Evaluate challenger and champion on ``eval_set``; move ``champion`` if the challenger qualifies."""
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    name = model_name or settings.mlflow_model_name
    version = str(challenger_version)
    if not any(t for t in eval_set.target_sets()):
        raise UserError(f"eval set {eval_set.name!r} has no user with targets to predict")
    try:
        mv = client.get_model_version(name, version)
    except MlflowException:
        raise UserError(f"model {name!r} has no version {version}") from None
    champ_version = champion_version(client, name)
    fingerprint = f"{eval_set.name}#{eval_set.fingerprint} ({len(eval_set.inputs)} users)"
    decision = GateDecision(False, [], version, champ_version, eval_set=fingerprint)

    with tempfile.TemporaryDirectory(prefix="led-gate-") as tmp:
        try:
            challenger = download_version(client, name, version, Path(tmp) / "challenger")
        except ValueError as exc:
            decision.reasons = [f"challenger {exc}"]
            _record(client, name, mv.run_id, decision)
            return decision
        decision.challenger_metrics = evaluate_exported(challenger, eval_set)
        champion = None
        if champ_version == version:
            decision.reasons = [f"version {version} is already the champion"]
            decision.promoted = True
            _record(client, name, mv.run_id, decision)
            return decision
        if champ_version is not None:
            try:
                champion = download_version(client, name, champ_version, Path(tmp) / "champion")
            except ValueError as exc:
                decision.reasons = [f"refusing promotion: champion (version {champ_version}) {exc}; "
                                    "inspect it, then promote a version explicitly"]
                _record(client, name, mv.run_id, decision)
                return decision
            decision.champion_metrics = evaluate_exported(champion, eval_set)
        failed, passed = _checks(settings, challenger, champion, decision.challenger_metrics,
                                 decision.champion_metrics, _ann_recall(client, mv.run_id, challenger))
    decision.promoted = not failed
    if champion is None and decision.promoted:
        passed.insert(0, "no champion yet: first model passing the sanity checks")
    decision.reasons = failed or passed
    if decision.promoted:
        _move_champion(client, name, version, champ_version)
    _record(client, name, mv.run_id, decision)
    return decision


def _move_champion(client: "MlflowClient", name: str, version: str, old: str | None) -> None:
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old)
    client.set_registered_model_alias(name, CHAMPION, version)


def promote(settings: "Settings", version: str | int, reason: str, model_name: str | None = None) -> None:
    """Explicit human override (e.g. after a corrupted champion): move ``champion`` and record why."""
    from mlflow.exceptions import MlflowException

    client = connect(settings)
    name = model_name or settings.mlflow_model_name
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise UserError(f"model {name!r} has no version {version}") from None
    _move_champion(client, name, str(version), champion_version(client, name))
    for key, value in {"gate.decision": "promoted-manually", "gate.reasons": reason}.items():
        client.set_model_version_tag(name, str(version), key, value)
        if mv.run_id:
            client.set_tag(mv.run_id, key, value)


# --------------------------------------------------------------------------- comparison
def find_registered(settings: "Settings", model_dir: Path, run_date: str | dt.date) -> RunInfo | None:
    """The version already registered for this run date with byte-identical arrays, if any.

    Lets a rerun of a date (backfill, retry after a late failure) reuse its version instead of
    registering a duplicate.
    """
    client = connect(settings)
    name = settings.mlflow_model_name
    query = (f"name='{name}' and tags.{MODEL_SHA_TAG}='{content_sha256(model_dir)}' "
             f"and tags.{RUN_DATE_TAG}='{run_date}'")
    try:
        versions = client.search_model_versions(query)
    except Exception:  # noqa: BLE001 - no registered model yet
        return None
    if not versions:
        return None
    mv = max(versions, key=lambda v: int(v.version))
    run = client.get_run(mv.run_id)
    return RunInfo(run_id=mv.run_id, model_version=str(mv.version), model_uri=f"models:/{name}/{mv.version}",
                   experiment_id=run.info.experiment_id)


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
