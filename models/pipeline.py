"""The model stages of one daily run as plain functions (docs/architecture.md, "One daily run").

    plan_window → pretrain_stage → fine_tune_stage

The Prefect tasks (``tasks/``) are thin wrappers around these, and ``led
train`` calls the very same functions, so the command line and the flow train
the same model. Each stage returns a small frozen record (what the next stage
and the report need, never the arrays) and writes its output to a
content-addressed folder under ``settings.work_dir/cache``; a stage whose
folder is complete returns it without recomputing (a rerun after a late
failure resumes there, and ``led train`` shares the flow's pre-training).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from infra import events
from infra.errors import UserError

if TYPE_CHECKING:
    from infra.settings import Settings
    from models.led import LedConfig
    from models.pretrain import PretrainConfig


def stage_dir(settings: "Settings", stage: str, key: dict) -> Path:
    """A content-addressed folder for a stage's output."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return settings.work_dir / "cache" / stage / digest


# --------------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class WindowPlan:
    """The run's window: training days [start, train_end), evaluation day, vocabulary, data fingerprint.

    An evaluated model trains up to the evaluation day (``train_end == eval_day``); the refit that
    ships trains on the whole window (``train_end == run_date``, docs/architecture.md, "Shipping the
    freshest day").
    """

    events_dir: str
    run_date: str
    start: str
    eval_day: str
    train_end: str
    views: int
    train_views: int
    items_seen: int
    vocabulary: tuple[str, ...]
    fingerprint: str

    @property
    def train_days(self) -> int:
        return (dt.date.fromisoformat(self.train_end) - dt.date.fromisoformat(self.start)).days

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)


def plan_window(settings: "Settings", run_date: str | dt.date, whole_window: bool = False) -> WindowPlan:
    """Training days, evaluation day (``models.data.evaluation_day``) and the vocabulary.

    Training stops before the evaluation day, or with ``whole_window`` includes
    it (the refit). The vocabulary is the items with at least ``min_count``
    views in the training days, sorted by id (a stable item index);
    pre-training then keeps those with ``min_count`` co-occurrences.
    """
    import pyarrow.compute as pc

    from models.data import evaluation_day

    day = events.parse_date(run_date)
    views = events.require_window(settings.events_dir, "views", day, settings.window_days)
    clicks = events.read_window(settings.events_dir, "clicks", day, settings.window_days)
    start, eval_day = day - dt.timedelta(days=settings.window_days), evaluation_day(views, clicks)
    train_end = day if whole_window else eval_day
    train = views.filter(pc.less(views.column("date"), train_end))
    counts = pc.value_counts(train.column("item_id")).to_pylist()
    vocab = tuple(sorted(c["values"] for c in counts if c["counts"] >= settings.min_count))
    if not vocab:
        raise UserError(f"no item has {settings.min_count}+ views in [{start}, {train_end}): lower min_count")
    return WindowPlan(str(settings.events_dir), day.isoformat(), start.isoformat(), eval_day.isoformat(),
                      train_end.isoformat(), views.num_rows, train.num_rows, len(counts), vocab,
                      events.window_fingerprint(settings.events_dir, start, day))


# --------------------------------------------------------------------------- pre-training
@dataclass(frozen=True)
class Pretrained:
    path: str
    items: int
    dim: int
    explained_variance: float
    timings: dict = field(default_factory=dict)


def pretrain_card(pretrained: Pretrained, plan: WindowPlan) -> dict:
    """The model card's pre-training entry: its figures, its folder and the days of views it saw
    ([start, end)): what a fold-in of new items starts from (docs/architecture.md, "Fold-in of new items")."""
    return {"explained_variance": pretrained.explained_variance, "timings": pretrained.timings,
            "path": pretrained.path, "start": plan.start, "end": plan.train_end}


def pretrain_stage(settings: "Settings", plan: WindowPlan, config: "PretrainConfig") -> Pretrained:
    """PMI + randomized SVD on the training days' views of the vocabulary items, on the engine
    ``pretrain_engine`` picks for the window's size (``models.pretrain.choose_engine``)."""
    from models.pretrain import Embeddings, choose_engine

    engine = choose_engine(settings.pretrain_engine, plan.train_views, settings.pretrain_local_max_views)
    out = stage_dir(settings, "pretrain", {"plan": asdict(plan), "config": config.__dict__, "engine": engine})
    if not (out / "pretrain.json").is_file():
        try:
            emb = (_pretrain_local if engine == "local" else _pretrain_spark)(settings, plan, config)
        except ValueError as exc:  # too few items for d, etc.
            raise UserError(f"pre-training failed: {exc}") from None
        emb.save(out)
    emb = Embeddings.load(out)
    return Pretrained(str(out), len(emb.item_ids), int(emb.E.shape[1]), float(emb.explained_variance),
                      dict(emb.timings))


