"""``led deploy`` and ``led worker``: register the daily deployment with Prefect and execute its runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
POOL = "led-process"
DEPLOYMENT = "led-daily/daily"


def register(sub) -> None:
    p = sub.add_parser(
        "deploy", help="register the daily deployment (prefect.yaml) with the Prefect server",
        description="Creates the process work pool `led-process` if needed and runs `prefect deploy --all` "
        "with prefect.yaml (daily cron schedule, Europe/Paris) against the Prefect API of the settings. "
        "With LED_NOTIFY_WEBHOOK_URL set it also saves a webhook notification block and automations that "
        "call it when a daily run fails, crashes, times out or is late (LED_LATE_AFTER_SECONDS). "
        "Then start `led worker` to execute runs; trigger one from the UI (Custom run) or with "
        "`prefect deployment run led-daily/daily --param run_date=YYYY-MM-DD`.")
    p.set_defaults(func=run_deploy)
    w = sub.add_parser("worker", help="run a Prefect process worker for the led-process pool (foreground)",
                       description="Executes the deployment's flow runs in subprocesses with the LED "
                       "environment (Prefect API, result storage under the work dir). Stop with Ctrl-C.")
    w.set_defaults(func=run_worker)


def _env() -> dict[str, str]:
    from infra.orchestration import configure_prefect, prefect_env
    from infra.settings import get_settings

    settings = get_settings()
    configure_prefect(settings)  # checks the API is reachable: one clear error otherwise
    return os.environ.copy() | prefect_env(settings) | {"LED_PROJECT_DIR": str(PROJECT_DIR)}


def _alerts() -> list[str]:
    """The deployment's alert automations (``infra.orchestration.ensure_alerts``); needs the deployment."""
    from prefect.client.orchestration import get_client

    from infra.orchestration import ensure_alerts
    from infra.settings import get_settings

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
    return ensure_alerts(get_settings(), deployment.id)


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], env=env, cwd=PROJECT_DIR,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def run_deploy(args) -> int:
    from cli.common import emit, log
    from infra.errors import UserError

    env = _env()
    if _prefect(env, "work-pool", "inspect", POOL).returncode != 0:
        made = _prefect(env, "work-pool", "create", POOL, "--type", "process")
        if made.returncode != 0:
            raise UserError(f"cannot create work pool {POOL}: {made.stderr.strip()[-300:]}")
        log(f"created work pool {POOL}")
    done = _prefect(env, "deploy", "--all", "--prefect-file", str(PROJECT_DIR / "prefect.yaml"))
    if done.returncode != 0:
        raise UserError(f"prefect deploy failed: {(done.stdout + done.stderr).strip()[-500:]}")
    log(done.stdout.strip()[-400:])
    automations = _alerts()
    log(f"alert automations: {', '.join(automations)}" if automations
        else "no alert automation (set LED_NOTIFY_WEBHOOK_URL to be notified of failed or late runs)")
    emit({"deployment": DEPLOYMENT, "work_pool": POOL, "prefect_api_url": env["PREFECT_API_URL"],
          "automations": automations})
    return 0


def run_worker(args) -> int:
    env = _env()
    os.chdir(PROJECT_DIR)
    os.execve(sys.executable, [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL], env)
