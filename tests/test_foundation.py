"""Foundation: settings, event store, synthetic world, importers, stats and bad input."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_sources.synthetic import SyntheticWorld, WorldConfig, generate
from infra import events
from infra.errors import UserError
from infra.settings import Settings, get_settings


# --- settings -----------------------------------------------------------------------------------
def test_settings_precedence_and_standard_variables(monkeypatch, tmp_path):
    for name in ("LED_S3_ENDPOINT_URL", "LED_MLFLOW_TRACKING_URI", "LED_PREFECT_API_URL", "LED_S3_BUCKET"):
        monkeypatch.delenv(name, raising=False)  # the session's local stack may have set them
    toml = tmp_path / "led.toml"
    toml.write_text('dim = 64\nloss = "ns"\ns3_bucket = "from-toml"\n')
    monkeypatch.setenv("LED_CONFIG", str(toml))
    monkeypatch.setenv("LED_S3_BUCKET", "from-env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    monkeypatch.setenv("PREFECT_API_URL", "http://example:1/api")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3.local:9000")
    s = Settings()
    assert (s.dim, s.loss, s.s3_bucket) == (64, "ns", "from-env")
    assert s.mlflow_tracking_uri == "sqlite:////tmp/x.db"
    assert s.prefect_api_url == "http://example:1/api"
    assert s.s3_endpoint_url == "http://s3.local:9000"
    monkeypatch.setenv("LED_MLFLOW_TRACKING_URI", "http://led-wins:5000")
    assert Settings().mlflow_tracking_uri == "http://led-wins:5000"


def test_settings_paths_are_absolute_and_urls_follow_stack_ports(monkeypatch, tmp_path):
    for name in ("LED_S3_ENDPOINT_URL", "LED_MLFLOW_TRACKING_URI", "LED_PREFECT_API_URL", "MLFLOW_TRACKING_URI",
                 "PREFECT_API_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LED_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("LED_MLFLOW_PORT", "6001")
    s = Settings()
    assert s.events_dir == tmp_path / "h" / "events" and s.work_dir.is_absolute()
    assert s.mlflow_tracking_uri == "http://127.0.0.1:6001" and s.s3_endpoint_url == s.moto_url


def test_model_configs_take_their_defaults_from_the_settings():
    """One default per knob: models/' plain dataclasses read theirs from infra/settings.py, so the
    daily flow (Settings), `led train` and `led bench quality` (the dataclasses) cannot drift apart."""
    from models.led import LedConfig
    from models.pretrain import PretrainConfig

    fields = Settings.model_fields
    pretrain_names = {"dim": "dim", "min_count": "min_count", "smoothing": "pmi_smoothing",
                      "oversampling": "svd_oversampling", "power_iters": "svd_power_iters",
                      "max_timeline": "max_timeline", "seed": "seed"}
    for attr, name in pretrain_names.items():
        assert getattr(PretrainConfig(), attr) == fields[name].default, attr
    led_defaults = LedConfig()
    for name in ("dim", "loss", "learning_rate", "batch_size", "max_steps", "patience", "keep_prob",
                 "init_scale", "max_train_users"):
        assert getattr(led_defaults, name) == fields[name].default, name


def test_config_masks_secrets_and_rejects_bad_values(led, monkeypatch):
    monkeypatch.setenv("LED_AWS_SECRET_ACCESS_KEY", "supersecret")
    get_settings.cache_clear()
    code, cfg, out, _ = led("config")
    assert code == 0 and "supersecret" not in out
    assert json.loads(out)["aws_secret_access_key"] == "********"
    monkeypatch.setenv("LED_DIM", "not-a-number")
    get_settings.cache_clear()
    code, _, _, err = led("config")
    assert code == 2 and "dim" in err and "Traceback" not in err
    get_settings.cache_clear()


# --- event store ----------------------------------------------------------------------------------
def test_event_store_roundtrip_and_window(tmp_path):
    day = dt.date(2026, 3, 1)
    ts = pd.to_datetime(["2026-03-01 10:00", "2026-03-01 11:00"]).to_numpy()
    events.write_day(tmp_path, "views", day, events.to_table(["u1", "u2"], ["a", "b"], ts))
    events.write_day(tmp_path, "views", day + dt.timedelta(days=1),
                     events.to_table(["u1"], ["c"], ts[:1] + np.timedelta64(1, "D")))
    assert (tmp_path / "views" / "date=2026-03-01" / "part-0.parquet").is_file()
    window = events.read_window(tmp_path, "views", "2026-03-03", 2)
    assert window.num_rows == 3 and window.schema.field("ts").type.tz == "UTC"
    assert events.read_window(tmp_path, "views", "2026-03-02", 1).column("item_id").to_pylist() == ["a", "b"]
    with pytest.raises(UserError, match="no views in the window"):
        events.require_window(tmp_path, "views", "2026-04-01", 3)
    # replacing a day is atomic and leaves no temporary folders behind
    events.write_day(tmp_path, "views", day, events.to_table(["u9"], ["z"], ts[:1]))
    assert events.read_day(tmp_path, "views", day).num_rows == 1
    assert [p.name for p in (tmp_path / "views").iterdir() if p.name.startswith(".")] == []


def test_event_store_is_readable_by_spark_and_pandas(spark, small_world):
    df = spark.read.parquet(str(small_world / "views"))
    assert set(df.columns) >= {"user_id", "item_id", "ts", "date"}
    n_spark = df.filter("date = '2026-01-03'").count()
    n_pandas = len(pd.read_parquet(small_world / "views" / "date=2026-01-03"))
    assert n_spark == n_pandas > 0


# --- synthetic world --------------------------------------------------------------------------
def test_generator_is_deterministic_by_seed():
    cfg = WorldConfig(users=300, items=100, days=3, seed=11)
    a = [d.views for d in SyntheticWorld(cfg).days()]
    b = [d.views for d in SyntheticWorld(cfg).days()]
    c = [d.views for d in SyntheticWorld(WorldConfig(users=300, items=100, days=3, seed=12)).days()]
    assert all(x.equals(y) for x, y in zip(a, b))
    assert not all(x.equals(y) for x, y in zip(a, c))


def test_generator_churn_clicks_and_truth(tmp_path):
    cfg = WorldConfig(users=2000, items=500, days=8, item_churn=0.02, user_churn=0.02, seed=3)
    stats = generate(tmp_path / "w", cfg)
    assert stats["days"] == 8 and stats["views"] > 8 * 2000 * 0.3 and 0 < stats["clicks"] < stats["views"]
    # catalog churn: about 2% of 500 items replaced per day after day 0
    assert 0.5 * 7 * 10 < stats["launched"] == stats["retired"] < 2 * 7 * 10
    truth = pq.read_table(tmp_path / "w" / "truth" / "items.parquet").to_pandas()
    users = pq.read_table(tmp_path / "w" / "truth" / "users.parquet").to_pandas()
    assert len(truth) == 500 + stats["launched"] and truth["retired"].notna().sum() == stats["retired"]
    assert len(users) > 2000 and users["left"].notna().sum() > 0
    # clicks are a subset of views, and retired items are never viewed after retirement
    for day in events.list_days(tmp_path / "w"):
        v = events.read_day(tmp_path / "w", "views", day).to_pandas()
        c = events.read_day(tmp_path / "w", "clicks", day).to_pandas()
        assert set(zip(c.user_id, c.item_id)) <= set(zip(v.user_id, v.item_id))
        assert (v.ts.dt.date == day).all() and (c.ts.dt.date == day).all()
        dead = set(truth.loc[truth.retired.notna() & (truth.retired <= day), "item_id"])
        assert not dead & set(v.item_id)
    # clicks follow affinity: clicked views have a higher true affinity than unclicked ones
    theta = dict(zip(users.user_id, users.theta))
    phi = dict(zip(truth.item_id, truth.phi))
    v = events.read_day(tmp_path / "w", "views", day).to_pandas()
    clicked = set(zip(c.user_id, c.item_id))
    aff = np.array([np.dot(theta[u], phi[i]) for u, i in zip(v.user_id, v.item_id)])
    is_click = np.array([(u, i) in clicked for u, i in zip(v.user_id, v.item_id)])
    assert aff[is_click].mean() > aff[~is_click].mean() + 0.1


def test_generate_cli_and_non_empty_output(led, tmp_path):
    code, res, _, _ = led("generate", "--out", tmp_path / "g", "--days", 2, "--users", 200, "--items", 50)
    assert code == 0 and {"views", "clicks", "days", "users", "items"} <= res.keys() and res["days"] == 2
    code, _, _, err = led("generate", "--out", tmp_path / "g", "--days", 2)
    assert code == 2 and "not empty" in err
    code, _, _, err = led("generate", "--out", tmp_path / "h", "--days", 0)
    assert code == 2 and "days" in err and not (tmp_path / "h").exists()


# --- importers ---------------------------------------------------------------------------------
def test_movielens_100k_import_exact_counts(led, ml100k_dir, tmp_path):
    code, res, _, _ = led("import", "movielens", ml100k_dir, "--out", tmp_path / "ml")
    assert code == 0
    ratings = pd.read_csv(next(ml100k_dir.glob("*.inter")), sep="\t")
    assert res["views"] == len(ratings) == 100_000
    assert res["clicks"] == int((ratings["rating:float"] >= 4).sum()) == 55_375
    assert res["days"] == len(events.list_days(tmp_path / "ml"))
    code, stats, _, _ = led("stats", "--events", tmp_path / "ml")
    assert code == 0 and stats["users"] == 943 and stats["items"] == 1682


@pytest.mark.parametrize("layout", ["u.data", "ratings.dat", "ratings.csv"])
def test_movielens_formats(tmp_path, layout):
    from data_sources.movielens import import_movielens

    rows = [(1, 10, 5, 978300760), (1, 11, 3, 978302109), (2, 10, 4, 978387000)]
    path = tmp_path / layout
    if layout == "u.data":
        path.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    elif layout == "ratings.dat":
        path.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    else:
        path.write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.0,{t}\n" for u, i, r, t in rows))
    res = import_movielens(tmp_path, tmp_path / "out")
    assert (res["views"], res["clicks"], res["days"]) == (3, 2, 2)


def test_generic_importer_csv_and_parquet(led, tmp_path):
    df = pd.DataFrame({"uid": ["a", "a", "b", "b"], "sku": ["x", "y", "x", "z"],
                       "when": ["2026-02-01T10:00:00Z", "2026-02-01T10:05:00Z", "2026-02-02T09:00:00Z",
                                "2026-02-02T09:01:00Z"],
                       "type": ["view", "click", "view", "purchase"]})
    df.to_csv(tmp_path / "log.csv", index=False)
    code, res, _, _ = led("import", "generic", tmp_path / "log.csv", "--out", tmp_path / "s1", "--user-col", "uid",
                          "--item-col", "sku", "--ts-col", "when", "--ts-unit", "iso", "--event-col", "type")
    assert code == 0 and (res["views"], res["clicks"], res["days"]) == (3, 1, 2)  # the click is also a view
    df.assign(when=pd.to_datetime(df.when).astype("int64") // 10**6).to_parquet(tmp_path / "log.parquet")
    code, res, _, _ = led("import", "generic", tmp_path / "log.parquet", "--out", tmp_path / "s2", "--user-col",
                          "uid", "--item-col", "sku", "--ts-col", "when", "--ts-unit", "ms")
    assert code == 0 and (res["views"], res["clicks"]) == (4, 0)


# --- bad input: one clear line on stderr, exit 2, nothing half-written ---------------------------
@pytest.mark.parametrize("content, flags, expected", [
    (None, [], "no such file"),
    ("", [], "empty"),
    ("u,i,t\n1,2,3\n", [], "missing column"),
    ("user_id,item_id,timestamp\n1,2,yesterday\n3,4,5\n", [], "unparsable"),
    ("user_id,item_id,timestamp\n1,,5\n", [], "missing values"),
])
def test_generic_bad_input(led, tmp_path, content, flags, expected):
    path = tmp_path / "in.csv"
    if content is not None:
        path.write_text(content)
    code, _, _, err = led("import", "generic", path, "--out", tmp_path / "out", *flags)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_movielens_bad_input(led, tmp_path):
    (tmp_path / "u.data").write_text("1\t2\tfive\t100\n")
    code, _, _, err = led("import", "movielens", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "cannot parse" in err
    code, _, _, err = led("import", "movielens", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert code == 2 and "no such file" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.bin").write_text("x")
    code, _, _, err = led("import", "movielens", tmp_path / "u.data", "--out", tmp_path / "other")
    assert code == 2 and "not empty" in err and (tmp_path / "other" / "data.bin").exists()


def test_stats_reports_churn_and_rejects_non_store(led, small_world, tmp_path):
    code, stats, out, _ = led("stats", "--events", small_world)
    assert code == 0 and stats["days"] == 10 and "launched" in out
    assert sum(d["launched"] for d in stats["per_day"]) > 0 and sum(d["retired"] for d in stats["per_day"]) > 0
    code, _, _, err = led("stats", "--events", tmp_path)
    assert code == 2 and "not an event store" in err
