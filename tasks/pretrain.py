"""Task: pre-train item embeddings on views (PMI + randomized SVD in Spark), cached on its inputs."""
from __future__ import annotations

from datetime import timedelta

from prefect import task

from infra.settings import Settings
from infra.spark import stage_progress
from models.pipeline import Pretrained, WindowPlan, pretrain_stage
from models.pretrain import PretrainConfig
from tasks.common import STAGE_CACHE, share_stage


@task(name="pretrain", cache_policy=STAGE_CACHE, cache_expiration=timedelta(days=7), persist_result=True)
def pretrain_embeddings(settings: Settings, plan: WindowPlan, config: PretrainConfig) -> Pretrained:
    """Embeddings of the training days' views of vocabulary items (the cache holds the record, not the arrays)."""
    with stage_progress():  # one log line per Spark stage with its elapsed time
        pretrained = pretrain_stage(settings, plan, config)
    share_stage(settings, pretrained.path)  # for cache hits on other worker hosts
    return pretrained
