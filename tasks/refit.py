"""Tasks: refit the promoted model on the whole window, then make it the champion if it is sane."""
from __future__ import annotations

from datetime import timedelta

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.registry import RunInfo
from infra.settings import Settings
from models.gate import GateDecision, ship_refit
from models.led import LedConfig
from models.pipeline import Pretrained, Trained, WindowPlan, refit_stage
from serving.publish import SlotBuild
from tasks.common import STAGE_CACHE, local_pretrained, local_trained, share_stage


@task(name="refit", cache_policy=STAGE_CACHE, cache_expiration=timedelta(days=7), persist_result=True)
def refit_led(settings: Settings, whole: WindowPlan, pretrained: Pretrained, evaluated: Trained,
              evaluated_pretrained: Pretrained, config: LedConfig) -> Trained:
    refit = refit_stage(settings, whole, local_pretrained(settings, pretrained), local_trained(settings, evaluated),
                        local_pretrained(settings, evaluated_pretrained), config)
    share_stage(settings, refit.model_dir)  # for cache hits on other worker hosts
    return refit


@task(name="ship-refit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def ship_refit_model(settings: Settings, refit: RunInfo, evaluated: RunInfo, slot: SlotBuild) -> GateDecision:
    return ship_refit(settings, refit.model_version, evaluated.model_version, slot.ann_recall)
