"""The one typed settings object of the pipeline.

Every knob has a default, an environment variable ``LED_<FIELD>`` and may be set
in a TOML file (``led.toml`` in the working directory, or the file named by
``LED_CONFIG``). The tools' own standard variables are honoured too:
``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION``; credentials come from boto3's
standard chain unless ``LED_AWS_ACCESS_KEY_ID`` / ``LED_AWS_SECRET_ACCESS_KEY``
are given. Precedence: ``LED_*`` > standard variable > TOML > default.

The defaults point at the local stack (``led stack up``), so after it every
command works with no configuration at all.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

LossName = Literal["bpr", "ns", "css", "multi"]
NegativeSampling = Literal["uniform", "popularity"]


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Effective configuration. Paths are resolved to absolute paths."""

    model_config = SettingsConfigDict(
        env_prefix="LED_", extra="ignore", validate_default=True, populate_by_name=True
    )

    # --- storage -----------------------------------------------------------
    home: Path = Field(Path(".led"), description="Root of all local state (events, work, stack).")
    events_dir: Path | None = Field(None, description="Event store (views/ and clicks/ partitioned by date); "
                                    "default HOME/events.")
    work_dir: Path | None = Field(None, description="Run folders and caches; default HOME/work.")
    stack_dir: Path | None = Field(None, description="Local stack state, logs and PIDs; default HOME/stack.")

    # --- Spark ---------------------------------------------------------------
    spark_master: str = Field("local[*]", description="Any Spark master URL.")
    spark_driver_memory: str = Field("6g", description="Only honoured before the JVM starts.")
    spark_shuffle_partitions: int = Field(8, ge=1)
    spark_memory_fraction: float = Field(
        0.6, gt=0, lt=1, description="spark.memory.fraction: the share of the heap for execution and the "
        "cached co-occurrence / PPMI blocks (Spark's default 0.6); the blocks' products run in Python, so "
        "a larger share keeps them cached instead of rebuilt.")
    # On a cluster master (docs/architecture.md, "Running pre-training on a cluster"); ignored by local[*].
    spark_driver_host: str = Field("127.0.0.1", description="Address the driver binds to and executors reach "
                                   "it at: 127.0.0.1 for a cluster on this machine, this host's address for "
                                   "executors on other hosts.")
    spark_executor_memory: str = Field("2g", description="Heap of each executor (spark.executor.memory); must "
                                       "fit in a worker's memory.")
    spark_executor_cores: int | None = Field(None, ge=1, description="Cores per executor (spark.executor."
                                             "cores); empty = all of a worker's cores, one executor each.")
    spark_cores_max: int | None = Field(None, ge=1, description="Most cores the application takes from the "
                                        "cluster (spark.cores.max); empty = all it is offered.")
    spark_executor_python: str | None = Field(
        None, description="Python of the executors' workers (PYSPARK_PYTHON). Empty = ./ALIAS/bin/python of "
        "spark_archives, else PYSPARK_PYTHON, else this interpreter (one machine or a shared image).")
    spark_archives: str | None = Field(
        None, description="spark.archives: a packed environment (venv-pack / conda-pack) unpacked next to "
        "each executor, e.g. /path/led-env.tar.gz#env (served by the driver) or hdfs://...; its ./env/bin/python "
        "runs the Python workers.")
    spark_ship_code: bool = Field(True, description="On a non-local master, ship the pipeline's own "
                                  "packages as a zip (SparkContext.addPyFile), so executors run the driver's "
                                  "code and their environment needs only the third-party packages.")

    # --- MLflow ----------------------------------------------------------------
    mlflow_tracking_uri: str = Field(
        "http://127.0.0.1:5055",
        validation_alias=_env("LED_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "mlflow_tracking_uri"),
    )
    mlflow_experiment: str = "led-daily"
    mlflow_model_name: str = "led-recommender"

    # --- Prefect ---------------------------------------------------------------
    prefect_api_url: str = Field(
        "http://127.0.0.1:4200/api",
        validation_alias=_env("LED_PREFECT_API_URL", "PREFECT_API_URL", "prefect_api_url"),
    )

    # --- S3 serving storage -------------------------------------------------
    s3_endpoint_url: str | None = Field(
        "http://127.0.0.1:5077",
        validation_alias=_env(
            "LED_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "s3_endpoint_url"
        ),
        description="Empty string = AWS's own endpoint.",
    )
    s3_bucket: str = "led-serving"
    s3_prefix: str = "led"
    aws_region: str = Field(
        "us-east-1", validation_alias=_env("LED_AWS_REGION", "AWS_DEFAULT_REGION", "AWS_REGION", "aws_region")
    )
    aws_access_key_id: SecretStr | None = Field(None, description="Else boto3's standard chain.")
    aws_secret_access_key: SecretStr | None = Field(None, description="Else boto3's standard chain.")

    # --- local stack ---------------------------------------------------------
    stack_host: str = "127.0.0.1"
    moto_port: int = Field(5077, ge=1, le=65535)
    mlflow_port: int = Field(5055, ge=1, le=65535)
    prefect_port: int = Field(4200, ge=1, le=65535)

    # --- data ----------------------------------------------------------------
    window_days: int = Field(14, ge=1, description="Window W in days: a run for D reads [D-W, D); its last day "
                             "with events is the evaluation day.")
    click_rating_threshold: float = Field(4.0, description="MovieLens: rating >= this is also a click.")
    seed: int = Field(42, description="Seed of every random choice (deterministic reruns).")

    # --- validation (Great Expectations) ------------------------------------
    max_duplicate_rate: float = Field(0.01, ge=0, le=1)
    volume_min_ratio: float = Field(0.25, gt=0, description="Day rows >= ratio x trailing 7-day median.")
    volume_max_ratio: float = Field(4.0, gt=0, description="Day rows <= ratio x trailing 7-day median.")
    max_new_item_share: float = Field(0.5, ge=0, le=1, description="Share of a day's items never seen before.")
    max_orphan_click_rate: float = Field(0.05, ge=0, le=1, description="Clicks whose item was never viewed.")
    volume_min_active_users: int = Field(
        100, ge=0,
        description="Volume, empty-day and new-item checks apply to a day only when the trailing 7-day median "
        "of daily active users reaches this: with fewer users one heavy user swings a day several-fold "
        "(ML-100K: ~11 users/day, days from 0 to 3550 ratings) and ratio bounds would only raise false alarms.",
    )
    # --- validation: well-formed but wrong traffic (data_checks/traffic.py) --
    # Compared with the trailing 7 days, under the same active-user floor as the volume checks
    # (the near-duplicate rate excepted). benchmarks/README.md says where each line is drawn and why.
    near_duplicate_seconds: float = Field(10.0, gt=0, description="Same (user, item) again within this is "
                                          "a near-duplicate (retries, re-ingestion with shifted times).")
    max_near_duplicate_rate: float = Field(0.05, ge=0, le=1, description="Share of a day's rows.")
    concentration_top_fraction: float = Field(0.01, gt=0, le=1, description="Top share of users/items "
                                              "whose share of a day's events is watched.")
    max_top_user_share_increase: float = Field(0.05, ge=0, le=1, description="Points over the trailing "
                                               "median share of the top users (bots, a stuck client).")
    max_top_item_share_increase: float = Field(0.10, ge=0, le=1, description="Points over the trailing "
                                               "median share of the top items (crawlers, a stuck client).")
    events_per_user_min_ratio: float = Field(0.6, gt=0, description="Events per active user >= ratio x "
                                             "the trailing median.")
    events_per_user_max_ratio: float = Field(1.6, gt=0, description="Events per active user <= ratio x "
                                             "the trailing median.")
    max_item_psi: float = Field(0.3, gt=0, description="PSI of a day's items over trailing popularity buckets.")
    max_user_activity_psi: float = Field(0.02, gt=0, description="PSI of the share of a day's events by user "
                                         "activity decile (top users excluded) against the trailing mean.")
    click_through_min_ratio: float = Field(0.6, gt=0, description="clicks/views >= ratio x trailing median.")
    click_through_max_ratio: float = Field(1.6, gt=0, description="clicks/views <= ratio x trailing median.")

    # --- pre-training (PMI + randomized SVD) --------------------------------
    dim: int = Field(128, ge=2, description="Embedding size d (pre-training and LED).")
    min_count: int = Field(5, ge=1, description="Minimum views (vocabulary) and co-occurrences (PMI) for an "
                           "item to be embedded.")
    pmi_smoothing: float = Field(0.9, gt=0, le=1, description="Exponent α of the PMI's context distribution "
                                 "(word2vec's 0.75 boosts rare contexts; 0.9 measured better on ML-100K, equal on the "
                                 "synthetic world: benchmarks/README.md, \"Quality\").")
    svd_oversampling: int = Field(10, ge=0)
    svd_power_iters: int = Field(2, ge=0, description="Power iterations of the randomized SVD.")
    max_timeline: int = Field(200, ge=2, description="Cap on the items per user timeline (co-occurrence and "
                              "LED inputs).")
    pretrain_engine: Literal["auto", "local", "spark"] = Field(
        "auto", description="Where PMI + SVD run: spark, local (numpy/scipy in the flow's process) or auto "
        "(local up to pretrain_local_max_views training views, else Spark).")
    pretrain_local_max_views: int = Field(
        5_000_000, ge=0, description="Largest window (training views) auto pre-trains locally: up to half "
        "ML-20M the local engine is faster than Spark and lighter (benchmarks/pretrain_engines.py).")

    # --- fine-tuning (LED Project); the schedule is explained in models/led.py -----
    loss: LossName = Field("bpr", description="Fine-tuning loss: bpr, ns, css (sampled) or multi (full "
                           "softmax, small catalogs).")
    num_negatives: int = Field(1000, ge=1, description="Sampled negatives per batch.")
    negative_sampling: NegativeSampling = Field("uniform", description="Negatives drawn uniformly or by "
                                                "popularity.")
    learning_rate: float = Field(3e-3, gt=0, description="Peak Adam rate (after warm-up) of P.")
    batch_size: int = Field(0, ge=0, description="Users per step; 0 = derived from the training users "
                            "(a power of two near users/10 in [32, 512]).")
    epochs: int = Field(200, ge=1, description="Cap on passes over the training users (the budget is max_steps).")
    max_steps: int = Field(1500, ge=1, description="Optimizer-step budget; the rate decays to 0 at its end.")
    eval_every: int = Field(0, ge=0, description="Steps between validation evaluations; 0 = max_steps / 40.")
    patience: int = Field(8, ge=1, description="Evaluations without a better validation NDCG@100 before stopping.")
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="Linear warm-up then cosine decay.")
    warmup_share: float = Field(0.05, ge=0, lt=1, description="Share of max_steps spent warming up.")
    bias_lr_scale: float = Field(1.0, gt=0, description="Rate of the biases b relative to P's.")
    init_scale: float = Field(4.0, gt=0, description="P starts as init_scale x identity.")
    keep_prob: float = Field(0.7, gt=0, le=1, description="Probability of keeping a timeline item in the "
                             "input while training.")
    target_ratio: float = Field(0.2, gt=0, lt=1)
    max_train_users: int = Field(50_000, ge=0, description="Fine-tune on at most this many clicking users a "
                                 "day (a stable hash sample; 0 = all): LED has no per-user parameters, so the "
                                 "cost and memory of the stage stop growing with the users. At ML-20M size "
                                 "10k, 30k, 100k and all users gave NDCG@100 within 1%; 50k leaves margin for "
                                 "the per-item biases of larger catalogs (benchmarks/README.md, \"Fine-tuning "
                                 "on a sample of users\").")
    max_eval_users: int = Field(20_000, ge=0, description="Evaluate (and gate) on at most this many of the "
                                "evaluation day's clickers (a stable hash sample; 0 = all): scoring every item "
                                "for every clicker grows with users x items; 20k users keep NDCG@100's "
                                "standard error near 1% of its value.")

    # --- gate, index, serving ----------------------------------------------
    refit_whole_window: bool = Field(True, description="After a promotion, refit on the whole window (the "
                                     "evaluation day included) and ship the refit if it passes the sanity "
                                     "checks (docs/architecture.md, \"Shipping the freshest day\").")
    gate_tolerance: float = Field(0.02, ge=0, lt=1, description="The challenger is promoted if its NDCG@100 "
                                  ">= champion's x (1 - tolerance).")
    gate_noise_z: float = Field(1.96, ge=0, description="A shortfall below the tolerance still promotes when it "
                                "is within this many standard errors of the per-user paired NDCG@100 difference "
                                "(noise, not evidence: the 60-day soak saw a clean day rejected at -2.2% by "
                                "chance); 0 compares the means only (models/gate.py).")
    vocab_min_ratio: float = Field(0.5, gt=0)
    vocab_max_ratio: float = Field(2.0, gt=0)
    n_trees: int = Field(100, ge=1, description="Annoy trees; 100 (was 50) halved the k=10 query CPU at d=600 on a "
                         "trained 22k-item export (a cheaper search_k validates), same at d=128 (serving/index.py)")
    search_k: int = Field(5000, ge=-1, description="Annoy nodes inspected per query; 5000 gave recall@100 >= 0.99 "
                          "at 20k items with the bias-column conditioning (serving/index.py).")
    min_ann_recall: float = Field(0.95, ge=0, le=1)
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(8080, ge=0, le=65535, description="0 = any free port (printed at start).")
    serve_poll_seconds: float = Field(5.0, gt=0)
    serve_max_items: int = Field(1000, ge=1)
    serve_max_k: int = Field(1000, ge=1)
    serve_max_body_bytes: int = Field(1 << 20, ge=1024)
    serve_max_exclude: int = Field(10_000, ge=0, description="most ids in a /recommend \"exclude\" list")
    serve_max_candidates: int = Field(10_000, ge=0, description="most ids in a /recommend \"candidates\" list")

    # --- automatic rollback after a swap (docs/architecture.md, "Automatic rollback") ---------
    serving_url: str | None = Field(None, description="Base URL of the serving processes the post-push watch "
                                    "reads (/model, /metrics, /recommend), e.g. http://127.0.0.1:8080; empty: "
                                    "the watch is skipped.")
    rollback_watch_seconds: float = Field(300, ge=0, description="How long the serving health is watched "
                                          "after the new version is live; 0 = no watch.")
    rollback_swap_timeout_seconds: float = Field(120, gt=0, description="Time every serving worker has to "
                                                 "load the pushed version (polling + download + load).")
    rollback_sample_seconds: float = Field(5, gt=0, description="Seconds between two /metrics samples.")
    rollback_max_error_rate: float = Field(0.01, ge=0, le=1, description="Share of /recommend answered 5xx.")
    rollback_max_p99_ms: float = Field(250, gt=0, description="p99 /recommend handling time in the server "
                                       "(benchmarks/README.md: client-side p99 1.8-5.4 ms on quiet cores, "
                                       "148 ms during a swap at load 10.8).")
    rollback_max_fallback_share: float = Field(0.5, ge=0, le=1, description="Share of answers that fell "
                                               "back to popularity (no known item in the request).")
    rollback_max_ndcg_drop: float = Field(0.2, ge=0, le=1, description="Relative drop of the canary's "
                                          "NDCG@100 against the previous model's on the same probes.")
    rollback_min_requests: int = Field(50, ge=1, description="/recommend requests needed before the error, "
                                       "latency and fallback ratios are judged (the canary's count).")
    rollback_probe_users: int = Field(200, ge=0, description="Users of the pushed model's eval set sent as "
                                      "the canary's probes (drawn by seed); 0 = no canary.")

    # --- operations: Prefect timeouts, notifications, result storage; Spark UI -----------------
    # A hung Spark or TensorFlow job must fail its stage, not hang the day: each stage task has a
    # timeout (Prefect's timeout_seconds), taken from the run's settings when the flow calls the task
    # (tasks.common.with_timeout).
    validate_timeout_seconds: float = Field(1800, gt=0, description="Validation stage timeout.")
    vocabulary_timeout_seconds: float = Field(900, gt=0, description="Vocabulary stage timeout.")
    pretrain_timeout_seconds: float = Field(3600, gt=0, description="Pre-training (Spark) stage timeout.")
    fine_tune_timeout_seconds: float = Field(7200, gt=0, description="Fine-tuning (TensorFlow) stage timeout.")
    refit_timeout_seconds: float = Field(7200, gt=0, description="Whole-window refit (TensorFlow) stage timeout.")
    register_timeout_seconds: float = Field(1800, gt=0, description="MLflow registration stage timeout.")
    index_timeout_seconds: float = Field(3600, gt=0, description="Annoy index stage timeout.")
    gate_timeout_seconds: float = Field(1800, gt=0, description="Evaluate-and-gate stage timeout.")
    push_timeout_seconds: float = Field(1800, gt=0, description="S3 push stage timeout.")
    watch_timeout_seconds: float = Field(1800, gt=0, description="Post-push serving watch stage timeout.")
    report_timeout_seconds: float = Field(300, gt=0, description="Report stage timeout.")
    notify_webhook_url: str | None = Field(
        None, description="`led deploy` creates a Prefect webhook notification block with this URL and an "
        "automation that calls it when a daily run fails, crashes or is late; empty: no automation.")
    late_after_seconds: float = Field(3600, gt=0, description="A scheduled run still not started this long "
                                      "after its time is reported late.")
    result_storage_url: str | None = Field(
        None, description="Where Prefect persists task results (the stage caches): empty = WORK_DIR/prefect-"
        "results on this machine; s3://BUCKET/PREFIX = an S3 bucket (endpoint and credentials as for "
        "serving), so every worker host shares the caches.")
    spark_ui_enabled: bool = Field(False, description="Start the Spark web UI (on spark_ui_port).")
    spark_ui_port: int = Field(4040, ge=1, le=65535)

    @field_validator("notify_webhook_url", "result_storage_url", "serving_url", mode="before")
    @classmethod
    def _blank_is_none(cls, v: Any) -> Any:
        return v or None

    @field_validator("result_storage_url")
    @classmethod
    def _s3_url(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("s3://") and len(v) > len("s3://")):
            raise ValueError("must be s3://BUCKET[/PREFIX] (or empty for the local work folder)")
        return v

    @field_validator("s3_endpoint_url", mode="before")
    @classmethod
    def _blank_endpoint_is_aws(cls, v: Any) -> Any:
        return v or None

    @field_validator("spark_executor_cores", "spark_cores_max", "spark_executor_python", "spark_archives",
                     mode="before")
    @classmethod
    def _blank_spark_option_is_spark_default(cls, v: Any) -> Any:
        return v or None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("LED_CONFIG", "led.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def model_post_init(self, __context: Any) -> None:
        self.home = self.home.expanduser().resolve()
        self.events_dir = (self.events_dir or self.home / "events").expanduser().resolve()
        self.work_dir = (self.work_dir or self.home / "work").expanduser().resolve()
        self.stack_dir = (self.stack_dir or self.home / "stack").expanduser().resolve()
        # Unless set explicitly, the service URLs follow the local stack's ports.
        derived = {"mlflow_tracking_uri": self.mlflow_url, "prefect_api_url": self.prefect_url,
                   "s3_endpoint_url": self.moto_url}
        for name, url in derived.items():
            if name not in self.model_fields_set:
                setattr(self, name, url)

    def with_overrides(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` applied and validated like any other source (``None`` = keep).

        The one override path: flow parameters, command-line flags and tests all
        come through here, so an invalid value is the same ``UserError`` everywhere.
        """
        from pydantic import ValidationError

        from infra.errors import UserError

        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - set(type(self).model_fields))
        if unknown:
            raise UserError(f"unknown setting(s): {', '.join(unknown)}")
        try:
            return type(self).model_validate(self.model_dump() | changes)
        except ValidationError as exc:
            raise UserError(_first_error(exc)) from None

    # --- derived -------------------------------------------------------------
    @property
    def moto_url(self) -> str:
        return f"http://{self.stack_host}:{self.moto_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.stack_host}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://{self.stack_host}:{self.prefect_port}/api"

    def masked(self) -> dict[str, Any]:
        """Effective settings as JSON-ready data, secrets masked."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "********"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def default(name: str) -> Any:
    """The default of one knob, for the plain dataclasses of models/ (LedConfig, PretrainConfig): this
    file is the one place defaults live."""
    return Settings.model_fields[name].default


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; call ``get_settings.cache_clear()`` after changing the environment.

    An invalid value (environment or TOML) is a ``UserError`` naming the field.
    """
    from pydantic import ValidationError

    from infra.errors import UserError

    try:
        return Settings()
    except ValidationError as exc:
        raise UserError(_first_error(exc)) from None


def _first_error(exc) -> str:
    first = exc.errors()[0]
    field = ".".join(map(str, first["loc"]))
    return f"invalid setting {field}: {first['msg']} (got {first.get('input')!r})"
