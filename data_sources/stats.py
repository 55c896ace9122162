"""Statistics of an event store: events per day, users, items, catalog churn."""
from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from infra import events


def store_stats(root: Path) -> dict:
    """Per-day counts and totals. An item is "launched" on the first day it is viewed in the store and
    "retired" after the last day it is viewed (the last day of the store retires nothing)."""
    root = events.require_event_store(root)
    days = sorted(set(events.list_days(root, "views")) | set(events.list_days(root, "clicks")))
    first_seen: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    users: set = set()
    per_day = []
    for n, day in enumerate(days):
        views = events.read_day(root, "views", day)
        clicks = events.read_day(root, "clicks", day)
        items = pc.unique(views.column("item_id")).to_pylist()
        day_users = pc.unique(views.column("user_id")).to_pylist()
        new_users = len(set(day_users) - users)
        users.update(day_users)
        launched = 0
        for item in items:
            if item not in first_seen:
                first_seen[item] = n
                launched += 1
            last_seen[item] = n
        per_day.append({"date": day.isoformat(), "views": views.num_rows, "clicks": clicks.num_rows,
                        "users": len(day_users), "new_users": new_users, "items": len(items),
                        "launched": launched if n else 0})
    retired = [0] * len(days)
    for item, last in last_seen.items():
        if last < len(days) - 1:
            retired[last + 1] += 1
    for row, r in zip(per_day, retired):
        row["retired"] = r
    return {
        "days": len(days),
        "start": days[0].isoformat() if days else None,
        "end": days[-1].isoformat() if days else None,
        "views": sum(r["views"] for r in per_day),
        "clicks": sum(r["clicks"] for r in per_day),
        "users": len(users),
        "items": len(first_seen),
        "per_day": per_day,
    }
