"""The gate and the soak tell noise from a worse model: a shortfall within ``gate_noise_z`` standard errors of the
paired per-user NDCG@100 difference promotes, a real one does not (docs/architecture.md, "Registry and gate")."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from infra.settings import Settings
from models.gate import checks
from models.metrics import paired_difference


def _model(n_items: int = 50):
    rng = np.random.default_rng(0)
    return SimpleNamespace(V=rng.normal(size=(n_items, 4)).astype(np.float32), b=np.zeros(n_items, np.float32),
                           item_ids=np.arange(n_items).astype(str), card={})


def _gate(challenger: float, champion: float, paired, **overrides):
    settings = Settings(**overrides)
    return checks(settings, _model(), _model(), {"ndcg_at_100": challenger}, {"ndcg_at_100": champion},
                  None, paired)


def test_paired_difference_is_the_mean_and_standard_error_of_the_differences():
    rng = np.random.default_rng(1)
    a, b = rng.random(400), rng.random(400)
    mean, se = paired_difference(a, b)
    assert mean == pytest.approx(float(np.mean(a - b)))
    assert se == pytest.approx(float(np.std(a - b, ddof=1) / np.sqrt(400)))
    assert np.isnan(paired_difference(a[:1], b[:1])[1])


def test_a_shortfall_within_noise_is_promoted_and_says_so():
    # the soak's clean day: 0.3031 against 0.3098 (bar 0.3036 at 2%), a few hundred eval users
    failed, passed = _gate(0.3031, 0.3098, (-0.0067, 0.0050))
    assert not failed
    assert any("within noise" in r and r.startswith("NDCG@100 0.3031 < champion") for r in passed), passed


def test_the_same_shortfall_measured_precisely_is_refused():
    failed, _ = _gate(0.3031, 0.3098, (-0.0067, 0.0001))  # upper bound -0.0065 < -0.0062 allowed
    assert len(failed) == 1 and "a real shortfall" in failed[0] and " < champion" in failed[0], failed


def test_noise_z_zero_compares_the_means_only():
    failed, _ = _gate(0.3031, 0.3098, (-0.0067, 0.0050), gate_noise_z=0)
    assert failed and "paired" not in failed[0]


def test_a_weak_model_is_refused_whatever_the_noise():
    # the soak's deliberately weak model (dim 2, one epoch): a third of the champion's NDCG
    failed, _ = _gate(0.1149, 0.3300, (-0.2151, 0.0100))
    assert failed and "a real shortfall" in failed[0]


def test_above_the_bar_needs_no_noise_argument():
    failed, passed = _gate(0.3100, 0.3098, (0.0002, 0.0050))
    assert not failed and not any("paired" in r for r in passed)


def _day(n: int, ndcg: float, se: float | None):
    from flows.simulate import DayRecord

    return DayRecord(day=n, date=f"2026-01-{n + 1:02d}", run_date=f"2026-01-{n + 1:02d}", outcome="pushed",
                     expected="pushed", state="COMPLETED", challenger_ndcg=ndcg, challenger_ndcg_se=se)


def _quality(records):
    from flows.simulate import _trailing_medians, pass_criteria

    _trailing_medians(records)
    return pass_criteria(records, [], 0.05, 1.96)["quality within 5% of its 7-day median on clean days"]


def test_the_soak_counts_a_low_day_within_noise_as_within_and_names_it():
    # five days at 0.30, then one at -8%: with a standard error of 0.013 that is noise
    verdict = _quality([_day(n, 0.30, 0.013) for n in range(5)] + [_day(5, 0.276, 0.013)])
    assert verdict["pass"], verdict
    assert verdict["detail"].startswith("3/3 days within, 1 of them under the band by less than 1.96 SE"), verdict


def test_the_soak_fails_a_low_day_beyond_noise():
    verdict = _quality([_day(n, 0.30, 0.002) for n in range(5)] + [_day(5, 0.276, 0.002)])
    assert not verdict["pass"] and "2026-01-06: -8.0%" in verdict["detail"], verdict
    # a record without a standard error (an older run) falls back to the band alone
    assert not _quality([_day(n, 0.30, None) for n in range(5)] + [_day(5, 0.276, None)])["pass"]
