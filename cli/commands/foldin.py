"""``led foldin``: give the items launched since the live model's training vectors, and publish the
enlarged catalog as a new blue/green slot (docs/architecture.md, "Fold-in of new items").

    ACTIVE slot (S3) → live export + its pre-training (W) → views of [end of pre-training, D)
      → fold-in (models/foldin.py) → register (tag foldin_of) → index + ANN-recall floor
      → sanity checks → verified blue/green push

The enlarged model is the same trained model plus items, so it skips the gate's comparison of
trainings; the recall floor and the sanity checks still apply. The champion alias stays on the
trained version: the next daily run is judged against a training and replaces the fold-in slot.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "foldin", help="fold the items launched since the live model's training into it and push it",
        description="Read the live model from the ACTIVE blue/green slot and its pre-training (which must "
        "hold W), give every item with at least min_count co-occurrences with embedded items in the views "
        "since the pre-training's last day (up to D, excluded) a vector (e = rownorm(m W), v = e P) and a "
        "bias, register the enlarged model in MLflow (tag foldin_of=<trained version>), build its index "
        "(ANN-recall floor), run the sanity checks and push it blue/green. Exit 0 when pushed or when there "
        "is nothing to fold in, 1 when refused (recall floor, sanity checks, the live model changed), 2 for "
        "user mistakes (no live model, pre-training without W...).")
    p.add_argument("--date", help="D, YYYY-MM-DD: views up to D (excluded); default today (UTC)")
    p.add_argument("--events", type=Path, help="event store (default: settings events_dir)")
    p.add_argument("--min-count", type=int, help="override settings.min_count (co-occurrences with embedded items)")
    p.set_defaults(func=run)


def run(args) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from cli.common import emit, log
    from infra import events
    from infra.errors import UserError
    from infra.settings import get_settings
    from models.foldin import FoldinError

    settings = get_settings().with_overrides(events_dir=args.events, min_count=args.min_count)
    day = events.parse_date(args.date) if args.date else dt.datetime.now(dt.timezone.utc).date()
    events.require_event_store(settings.events_dir)
    try:
        return _fold_in(settings, day, emit, log)
    except FoldinError as exc:
        raise UserError(str(exc)) from None
    except (BotoCoreError, ClientError) as exc:
        raise UserError(f"S3 store {settings.s3_endpoint_url or 'AWS'} / {settings.s3_bucket}: {exc}") from None


def _fold_in(settings, day: dt.date, emit, log) -> int:
    import shutil

    from infra import events
    from models.export import save_model
    from serving.storage import BlueGreenStore

    store = BlueGreenStore.from_settings(settings)
    work = settings.work_dir / "foldin" / day.isoformat()
    shutil.rmtree(work, ignore_errors=True)
    active, live = _live_model(store, work / "live", log)
    emb, start, end = _pretraining(settings, live, active.model_version)
    if day <= end:
        return _nothing(emit, log, day, active, f"D={day} is not after the pre-training's last day {end}")
    views = events.read_window(settings.events_dir, "views", day, (day - end).days)
    if views.num_rows == 0:
        return _nothing(emit, log, day, active, f"no views in [{end}, {day})")
    result, cfg = _compute(settings, live, emb, views, start, end, day, log)
    if not result.items:
        return _nothing(emit, log, day, active, f"no new item has {cfg.min_count}+ co-occurrences "
                        f"with embedded items in [{end}, {day})", result.stats)
    from models.foldin import foldin_card

    source = str((live.card.get("foldin") or {}).get("source_model_version", active.model_version))
    card = foldin_card(live.card, result, source, end, day, cfg)
    model_dir = save_model(work / "model", result.model.item_ids, result.model.V, result.model.b,
                           result.model.counts, card, result.model.eval_timelines)
    log(f"[foldin] {len(result.items)} item(s) folded into version {source}: {model_dir}")
    return _publish(settings, store, active, model_dir, source, day, result, emit, log)


def _live_model(store, dest: Path, log):
    """(ACTIVE, the live export downloaded from its verified slot)."""
    from infra.errors import UserError
    from models.export import load_model
    from serving.storage import StorageError

    active = store.read_active()
    if active is None:
        raise UserError(f"no live model: {store.url} has no ACTIVE (run `led run` first)")
    try:
        store.download_slot(active.slot, dest, active.manifest_sha256)
    except StorageError as exc:
        raise UserError(f"live slot {active.slot} of {store.url}: {exc}") from None
    log(f"[foldin] live model: version {active.model_version} (slot {active.slot})")
    return active, load_model(dest)


def _pretraining(settings, live, version: str):
    """(embeddings with W, first day, day after the last) of the live model's pre-training."""
    from infra.errors import UserError
    from models.foldin import FoldinError
    from models.pretrain import Embeddings
    from tasks.common import local_stage

    pre = live.card.get("pretrain") or {}
    if not pre.get("path") or not pre.get("end"):
        raise UserError(f"the card of live version {version} names no pre-training folder (trained before "
                        "fold-in existed): retrain with `led run` first")
    try:
        folder = local_stage(settings, pre["path"])
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(f"pre-training of version {version}: {exc}") from None
    if not Path(folder).is_dir():
        raise UserError(f"pre-training folder of version {version} is gone: {folder}")
    emb = Embeddings.load(Path(folder))
    if not emb.can_fold_in:
        raise FoldinError(f"pre-training {folder} of version {version} has no W (written before fold-in "
                          "existed): retrain with `led run` first")
    return emb, dt.date.fromisoformat(pre["start"]), dt.date.fromisoformat(pre["end"])


