"""Task: validate the window's events with Great Expectations (data_checks.runner)."""
from __future__ import annotations

from dataclasses import dataclass, field

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from data_checks.runner import validate_window
from infra.settings import Settings
from tasks.common import run_dir


class ValidationFailed(Exception):
    """The day's data failed its expectations: the run stops before training."""


def _summary(result) -> str:
    lines = [f"**{'passed' if result.success else 'FAILED'}**: {len(result.checks)} checks over "
             f"{result.window[0]} .. {result.window[1]}, {len(result.failed)} failed.", ""]
    if result.quarantined:  # left out of validation and training (led validate --quarantine)
        lines += ["Quarantined, not trained on: "
                  + "; ".join(f"{d} ({why})" for d, why in result.quarantined.items()), ""]
    if result.failed:
        lines += ["| check | kind | column | unexpected | examples |", "|---|---|---|---|---|"]
        for c in result.failed:
            lines.append(f"| {c.check} | {c.kind or '-'} | {c.column or '-'} | {c.unexpected_count} | "
                         f"{', '.join(map(str, c.examples[:3]))} |")
    if result.report_path:
        lines += ["", f"Data Docs: `{result.report_path}`"]
    return "\n".join(lines)


@dataclass(frozen=True)
class ValidationReport:
    """A passed validation: how many checks, the Data Docs page, the summary the daily report embeds."""

    checks: int
    report_path: str | None
    seconds: float
    summary_md: str
    quarantined: dict = field(default_factory=dict)


@task(name="validate", cache_policy=NO_CACHE)
def validate_events(settings: Settings, run_date: str) -> ValidationReport:
    """Raise ``ValidationFailed`` (the run stops, nothing trained or pushed) when any check fails."""
    report_dir = run_dir(settings, run_date) / "validation"
    result = validate_window(settings.events_dir, run_date, settings.window_days, settings, report_dir)
    create_markdown_artifact(key="validation", markdown=f"# Validation {run_date}\n\n{_summary(result)}",
                             description=f"data validation for {run_date}")
    if not result.success:
        raise ValidationFailed(f"validation failed for {run_date}: {', '.join(result.failed_checks)} "
                               f"(report: {result.report_path}; to train without the failed days: "
                               f"led validate --date {run_date} --quarantine)")
    return ValidationReport(len(result.checks), result.report_path, result.seconds, _summary(result),
                            dict(result.quarantined or {}))
