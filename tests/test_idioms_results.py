"""Result storage on S3: a second worker host (another process with another LED_HOME) gets the
first host's cache hits through the local moto S3, with the first host's disk gone."""
from __future__ import annotations

import shutil
import uuid

import pytest

from tests.cli_runner import led

FAST = ["--param", "dim=14", "--param", "epochs=2", "--param", "num_negatives=100", "--param", "batch_size=256"]
pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_second_host_gets_cache_hits_through_s3(local_stack, tmp_path):
    from serving.storage import make_client

    world = tmp_path / "events"
    code, _, log = led("generate", "--out", world, "--days", 8, "--users", 1500, "--items", 400, "--seed", 23)
    assert code == 0, log
    bucket = f"led-results-{uuid.uuid4().hex[:8]}"
    shared = {"LED_RESULT_STORAGE_URL": f"s3://{bucket}/prefect"}
    first_home, second_home = tmp_path / "host1", tmp_path / "host2"

    code, first, log = led("run", "--events", world, "--date", "2026-01-08", *FAST,
                           env=shared | {"LED_HOME": str(first_home)})
    assert code == 0 and first["state"] == "COMPLETED", log[-3000:]
    keys = [o["Key"] for o in make_client(local_stack).list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.startswith("prefect/stage-cache/pretrain/") for k in keys), keys[:20]
    assert any(k.startswith("prefect/stage-cache/finetune/") for k in keys), keys[:20]
    shutil.rmtree(first_home)  # nothing of the first host's disk is left to read

    code, second, log = led("run", "--events", world, "--date", "2026-01-08", *FAST,
                            env=shared | {"LED_HOME": str(second_home)})
    assert code == 0 and second["state"] == "COMPLETED", log[-3000:]
    finished = [line for line in log.splitlines() if "Finished in state" in line]
    for stage in ("pretrain", "fine-tune"):
        lines = [line for line in finished if f"Task run '{stage}" in line]
        assert lines and "Cached(type=COMPLETED)" in lines[-1], finished
    assert second["seconds"]["pretrain"] < 5 and second["seconds"]["fine-tune"] < 10
    assert second["ndcg@100"] == first["ndcg@100"] and second["model_version"] == first["model_version"]
    assert (second_home / "work" / "cache" / "finetune").is_dir()  # fetched for register, index, gate