def _pretrain_spark(settings: "Settings", plan: WindowPlan, config: "PretrainConfig"):
    from infra.spark import get_spark
    from models.pretrain import pretrain, read_window_views

    spark = get_spark(settings)
    views = read_window_views(spark, settings.events_dir, plan.train_end, plan.train_days)
    vocab = spark.createDataFrame([(i,) for i in plan.vocabulary], "item_id string")
    return pretrain(spark, views.join(vocab.hint("broadcast"), "item_id"), config)


def _pretrain_local(settings: "Settings", plan: WindowPlan, config: "PretrainConfig"):
    import pyarrow as pa
    import pyarrow.compute as pc

    from models.pretrain import pretrain_local

    views = events.read_window(settings.events_dir, "views", plan.train_end, plan.train_days)
    views = views.filter(pc.is_in(views.column("item_id"), value_set=pa.array(plan.vocabulary)))
    return pretrain_local(views.select(["user_id", "item_id", "ts"]), config)


# --------------------------------------------------------------------------- fine-tuning
@dataclass(frozen=True)
class TrainingWindow:
    """The events a fine-tuning reads. With ``max_train_users`` / ``max_eval_users``: only a stable
    sample of the users who clicked in the training days and of those who clicked on the evaluation
    day (``models.data.sample_users``), read with the filter applied while scanning the event store,
    so memory and time follow the samples, not the window (docs/architecture.md, "Fine-tuning on a
    bounded sample of users")."""

    views: object  # pyarrow.Table
    clicks: object
    sample: object = None  # models.data.UserSample; None = every user of the window
    info: dict = field(default_factory=dict)

    @classmethod
    def read(cls, settings: "Settings", plan: WindowPlan, config: "LedConfig") -> "TrainingWindow":
        import numpy as np
        import pyarrow as pa

        from models.data import UserSample, sample_users, window_items

        root, days = settings.events_dir, settings.window_days
        tail = (dt.date.fromisoformat(plan.run_date) - dt.date.fromisoformat(plan.train_end)).days
        if not config.max_train_users and not (tail and config.max_eval_users):
            return cls(events.read_window(root, "views", plan.run_date, days),
                       events.read_window(root, "clicks", plan.run_date, days))

        def clickers(end: str, n_days: int, bound: int) -> tuple[np.ndarray, int]:
            if n_days == 0:  # the refit's plan: no evaluation day after its training days
                return np.zeros(0, dtype=str), 0
            found = events.window_distinct(root, "clicks", end, n_days).to_numpy(zero_copy_only=False)
            return sample_users(found, bound, config.seed), len(found)

        train, n_train = clickers(plan.train_end, plan.train_days, config.max_train_users)
        evaluated, n_eval = clickers(plan.run_date, tail, config.max_eval_users)
        users = pa.array(np.union1d(train, evaluated).tolist(), pa.string())
        universe = window_items(*(pa.table({"item_id": events.window_distinct(root, kind, plan.run_date, days,
                                                                              "item_id")})
                                  for kind in ("views", "clicks")))
        return cls(events.read_window(root, "views", plan.run_date, days, users=users),
                   events.read_window(root, "clicks", plan.run_date, days, users=users),
                   UserSample(train, evaluated, universe),
                   {"clicking_users": n_train, "sampled_train_users": len(train),
                    "eval_day_clickers": n_eval, "sampled_eval_users": len(evaluated)})

    @property
    def train_users(self):
        return None if self.sample is None else self.sample.train_users


GAIN_METRICS = ("ndcg@100", "recall@20")


@dataclass(frozen=True)
class Trained:
    """A fine-tuned, evaluated and exported model (the arrays are in ``model_dir``)."""

    model_dir: str
    eval_set: str
    metrics: dict
    popularity_metrics: dict
    initialisation_metrics: dict
    history: tuple
    best_epoch: int
    best_step: int
    trainable_params: int
    train_seconds: float
    config: dict

    def side_by_side(self) -> dict[str, dict[str, float]]:
        """NDCG@100 and Recall@20 of popularity, the initialisation and the trained model on the same
        held-out clicks, and the gain of the fine-tuning over its initialisation."""
        rows = {"popularity": self.popularity_metrics, "initialisation": self.initialisation_metrics,
                "trained": self.metrics}
        out = {name: {k: float(m[k]) for k in GAIN_METRICS if k in m} for name, m in rows.items()}
        out["gain"] = {k: out["trained"][k] - out["initialisation"][k] for k in GAIN_METRICS
                       if k in out["trained"] and k in out["initialisation"]}
        return out

    def figures(self) -> dict[str, float]:
        """:meth:`side_by_side` flattened for MLflow: ``initialisation_ndcg@100``, ``gain_recall@20``, ..."""
        return {f"{name}_{k}": v for name, row in self.side_by_side().items() if name != "trained"
                for k, v in row.items()}

    @classmethod
    def from_export(cls, model_dir: Path) -> "Trained":
        from models.export import EVAL_SET, load_model

        card = load_model(model_dir).card
        baselines = card.get("baselines", {})
        return cls(str(model_dir), str(Path(model_dir) / EVAL_SET), card["metrics"],
                   baselines.get("popularity", {}), baselines.get("initialisation", {}),
                   tuple(card.get("history", [])),
                   int(card.get("best_epoch", 0)), int(card.get("best_step", 0)), int(card["trainable_params"]),
                   float(card.get("train_seconds", 0.0)), card["hyper_parameters"])


