"""Tables to train on: a CSV file read into features and a target (types, categories and the task inferred), or one
of scikit-learn's bundled example sets (``maas train tabular``, ``scripts/training/train_tabular.py``)."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn import datasets

MAX_CLASSES_INFERRED = 10  # a whole-number target with more distinct values is taken for a quantity
EXAMPLES = {  # name -> (loader, task, model)
    "breast_cancer": (datasets.load_breast_cancer, "classification", "logistic"),
    "wine": (datasets.load_wine, "classification", "mlp"),
    "diabetes": (lambda: datasets.load_diabetes(scaled=False), "regression", "mlp"),
}


@dataclass
class Table:
    """A numeric table ready to train on: raw features, and class indices or target values."""

    name: str
    task: str  # "classification" | "regression"
    features: list[str]
    types: list[str]  # "float" | "int" | "bool", per feature
    x: np.ndarray  # [rows, features] float64, raw
    y: np.ndarray  # class index (int64) or value (float64) per row
    target: str
    labels: list[str] | None = None  # class names, indexed by y
    categories: dict[str, list[str]] = field(default_factory=dict)  # text features: x holds codes into these
    impute: bool = False  # missing cells (NaN in x) are allowed and imputed with training statistics


def load_csv(path: Path, target: str, task: str | None = None, name: str | None = None, impute: bool = False) -> Table:
    """Read a CSV with a header row. Text columns become category features; an empty cell is refused (naming it)
    unless ``impute``; an absent or empty target is always refused."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        rows = [r for r in reader if any(cell.strip() for cell in r)]
    if target not in header:
        raise SystemExit(f"{path}: no column {target!r}; columns: {header}")
    if not rows:
        raise SystemExit(f"{path}: no data rows")
    columns = {h: [] for h in header}
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise SystemExit(f"{path}:{line}: {len(row)} cells, expected {len(header)}")
        for h, cell in zip(header, row, strict=True):
            if not cell.strip() and (h == target or not impute):
                hint = "" if h == target else ", or train with --impute"
                raise SystemExit(f"{path}:{line}: column {h!r} is empty; fill or drop missing values first{hint}")
            columns[h].append(cell.strip() or None)
    features = [h for h in header if h != target]
    types = {h: _column_type([v for v in columns[h] if v is not None]) or "category" for h in features}
    empty = [h for h in features if all(v is None for v in columns[h])]
    if empty:
        raise SystemExit(f"{path}: column {empty[0]!r} has no values")
    categories = {h: sorted({v for v in columns[h] if v is not None}) for h in features if types[h] == "category"}
    x = np.array([[_cell(v, categories.get(h)) for v in columns[h]] for h in features], dtype=np.float64).T
    task = task or _infer_task(columns[target])
    print(f"{path}: {len(rows)} rows, {len(features)} features ({len(categories)} categorical), target {target!r} "
          f"-> {task}")  # fmt: skip
    values, labels = columns[target], None
    if task == "regression":
        if _column_type(values) not in ("int", "float"):
            raise SystemExit(f"{path}: regression needs a numeric target; {target!r} is not")
        y = np.array([float(v) for v in values])
    else:
        labels = sorted(set(values), key=_label_order(values))
        y = np.array([labels.index(v) for v in values], dtype=np.int64)
    name = name or _model_name(path.stem)
    return Table(name, task, features, [types[h] for h in features], x, y, target, labels, categories, impute)


def _cell(value: str | None, categories: list[str] | None) -> float:
    if value is None:
        return math.nan
    return float(categories.index(value)) if categories is not None else _number(value)


def load_example(name: str) -> Table:
    """One of scikit-learn's bundled data sets, as a ``Table`` (class names from its ``target_names``)."""
    loader, task, _ = EXAMPLES[name]
    data = loader()
    features = [str(f) for f in data.feature_names]
    labels = [str(t) for t in data.target_names] if task == "classification" else None
    y = data.target.astype(np.int64 if labels else np.float64)
    return Table(name, task, features, ["float"] * len(features), data.data.astype(np.float64), y, "target", labels)


def _column_type(values: list[str]) -> str | None:
    if all(v.lower() in ("true", "false") for v in values):
        return "bool"
    numbers = [_number(v) for v in values]
    if any(n is None or not np.isfinite(n) for n in numbers):
        return None
    return "int" if all(re.fullmatch(r"[+-]?\d+", v) for v in values) else "float"


def _number(value: str) -> float | None:
    if value.lower() in ("true", "false"):
        return float(value.lower() == "true")
    try:
        return float(value)
    except ValueError:
        return None


def _infer_task(target: list[str]) -> str:
    kind = _column_type(target)
    whole = kind in ("int", "bool")
    return "classification" if kind is None or (whole and len(set(target)) <= MAX_CLASSES_INFERRED) else "regression"


def _label_order(values: list[str]):
    """Numeric labels sort as numbers (2 before 10), others as text."""
    numeric = _column_type(values) in ("int", "float")
    return (lambda v: (float(v), v)) if numeric else str


def _model_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "tabular"
