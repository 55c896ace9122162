"""Prefect wiring from settings: API URL, result storage, alert automations, health check.

Call ``configure_prefect(settings)`` before importing ``prefect`` in a process:
Prefect reads its settings from the environment when it is first imported.

- **Result storage** (the stage caches): ``WORK_DIR/prefect-results`` on this
  machine, or with ``result_storage_url = s3://BUCKET/PREFIX`` a prefect-aws
  ``S3Bucket`` block (same endpoint and credentials as serving), named by
  ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``, so every worker host shares them.
- **Alerts**: with ``notify_webhook_url``, ``ensure_alerts`` (called by ``led
  deploy``) saves a custom-webhook notification block and two automations on
  the deployment: one when a run fails, crashes or times out, one when a run
  is late and still not started ``late_after_seconds`` later.
"""
from __future__ import annotations

import os
import urllib.request
from datetime import timedelta
from typing import TYPE_CHECKING

from infra.errors import UserError
from infra.settings import Settings

if TYPE_CHECKING:
    from uuid import UUID

RESULT_BLOCK = "led-results"
ALERT_BLOCK = "led-daily-alerts"
FAILED_AUTOMATION = "led-daily: run failed or crashed"
LATE_AUTOMATION = "led-daily: run late"
FAILED_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut")
STARTED_EVENTS = ("prefect.flow-run.Pending", "prefect.flow-run.Running", "prefect.flow-run.Cancelled",
                  "prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Crashed")
ALERT_BODY = ("Flow run {{ flow_run.name }} of deployment {{ deployment.name }} is {{ flow_run.state.name }}: "
              "{{ flow_run.state.message }}")


def prefect_env(settings: Settings) -> dict[str, str]:
    """The environment a process running LED flows (CLI, worker) needs."""
    env = {
        "PREFECT_API_URL": settings.prefect_api_url,
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(settings.work_dir / "prefect-results"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": os.environ.get("PREFECT_LOGGING_LEVEL", "INFO"),
        # records of the `led` loggers (e.g. Spark stage progress, infra.spark) reach the run's logs
        "PREFECT_LOGGING_EXTRA_LOGGERS": "led",
        "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0"),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    if settings.result_storage_url:
        env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] = f"s3-bucket/{RESULT_BLOCK}"
    return env


def check_prefect_api(url: str, timeout: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
    except Exception:  # noqa: BLE001 - any failure is "unreachable"
        pass
    raise UserError(f"Prefect API unreachable at {url}: start it with `led stack up` or set LED_PREFECT_API_URL")


def configure_prefect(settings: Settings, check: bool = True) -> None:
    os.environ.update(prefect_env(settings))
    (settings.work_dir / "prefect-results").mkdir(parents=True, exist_ok=True)
    if check:
        check_prefect_api(settings.prefect_api_url)
        if settings.result_storage_url:
            save_result_storage(settings)


# --------------------------------------------------------------------------- result storage on S3
def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def save_result_storage(settings: Settings) -> None:
    """(Re)save the ``s3-bucket/led-results`` block from settings; create the bucket if it is missing."""
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    bucket, prefix = split_s3_url(settings.result_storage_url)
    secret = settings.aws_secret_access_key
    credentials = AwsCredentials(
        aws_access_key_id=settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else None,
        aws_secret_access_key=secret.get_secret_value() if secret else None, region_name=settings.aws_region,
        aws_client_parameters=AwsClientParameters(endpoint_url=settings.s3_endpoint_url))
    _ensure_bucket(credentials.get_s3_client(), bucket)
    S3Bucket(bucket_name=bucket, bucket_folder=prefix, credentials=credentials).save(RESULT_BLOCK, overwrite=True)


def _ensure_bucket(s3, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise UserError(f"result storage bucket {bucket!r} is not accessible: {exc}") from None
        s3.create_bucket(Bucket=bucket)


# --------------------------------------------------------------------------- alerts
def ensure_alerts(settings: Settings, deployment_id: "UUID") -> list[str]:
    """The notification block and the two automations on ``deployment_id`` (replaced if they exist);
    returns the automations' names. With ``notify_webhook_url`` empty, earlier ones are removed."""
    for name in (FAILED_AUTOMATION, LATE_AUTOMATION):
        _delete_automations(name)
    if not settings.notify_webhook_url:
        return []
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    block = CustomWebhookNotificationBlock(name=ALERT_BLOCK, url=settings.notify_webhook_url,
                                           json_data={"subject": "{{subject}}", "body": "{{body}}"})
    block_id = block.save(ALERT_BLOCK, overwrite=True)
    related = {"prefect.resource.id": f"prefect.deployment.{deployment_id}"}
    notify = SendNotification(block_document_id=block_id, subject="LED daily run {{ flow_run.state.name }}",
                              body=ALERT_BODY)
    failed = EventTrigger(expect=set(FAILED_EVENTS), match={"prefect.resource.id": "prefect.flow-run.*"},
                          match_related=related, posture=Posture.Reactive, threshold=1)
    late = EventTrigger(after={"prefect.flow-run.Late"}, expect=set(STARTED_EVENTS),
                        match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=related,
                        for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                        within=timedelta(seconds=settings.late_after_seconds))
    made = []
    for name, trigger in ((FAILED_AUTOMATION, failed), (LATE_AUTOMATION, late)):
        Automation(name=name, description="created by `led deploy`", trigger=trigger, actions=[notify]).create()
        made.append(name)
    return made


def _delete_automations(name: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name(name):
            client.delete_automation(automation.id)