def fine_tune_stage(settings: "Settings", plan: WindowPlan, pretrained: Pretrained, config: "LedConfig",
                    model_dir: Path | None = None) -> Trained:
    """Fine-tune P and b on the training days' clicks, evaluate on the evaluation day's clicks (every
    item of the window is a target; the popularity ranking and the initialisation before any step
    alongside, on the same clicks), export to ``model_dir`` (default: the stage's cache folder)."""
    from models.evaluation import evaluate_model, evaluate_popularity
    from models.export import CARD
    from models.led import fine_tune_window, initialisation
    from models.pretrain import Embeddings

    cached = model_dir is None  # the stage's own folder is reused when complete; a caller's is rewritten
    if cached:
        model_dir = stage_dir(settings, "finetune", {"pretrained": pretrained.path,
                                                     "config": config.as_dict()}) / "model"
    model_dir = Path(model_dir)
    if not (cached and (model_dir / CARD).is_file()):
        emb = Embeddings.load(Path(pretrained.path))
        window = TrainingWindow.read(settings, plan, config)
        try:
            model, split, metrics = fine_tune_window(emb, window.views, window.clicks, config, sample=window.sample)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        popularity = evaluate_popularity(dict(zip(model.item_ids.tolist(), model.counts.tolist())), split.test)
        initial = evaluate_model(initialisation(emb, config), split.test)
        window = {"run_date": plan.run_date, "start": plan.start, "eval_date": plan.eval_day,
                  "window_days": settings.window_days, "views": plan.views} | split.info | window.info
        model.export(model_dir, metrics=metrics, data_window=window, eval_set=split.test,
                     extra={"baselines": {"popularity": popularity, "initialisation": initial},
                            "pretrain": pretrain_card(pretrained, plan)})
    return Trained.from_export(model_dir)


# --------------------------------------------------------------------------- the refit that ships
def refit_stage(settings: "Settings", whole: WindowPlan, pretrained: Pretrained, evaluated: Trained,
                evaluated_pretrained: Pretrained, config: "LedConfig") -> Trained:
    """The evaluated model carried over to the whole window's embeddings (``models.refit``), then
    fine-tuned on every day for the evaluated model's best number of steps; exported with the
    evaluated model's eval set (its timelines serve the ANN-recall check)."""
    import dataclasses

    import numpy as np

    from models.data import build_user_data
    from models.evaluation import load_eval_set
    from models.export import CARD, load_model
    from models.led import TrainedModel, fine_tune, initial_bias
    from models.pretrain import Embeddings
    from models.refit import carry_over, projection_from_export

    model_dir = stage_dir(settings, "refit", {"pretrained": pretrained.path, "evaluated": evaluated.model_dir,
                                              "config": config.as_dict()}) / "model"
    if (model_dir / CARD).is_file():
        return Trained.from_export(model_dir)
    emb, old_emb = Embeddings.load(Path(pretrained.path)), Embeddings.load(Path(evaluated_pretrained.path))
    old = load_model(Path(evaluated.model_dir))
    P, b, alignment = carry_over(emb.item_ids, emb.E, initial_bias(emb.counts), old.item_ids, old_emb.E,
                                 projection_from_export(old_emb.E, old.V), old.b)
    window = TrainingWindow.read(settings, whole, config)
    index = {str(item): i for i, item in enumerate(emb.item_ids)}
    train = build_user_data(window.views, window.clicks, index, config.max_timeline, users=window.train_users)
    steps = evaluated.best_step
    if steps > 0:
        model = fine_tune(emb, train, None, dataclasses.replace(config, max_steps=steps), initial=(P, b))
    else:  # the evaluated model's best was its initialisation: ship the carried-over weights as they are
        d, n = emb.E.shape[1], len(emb.item_ids)
        model = TrainedModel(emb.item_ids, (emb.E @ P).astype(np.float32), b, emb.counts, config, d * d + n, P=P)
    info = {"run_date": whole.run_date, "start": whole.start, "train_end": whole.train_end,
            "eval_date": whole.eval_day, "window_days": settings.window_days, "views": whole.views} | window.info
    model.export(model_dir, metrics={}, data_window=info, eval_set=load_eval_set(Path(evaluated.eval_set)),
                 extra={"refit": alignment | {"refit_of": evaluated.model_dir, "steps": steps},
                        "pretrain": pretrain_card(pretrained, whole)})
    return Trained.from_export(model_dir)
