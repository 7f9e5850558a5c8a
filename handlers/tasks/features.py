"""A tabular model's feature schema: names, order and types, validation of one row, and the encoding the network sees.

Each feature of ``preprocess.features`` is ``{"name", "type", ...}``:

* ``float`` / ``int`` / ``bool``: numbers (``int`` whole, ``bool`` true/false or 0/1), standardised with the
  training rows' ``mean`` and ``std``;
* ``category``: one of ``categories`` (the values seen in the training rows), one-hot encoded. A category the
  training rows did not have is answered, not refused: it counts as none of them (all-zero one-hot), as a
  category rarer than any seen would. On the wire a category is its name (JSON) or its index in ``categories``
  (Triton's FP32 ``FEATURES``; -1 for an unknown one).
* ``impute`` (optional, any type): the value a missing feature takes (``null`` or absent in JSON, NaN on Triton),
  learned on the training rows when the model was trained with ``--impute``; without it a missing feature is the
  request's 400.

``encode`` is the one transformation used by training and serving, so in-process and served answers agree to the
bit.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import numpy as np

from handlers.errors import InvalidInput

FEATURE_TYPES = ("float", "int", "bool", "category")
FLOAT32_MAX = float(np.finfo(np.float32).max)
USAGE = (
    'send {"features": {"name": value, ...}} or {"features": [value, ...]} for one row, '
    'or {"instances": [row, ...]} for several'
)


class FeatureSchema:
    """Feature names, order and types, their encoding, and the validation of one row against them."""

    def __init__(self, features: list[dict]):
        self.names = [str(f["name"]) for f in features]
        self.types = [str(f.get("type", "float")) for f in features]
        unknown = sorted(set(self.types) - set(FEATURE_TYPES))
        if unknown:
            raise ValueError(f"unknown feature types {unknown}; known: {list(FEATURE_TYPES)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("feature names must be unique")
        self.index = {name: i for i, name in enumerate(self.names)}
        self.mean = np.array([f.get("mean", 0.0) for f in features], dtype=np.float32)
        self.std = np.array([f.get("std", 1.0) for f in features], dtype=np.float32)
        self.categories = {i: [str(c) for c in f["categories"]] for i, f in enumerate(features) if "categories" in f}
        self.impute = {i: f["impute"] for i, f in enumerate(features) if f.get("impute") is not None}
        self._int_columns = np.flatnonzero([t == "int" for t in self.types])
        self._bool_columns = np.flatnonzero([t == "bool" for t in self.types])
        self._numeric = np.array([t != "category" for t in self.types])

    def __len__(self) -> int:
        return len(self.names)

    @property
    def width(self) -> int:
        """Columns the network takes: one per number, one per known category."""
        return int(self._numeric.sum()) + sum(len(c) for c in self.categories.values())

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Raw ``[n, n_features]`` (categories as indices) -> float32 network input: numbers standardised as
        ``(x - mean) / std``, each category one-hot in place (index -1: all zeros)."""
        x = np.asarray(x, dtype=np.float32)
        scaled = (x - self.mean) / self.std
        if not self.categories:
            return scaled
        blocks = []
        for i in range(len(self)):
            if i in self.categories:
                codes = x[:, i].astype(np.int64)
                blocks.append((codes[:, None] == np.arange(len(self.categories[i]))[None, :]).astype(np.float32))
            else:
                blocks.append(scaled[:, i : i + 1])
        return np.concatenate(blocks, axis=1)

    def row(self, row: Any) -> np.ndarray:
        """One row (named object or ordered list/array) -> validated raw float32 vector in schema order."""
        if isinstance(row, dict):
            return self._named(row)
        if isinstance(row, (list, tuple)) or (isinstance(row, np.ndarray) and row.ndim == 1):
            if len(row) != len(self):
                raise InvalidInput(f"expected {len(self)} features, got {len(row)}")
            return self._ordered(row)
        raise InvalidInput(f"a row must be an object of named features or a list of {len(self)} values; {USAGE}")

    def _named(self, row: dict) -> np.ndarray:
        unknown = [name for name in row if name not in self.index]
        missing = [n for i, n in enumerate(self.names) if row.get(n) is None and i not in self.impute]
        problems = []
        if unknown:
            problems.append(f"unknown {_feature_list(unknown)}")
        if missing:
            problems.append(f"{_feature_list(missing)} {'is' if len(missing) == 1 else 'are'} missing")
        if problems:
            raise InvalidInput("; ".join(problems))
        return self._ordered([row.get(name) for name in self.names])

    def _ordered(self, row: list | tuple | np.ndarray) -> np.ndarray:
        """Values in schema order. Floats (a row of Triton's FEATURES) and plain JSON numbers are checked as one
        array; anything else (a bool, a category's name, a missing value), or an array that fails, value by value,
        which names the culprit."""
        values = None
        if isinstance(row, np.ndarray):
            if row.dtype.kind == "f":
                values = self._checked(row)
        elif all(type(value) is float or type(value) is int for value in row):  # not bool: a subclass of int
            with contextlib.suppress(OverflowError):  # an int beyond float64: checked one by one
                values = self._checked(np.array(row, dtype=np.float64))
        if values is not None:
            return values
        items = row.tolist() if isinstance(row, np.ndarray) else row
        return np.array([self._value(i, value) for i, value in enumerate(items)], dtype=np.float32)

    def _checked(self, row: np.ndarray) -> np.ndarray | None:
        """The row as float32 if every value is valid, else None. At numpy speed, each check only where the schema has
        columns of its type: a request is often one row, so each call on a tiny array counts (``np.isin`` on no
        columns took ~20 us)."""
        if row.dtype == np.float32:
            if not np.isfinite(row).all():
                return None
            values = row
        else:  # within float32's range (NaN fails the comparison too), so the cast cannot overflow
            if not (np.abs(row) <= FLOAT32_MAX).all():
                return None
            values = row.astype(np.float32)
        return values if self._valid(row) else None

    def _valid(self, exact: np.ndarray) -> bool:
        """Whole numbers, 0/1 and category indices where the schema says so, checked on the values as sent:
        2.0000001 is no whole number, though float32 makes it 2."""
        if self._int_columns.size:
            whole = exact[self._int_columns]
            if not (whole == np.round(whole)).all():
                return False
        if self._bool_columns.size:
            flags = exact[self._bool_columns]
            if not ((flags == 0.0) | (flags == 1.0)).all():
                return False
        return all(exact[i] in range(-1, len(c)) for i, c in self.categories.items())

    def _value(self, i: int, value: Any) -> float:
        name, kind = self.names[i], self.types[i]
        if value is None or (isinstance(value, float) and math.isnan(value) and i in self.impute):
            if i not in self.impute:
                raise InvalidInput(f"feature {name!r} is missing")
            value = self.impute[i]
        if kind == "category":
            return self._category(i, value)
        if isinstance(value, (bool, np.bool_)):
            if kind != "bool":
                raise InvalidInput(f"feature {name!r} must be a number, got {_show(value)}")
            return float(value)
        if not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidInput(f"feature {name!r} must be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
            raise InvalidInput(f"feature {name!r} is NaN or infinite (or beyond the float32 range)")
        if kind == "int" and not number.is_integer():
            raise InvalidInput(f"feature {name!r} must be a whole number, got {number:g}")
        if kind == "bool" and number not in (0.0, 1.0):
            raise InvalidInput(f"feature {name!r} must be true, false, 0 or 1, got {number:g}")
        return number

    def _category(self, i: int, value: Any) -> float:
        """A category's index in ``categories``; -1 for one the training rows did not have."""
        categories = self.categories[i]
        if isinstance(value, str):
            return float(categories.index(value)) if value in categories else -1.0
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if number and -1 <= value < len(categories) and float(value).is_integer():  # range first: 10**400 is no float
            return float(value)
        raise InvalidInput(f"feature {self.names[i]!r} takes one of its categories (a string) or an index from -1 "
                           f"to {len(categories) - 1}, got {_show(value)}")  # fmt: skip


def _feature_list(names: list[str]) -> str:
    quoted = ", ".join(_show(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"feature{'s' if len(names) > 1 else ''} {quoted}"


def _show(value: Any) -> str:
    """A short, safe rendering of a client's value for an error message."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
