"""``led validate``: the data validation gate on one window of the event store."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Validate the window [DATE-W, DATE) of an event store with the Great Expectations
suites of data_checks/: per-day schema, ids, timestamps, duplicates, volume against
the trailing 7-day median, new items, clicks on never-viewed items; and traffic that
is well-formed but wrong, against the trailing 7 days: near-duplicates (same user and
item within near_duplicate_seconds), the share of the top users and top items, events
per active user, the item and user-activity distributions (PSI), clicks per view.

Exit codes:
  0  every check passed (quarantined days left out, listed in the JSON)
  1  the data failed: a table of failed checks is printed, then the JSON line
  2  unusable arguments: the store does not exist or is not an event store, the date
     is not YYYY-MM-DD, the window is < 1 day, or no views/clicks partition exists in
     the window at all (a wrong date, not bad data). An existing but empty partition,
     or a missing day inside a store that has data, is a data failure (exit 1).

Quarantine: --quarantine sets every day named by a failed check aside (both kinds; listed
with the reason in EVENTS/quarantine.json, data left on disk), then validates again
without them: exit 0 means the next daily run can train, without those days, and its
report says so. After repairing a day, --release DAY puts it back in every window.

Volume, empty-day, new-item and the trailing-day traffic checks apply to a day only when
it has >= 3 trailing days whose median of daily active users is >= volume_min_active_users
(settings); on smaller traffic a single user swings a day several-fold. Thresholds:
`led config`.

The last stdout line is JSON: success, failed_expectations, quarantined, report_path."""


def register(sub) -> None:
    p = sub.add_parser("validate", help="validate a window of the event store (Great Expectations)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", metavar="DIR", help="event store (default: settings events_dir)")
    p.add_argument("--date", required=True, metavar="D", help="run date D (YYYY-MM-DD); days before D are checked")
    p.add_argument("--window", type=int, metavar="W", help="window length in days (default: settings window_days)")
    p.add_argument("--report-dir", metavar="DIR",
                   help="folder for the report (Data Docs + result.json under DIR/validation/); "
                        "default: WORK_DIR/reports/validate-D")
    p.add_argument("--quarantine", action="store_true",
                   help="set the failed days aside (every window reader skips them) and validate again")
    p.add_argument("--release", metavar="DAYS", default="",
                   help="comma-separated days to take out of quarantine before validating (after a repair)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from cli.common import emit, log
    from data_checks.runner import quarantine_reasons, validate_window
    from infra import events as store
    from infra.settings import get_settings

    settings = get_settings()
    day = store.parse_date(args.date)
    events = Path(args.events) if args.events else settings.events_dir
    report_dir = Path(args.report_dir) if args.report_dir else settings.work_dir / "reports" / f"validate-{day}"
    store.require_event_store(events)
    window = settings.window_days if args.window is None else args.window
    store.window_dates(day, window)  # rejects a window < 1 before any work
    release = [store.parse_date(d.strip()) for d in args.release.split(",") if d.strip()]
    if release:
        store.update_quarantine(events, release=release)
        log(f"[validate] released from quarantine: {', '.join(map(str, release))}")
    log(f"[validate] {events}: window of {window} days before {day}")
    result = validate_window(events, day, window, settings=settings, report_dir=report_dir)
    newly = quarantine_reasons(result) if args.quarantine and not result.success else {}
    if newly:
        print(result.failure_table())
        store.update_quarantine(events, add=newly)
        log(f"[validate] quarantined {', '.join(map(str, sorted(newly)))}; validating again without them")
        result = validate_window(events, day, window, settings=settings, report_dir=report_dir)
    if not result.success:
        print(result.failure_table())
    if result.quarantined:
        log(f"[validate] left out (quarantined): {', '.join(result.quarantined)}")
    log(f"[validate] {'passed' if result.success else 'FAILED'}: {len(result.checks)} checks, "
        f"{len(result.failed)} failed, {result.seconds:.1f}s; report {result.report_path}")
    emit({
        "success": result.success,
        "failed_expectations": result.failed_checks,
        "report_path": result.report_path,
        "run_date": result.run_date,
        "window": result.window,
        "checks": len(result.checks),
        "failed": [{"check": c.check, "kind": c.kind, "column": c.column, "days": c.days,
                    "unexpected_count": c.unexpected_count} for c in result.failed],
        "quarantined": result.quarantined,
        "newly_quarantined": sorted(d.isoformat() for d in newly),
        "seconds": result.seconds,
    })
    return 0 if result.success else 1
