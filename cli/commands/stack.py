"""``led stack up|down|status``: the local moto S3, MLflow and Prefect servers."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "stack", help="start, stop or inspect the local stack (moto S3, MLflow, Prefect)",
        description="Run the pipeline's services on 127.0.0.1 with all state under LED_HOME/stack: "
        "a moto S3 server (LED_MOTO_PORT, default 5077), an MLflow tracking server (LED_MLFLOW_PORT, 5055) "
        "and a Prefect server (LED_PREFECT_PORT, 4200). `up` is idempotent and waits until every service "
        "is healthy; `down` stops exactly the processes `up` started.")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--only", nargs="+", choices=["moto", "mlflow", "prefect"],
                   help="act on these services only (default: all)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for health (default 120)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cli.common import emit, log
    from infra.settings import get_settings
    from infra.stack import SERVICES, LocalStack

    stack = LocalStack(get_settings())
    names = tuple(args.only or SERVICES)
    if args.action == "up":
        result = stack.up(names, timeout=args.timeout, log=log)
    elif args.action == "down":
        result = stack.down(names)
    else:
        result = stack.status()
        for name, st in result.items():
            state = "healthy" if st["healthy"] else ("running" if st["running"] else "stopped")
            log(f"{name:8s} {state:8s} {st['url']}  pid={st['pid']}")
    emit(result)
    return 0
