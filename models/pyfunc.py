"""The exported LED model as an MLflow pyfunc (numpy only: TensorFlow is never needed to load it).

Logged with *models-from-code*: MLflow stores this file (not a pickle) and runs
it at load time; ``set_model`` below tells MLflow which object to use. The
``models`` package itself travels with the model through ``code_paths``, so
``mlflow.pyfunc.load_model("models:/NAME@champion")`` and ``mlflow models
serve`` work in any environment that has numpy, pandas and mlflow.

The exported folder (``models/export.py``: item_ids.npy, V.npy, b.npy,
counts.npy, model_card.json) is the model's only artifact, under the key
``exported``. Scores are exactly ``ExportedModel.exact_topk``: the input items
are excluded, an all-unknown timeline falls back to popularity.

Input: a DataFrame with an ``items`` column (one timeline of item ids per row;
a list of lists or a dict with ``items`` is accepted too). Output: a DataFrame
with ``item_ids`` (top-k ids, best first) and ``scores`` per row. Parameter
``k`` (default 10).
"""
from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd

from models.export import ExportedModel, load_model

ARTIFACT_KEY = "exported"
DEFAULT_K = 10
MAX_K = 10_000


def _timelines(model_input: Any) -> list[list[str]]:
    """Accept a DataFrame with ``items``, a dict ``{"items": [...]}`` or a plain list of timelines."""
    if isinstance(model_input, pd.DataFrame):
        if "items" not in model_input.columns:
            raise ValueError(f"input needs an 'items' column, got {list(model_input.columns)}")
        rows = model_input["items"].tolist()
    elif isinstance(model_input, dict) and "items" in model_input:
        rows = model_input["items"]
    else:
        rows = list(model_input)
    out = []
    for row in rows:
        if row is None or (isinstance(row, float) and np.isnan(row)):
            row = []
        elif isinstance(row, (str, bytes)):
            row = [row]
        out.append([str(item) for item in row])
    return out


def predict_topk(model: ExportedModel, timelines: list[list[str]], k: int) -> pd.DataFrame:
    """Top-k ids and scores per timeline (the same ranking as ``ExportedModel.exact_topk``)."""
    if not 1 <= int(k) <= MAX_K:
        raise ValueError(f"k must be in [1, {MAX_K}], got {k}")
    ids, scores = [], []
    for timeline in timelines:
        top, top_scores = model.exact_topk(timeline, int(k))
        ids.append(top)
        scores.append([float(s) for s in top_scores])
    return pd.DataFrame({"item_ids": ids, "scores": scores})


class LedPyfuncModel(mlflow.pyfunc.PythonModel):
    """Scores timelines with the exported arrays ``q = mean(V_x)``, ``score = q . V + b``.

    ``model_input`` is annotated ``pd.DataFrame``, a hint MLflow does not turn
    into its own schema: the explicit :func:`signature` (list-of-strings column
    and the ``k`` parameter) stays the contract.
    """

    def load_context(self, context) -> None:
        self.model = load_model(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", DEFAULT_K))
        return predict_topk(self.model, _timelines(model_input), k)


def signature():
    """Input ``items: list[str]``, output ``item_ids: list[str]``, ``scores: list[float]``, param ``k``."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(Array(DataType.string), "items")])
    outputs = Schema([ColSpec(Array(DataType.string), "item_ids"), ColSpec(Array(DataType.double), "scores")])
    params = ParamSchema([ParamSpec("k", DataType.long, DEFAULT_K)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


# Models-from-code: MLflow executes this file when loading and takes the object given here.
mlflow.models.set_model(LedPyfuncModel())
