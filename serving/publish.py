"""Index + blue/green push of an exported model: what ``led push`` and the pipeline's push task call.

``publish_model(model_dir, settings)`` builds the Annoy index (measuring ANN
recall@100 against exact scoring, see ``serving.index``), refuses an index
below ``settings.min_ann_recall`` (``IndexRejected``, nothing uploaded), then
writes the idle slot, verifies it and flips ACTIVE (``serving.storage``).
The returned dict holds ``slot``, ``model_version`` and ``ann_recall`` (plus
the index report) so the MLflow stage can log them.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from serving.index import INDEX_FILE, build_and_measure
from serving.storage import SLOT_ARTIFACTS, BlueGreenStore, model_version_of, push_slot


class IndexRejected(Exception):
    """The built index's measured recall is below the floor; ``result`` says by how much."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


def _single_threaded_blas():
    # Many tiny mat-vecs: multi-threaded OpenBLAS was 20x slower on this shared 2-core box.
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:
        return nullcontext()


@dataclass(frozen=True)
class SlotBuild:
    """What a push uploads: the files of a slot and its manifest body (index parameters, ANN recall)."""

    files: dict[str, Path]
    manifest: dict

    @property
    def ann_recall(self) -> float:
        return float(self.manifest["ann_recall"])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])


def build_slot_files(model_dir: Path, work_dir: Path, n_trees: int, search_k: int,
                     min_recall: float, seed: int = 42, model_version: str | None = None) -> SlotBuild:
    """Build the index next to the model arrays. ``model_version``: the name served (the registry's
    version); default ``model_version_of`` the export (its card's, else its fingerprint)."""
    from models.export import load_model

    model = load_model(model_dir)
    with _single_threaded_blas():
        built = build_and_measure(model, work_dir, n_trees, search_k, min_recall, seed=seed)
    files = {name: Path(model_dir) / name for name in SLOT_ARTIFACTS}
    files[INDEX_FILE] = built.path
    manifest = {
        "format": 1,
        "model_version": str(model_version or model_version_of(model_dir, model.card)),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "items": len(model.item_ids),
        "index": built.params.to_json(),
        "ann_recall": round(built.recall, 5),
        "ann_report": built.report,
        "model_card": model.card,
    }
    return SlotBuild(files, manifest)


def publish_model(model_dir: Path, settings, store: BlueGreenStore | None = None,
                  before_verify: Callable[[str], None] | None = None) -> dict:
    """Index + verified blue/green push. Raises ``IndexRejected`` (nothing pushed) below the recall floor."""
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="led-push-"))
    try:
        slot = build_slot_files(Path(model_dir), work, settings.n_trees, settings.search_k,
                                settings.min_ann_recall, settings.seed)
        files, manifest = slot.files, slot.manifest
        summary = {"model_version": manifest["model_version"], "ann_recall": manifest["ann_recall"],
                   "min_ann_recall": settings.min_ann_recall, "n_trees": settings.n_trees,
                   "search_k": settings.search_k, "bias_scale": manifest["index"]["bias_scale"],
                   "items": manifest["items"], "dim": manifest["index"]["dim"],
                   "small_search_k": manifest["index"]["small_search_k"],
                   "recall_timelines": manifest["ann_report"]["timeline_source"],
                   "ann_report": manifest["ann_report"],  # every scale / search_k tried, for MLflow
                   "index_seconds": round(time.time() - started, 3)}
        if manifest["ann_recall"] < settings.min_ann_recall:
            raise IndexRejected(
                f"ANN recall@100 {manifest['ann_recall']:.4f} < min_ann_recall {settings.min_ann_recall} "
                f"(n_trees={settings.n_trees}, search_k={settings.search_k}): raise search_k or n_trees",
                {"pushed": False, "slot": None, **summary})
        store = store or BlueGreenStore.from_settings(settings)
        pushed = push_slot(store, files, manifest, before_verify=before_verify)
        return {"pushed": True, **pushed.as_dict(), **summary, "seconds": round(time.time() - started, 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