def _compute(settings, live, emb, views, start: dt.date, end: dt.date, day: dt.date, log):
    from models.foldin import fold_in
    from models.pretrain import PretrainConfig

    days = (day - end).days
    log(f"[foldin] views of [{end}, {day}): {views.num_rows} rows over {days} day(s)")
    cfg = PretrainConfig.from_settings(settings)
    result = fold_in(live, emb, views, cfg, days_since=days, train_days=(end - start).days)
    s = result.stats
    log(f"[foldin] {s['new_items_seen']} new item(s) seen: {s['folded_in']} folded in, "
        f"{s['below_min_count']} below min_count={cfg.min_count}, {s['no_positive_pmi']} without positive PMI")
    return result, cfg


def _nothing(emit, log, day, active, reason: str, stats: dict | None = None) -> int:
    log(f"[foldin] nothing to fold in: {reason}")
    emit({"date": day.isoformat(), "pushed": False, "folded_in": 0, "live_version": active.model_version,
          "reason": reason, **(stats or {})})
    return 0


def _register(settings, model_dir: Path, day: dt.date, source: str, folded: int):
    """The enlarged model's MLflow version (reused for byte-identical arrays), tagged ``foldin_of``."""
    from models.foldin import FOLDIN_OF_TAG
    from models.registration import find_registered, register_export

    return find_registered(settings, model_dir, day) or register_export(
        settings, model_dir, day, params={"foldin_items": folded}, tags={FOLDIN_OF_TAG: source})


def _checks(settings, registered, slot, result) -> tuple[list[str], list[str]]:
    """The gate's sanity checks against the trained model (no comparison of trainings), recorded on
    the version like a gate decision."""
    from infra import registry
    from models.gate import sanity_checks

    failed, passed = sanity_checks(settings, result.model, result.base, slot.ann_recall, name="fold-in")
    client = registry.connect(settings)
    client.log_metric(registered.run_id, "ann_recall", slot.ann_recall)
    registry.record_decision(client, settings.mlflow_model_name, registered.model_version, registered.run_id,
                             {registry.DECISION_TAG: "rejected" if failed else "folded-in",
                              registry.REASONS_TAG: " | ".join(failed or passed)}, {})
    return failed, passed


def _publish(settings, store, active, model_dir: Path, source: str, day: dt.date, result, emit, log) -> int:
    """Register, index (recall floor), sanity-check and push the enlarged model."""
    import tempfile

    from serving.publish import build_slot_files
    from serving.storage import push_slot

    registered = _register(settings, model_dir, day, source, len(result.items))
    log(f"[foldin] registered version {registered.model_version} (fold-in of {source})")
    summary = {"date": day.isoformat(), "model_version": registered.model_version, "foldin_of": source,
               "folded_in": len(result.items), "items": len(result.model.item_ids), **result.stats}
    if active.model_version == registered.model_version:  # a rerun of a fold-in that is live already
        log(f"[foldin] version {registered.model_version} is already live in slot {active.slot}")
        emit({"pushed": False, "already_live": True, **summary})
        return 0
    with tempfile.TemporaryDirectory(prefix="led-foldin-") as tmp:
        slot = build_slot_files(model_dir, Path(tmp), settings.n_trees, settings.search_k,
                                settings.min_ann_recall, settings.seed, model_version=registered.model_version)
        failed, passed = _checks(settings, registered, slot, result)
        summary |= {"ann_recall": slot.ann_recall, "reasons": failed or passed}
        if failed:
            log(f"[foldin] refused: {'; '.join(failed)}")
            emit({"pushed": False, **summary})
            return 1
        now = store.read_active()
        if now is None or now.model_version != active.model_version:
            log(f"[foldin] refused: the live model changed meanwhile ({active.model_version} -> "
                f"{now.model_version if now else None}); fold into the new one")
            emit({"pushed": False, **summary})
            return 1
        pushed = push_slot(store, slot.files, slot.manifest)
    log(f"[foldin] version {registered.model_version} is live in slot {pushed.slot} "
        f"(ANN recall@100 {slot.ann_recall:.4f})")
    emit({"pushed": True, **summary, **pushed.as_dict()})
    return 0
