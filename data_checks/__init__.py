"""Data validation gate (Great Expectations 1.x on pandas).

Public API (pure code, no Prefect; the daily flow's validate task calls it)::

    from data_checks.runner import validate_window
    result = validate_window(events_dir, run_date, window_days, settings=settings, report_dir=run_dir)
    result.success            # False -> stop the run: nothing trained or pushed
    result.failed             # [CheckResult(check, kind, column, days, unexpected_count, examples, ...)]
    result.failure_table()    # readable table of the failures
    result.to_dict()          # JSON-ready; also saved as run_dir/validation/result.json
    result.report_path        # run_dir/validation/index.html (GX Data Docs)

``suites`` holds the versioned expectation suites, ``stats`` the per-day
statistics the window-level suite checks, ``runner`` the orchestration.
"""
