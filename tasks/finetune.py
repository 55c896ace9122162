"""Task: fine-tune LED Project on clicks (TensorFlow), evaluate on the last day, export; cached on inputs."""
from __future__ import annotations

from datetime import timedelta

from prefect import task

from infra.settings import Settings
from models.led import LedConfig
from models.pipeline import Pretrained, Trained, WindowPlan, fine_tune_stage
from tasks.common import STAGE_CACHE, local_pretrained, share_stage


@task(name="fine-tune", cache_policy=STAGE_CACHE, cache_expiration=timedelta(days=7), persist_result=True)
def fine_tune_led(settings: Settings, plan: WindowPlan, pretrained: Pretrained, config: LedConfig) -> Trained:
    """Train P and b on the training days' clicks and export V = E P, b (with its eval set) to a cached folder."""
    trained = fine_tune_stage(settings, plan, local_pretrained(settings, pretrained), config)
    share_stage(settings, trained.model_dir)  # for cache hits on other worker hosts
    return trained
