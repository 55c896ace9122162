"""Task: fine-tune LED Project on clicks (TensorFlow), evaluate on the last day, export; cached on inputs."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from prefect import task

from infra import events, registry
from infra.settings import Settings
from models.led import LedConfig, fine_tune_window
from models.pretrain import Embeddings
from tasks.common import STAGE_CACHE, cache_dir

EVAL_SET = "eval_set.json"


@task(name="fine-tune", cache_policy=STAGE_CACHE, cache_expiration=timedelta(days=7),
      persist_result=True)
def fine_tune_led(settings: Settings, plan: dict, pretrained: dict, config: LedConfig) -> dict:
    """Train P and b on the training days' clicks and export V = E P, b to a cached folder."""
    out = cache_dir(settings, "finetune", {"pretrained": pretrained["path"], "config": config.as_dict()})
    model_dir = out / "model"
    if not (out / "result.json").is_file():
        emb = Embeddings.load(Path(pretrained["path"]))
        views = events.read_window(settings.events_dir, "views", plan["run_date"], settings.window_days)
        clicks = events.read_window(settings.events_dir, "clicks", plan["run_date"], settings.window_days)
        model, split, metrics = fine_tune_window(emb, views, clicks, config)
        window = {"run_date": plan["run_date"], "start": plan["start"], "eval_date": plan["eval_day"],
                  "window_days": settings.window_days} | split.info
        model.export(model_dir, metrics=metrics, data_window=window, eval_set=split.test,
                     extra={"pretrain": {"explained_variance": pretrained["explained_variance"],
                                         "timings": pretrained["timings"]}})
        registry.save_eval_set(out / EVAL_SET, registry.eval_set_from_split(split))
        result = {"model_dir": str(model_dir), "eval_set": str(out / EVAL_SET), "metrics": metrics,
                  "history": model.history, "best_epoch": model.best_epoch,
                  "trainable_params": model.trainable_params, "train_seconds": model.train_seconds,
                  "config": config.as_dict()}
        (out / "result.json").write_text(json.dumps(result, default=float))
    return json.loads((out / "result.json").read_text())
