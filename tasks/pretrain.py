"""Task: pre-train item embeddings on views (PMI + randomized SVD in Spark), cached on its inputs."""
from __future__ import annotations

import datetime as dt
from datetime import timedelta

from prefect import task

from infra.settings import Settings
from infra.spark import get_spark
from models.pretrain import Embeddings, PretrainConfig, pretrain, read_window_views
from tasks.common import STAGE_CACHE, cache_dir


@task(name="pretrain", cache_policy=STAGE_CACHE, cache_expiration=timedelta(days=7),
      persist_result=True)
def pretrain_embeddings(settings: Settings, plan: dict, config: PretrainConfig) -> dict:
    """Embeddings of the training days' views of vocabulary items, saved under the work dir.

    Returns their folder and a summary (the cache stores this small dict, not the arrays).
    """
    out = cache_dir(settings, "pretrain", {"plan": plan, "config": config.__dict__})
    if not (out / "pretrain.json").is_file():
        spark = get_spark(settings)
        start, eval_day = dt.date.fromisoformat(plan["start"]), dt.date.fromisoformat(plan["eval_day"])
        views = read_window_views(spark, settings.events_dir, eval_day, (eval_day - start).days)
        vocab = spark.createDataFrame([(i,) for i in plan["vocabulary"]], "item_id string")
        emb = pretrain(spark, views.join(vocab.hint("broadcast"), "item_id"), config)
        emb.save(out)
    emb = Embeddings.load(out)
    return {"path": str(out), "items": len(emb.item_ids), "dim": int(emb.E.shape[1]),
            "explained_variance": float(emb.explained_variance), "timings": emb.timings}
