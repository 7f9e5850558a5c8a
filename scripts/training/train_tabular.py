"""Train a tabular classifier or regressor from a CSV file (or a bundled scikit-learn example) into an artifact.

    maas train tabular --csv data.csv --target COLUMN [--task classification|regression] [--impute]
        [--model auto|logistic|softmax|mlp|linear] [--out artifacts/NAME] [--name NAME] [--epochs 100] [--seed 0]
    maas train tabular --example breast_cancer|wine|diabetes

Every column but the target is a feature: whole numbers ("int"), other numbers ("float"), true/false ("bool"), or
text ("category": one-hot encoded with the values seen in the training rows; an unseen value at serving counts as
none of them). An empty cell is refused with its name unless ``--impute``, which fills it, and a missing feature at
serving, with the training rows' mean (median for whole numbers, most frequent value otherwise), recorded in the
manifest so serving does the same. Without ``--task``, a text target, or a whole-number
one with at most 10 distinct values, means classification. ``auto`` picks logistic regression for two classes,
softmax regression for more, and a feed-forward network (``mlp``) for regression.

The split is seeded, 20% held out (stratified for classification). Standardisation statistics are learned on
the training rows only and stored with the feature schema in ``pipeline.json``; the held-out accuracy or R^2 is
printed and stored in ``metrics``.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from torch import nn

from handlers.artifact import Manifest, write_held_out
from handlers.nets import build_module
from handlers.tasks.tabular import FeatureSchema
from scripts import ARTIFACTS_DIR, at_least
from scripts.training.common import fit, predict_logits, seed_everything, write_artifact
from scripts.training.tabular_data import EXAMPLES, Table, load_csv, load_example

# Per model family: learning rate and weight decay for scripts.training.common.fit (AdamW, cosine schedule).
OPTIMISER = {"logistic": (1e-2, 1e-3), "softmax": (1e-2, 1e-3), "linear": (1e-2, 1e-3), "mlp": (1e-3, 1e-2)}
# Strong dropout: tables here are small (hundreds of rows) and an unregularised MLP overfits them quickly.
MLP_HIDDEN, MLP_DROPOUT = [64, 64], 0.5


# ---- training -------------------------------------------------------------------------------------------
def split_table(table: Table, seed: int = 0, test_size: float = 0.2):
    """The fixed, seeded train / held-out split: ``x_train, x_test, y_train, y_test`` (raw features)."""
    stratify = table.y if table.task == "classification" else None
    return train_test_split(table.x, table.y, test_size=test_size, random_state=seed, stratify=stratify)


def learn_features(table: Table, x_train: np.ndarray, x_test: np.ndarray):
    """The feature schema, learned on the training rows only: standardisation statistics, each category feature's
    vocabulary (the test rows' codes are remapped to it; a category only they have becomes -1, unknown), and with
    ``table.impute`` the value a missing cell takes (mean, median for whole numbers, most frequent otherwise)."""
    x_train, x_test, features = x_train.copy(), x_test.copy(), []
    for j, (name, kind) in enumerate(zip(table.features, table.types, strict=True)):
        present = x_train[:, j][~np.isnan(x_train[:, j])]
        feature = {"name": name, "type": kind}
        if kind == "category":
            codes, counts = np.unique(present.astype(np.int64), return_counts=True)
            feature["categories"] = [table.categories[name][c] for c in codes]
            remap = {int(c): k for k, c in enumerate(codes)}
            for x in (x_train, x_test):
                x[:, j] = [v if np.isnan(v) else remap.get(int(v), -1) for v in x[:, j]]
            fill = feature["categories"][int(counts.argmax())]
        else:
            std = float(present.std())
            feature |= {"mean": float(present.mean()), "std": std if std > 0 else 1.0}
            values, counts = np.unique(present, return_counts=True)
            fill = {"float": float(present.mean()), "int": float(np.round(np.median(present)))}.get(
                kind, float(values[counts.argmax()]))  # fmt: skip
        features.append(feature | ({"impute": fill} if table.impute else {}))
    return features, x_train, x_test


def client_rows(schema: FeatureSchema, x: np.ndarray) -> list[list]:
    """Rows as a client sends them: numbers, category names (an index for one the training rows lacked), null."""
    return [
        [None if np.isnan(v) else schema.categories[i][int(v)] if i in schema.categories and v >= 0 else float(v)
         for i, v in enumerate(row)]
        for row in x
    ]  # fmt: skip


def model_spec(table: Table, model: str = "auto", n_inputs: int | None = None) -> tuple[str, dict]:
    """``(model family, {"architecture", "config"})`` for ``nets.build_module``; ``n_inputs``: the encoded
    width (default: one column per feature)."""
    classes = len(table.labels or [])
    if model == "auto":
        model = "mlp" if table.task == "regression" else "logistic" if classes == 2 else "softmax"
    allowed = {"classification": ("logistic", "softmax", "mlp"), "regression": ("linear", "mlp")}[table.task]
    if model not in allowed:
        raise SystemExit(f"--model {model} does not fit {table.task}; choose one of {list(allowed)}")
    if model == "logistic" and classes != 2:
        raise SystemExit(f"logistic regression needs 2 classes, the target has {classes}; use softmax or mlp")
    n_features, n_outputs = n_inputs or len(table.features), classes if table.task == "classification" else 1
    if model == "logistic":
        return model, {"architecture": "logistic_regression", "config": {"n_features": n_features}}
    hidden = MLP_HIDDEN if model == "mlp" else []
    config = {"n_features": n_features, "n_outputs": n_outputs, "hidden": hidden}
    return model, {"architecture": "feed_forward", "config": config | ({"dropout": MLP_DROPOUT} if hidden else {})}


@contextmanager
def single_thread():
    """Models this small train several times faster on one thread: more only adds synchronisation, and under
    a busy CPU (another job, a test session) torch's thread pool thrashes (measured 10x slower on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train(table: Table, out: Path, model: str = "auto", epochs: int = 100, seed: int = 0) -> Manifest:
    """Fit on the training split, score the held-out rows, write ``model.safetensors`` + ``pipeline.json``."""
    with single_thread():
        return _train(table, out, model, epochs, seed)


def _train(table: Table, out: Path, model: str, epochs: int, seed: int) -> Manifest:
    seed_everything(seed)
    model_spec(table, model)  # a model that does not fit the task is refused before any work
    x_train, x_test, y_train, y_test = split_table(table, seed)
    features, x_train, x_test = learn_features(table, x_train, x_test)
    schema = FeatureSchema(features)
    family, spec = model_spec(table, model, schema.width)
    # Through the serving path itself (validation, imputation, category lookup), as clients' rows.
    xt, xv = (torch.from_numpy(schema.encode(np.stack([schema.row(r) for r in client_rows(schema, x)])))
              for x in (x_train, x_test))  # fmt: skip
    classification = table.task == "classification"
    target = {"name": table.target}
    if classification:
        yt, loss = torch.from_numpy(y_train), nn.CrossEntropyLoss()
    else:
        target |= {"mean": float(y_train.mean()), "std": float(y_train.std()) or 1.0}
        yt, loss = torch.from_numpy((y_train - target["mean"]) / target["std"]).float()[:, None], nn.MSELoss()

    def score(m: nn.Module) -> float:
        out = predict_logits(m, xv)
        if classification:
            return float((out.argmax(1).numpy() == y_test).mean())
        return float(r2_score(y_test, out[:, 0].double().numpy() * target["std"] + target["mean"]))

    metric = "held_out_accuracy" if classification else "held_out_r2"
    network = build_module(spec["architecture"], spec["config"])
    print(f"training {family} ({spec['architecture']}) on {len(xt)} rows, holding out {len(xv)}")
    lr, weight_decay = OPTIMISER[family]
    fit(network, xt, yt, loss, epochs, lr=lr, weight_decay=weight_decay, evaluate=lambda m: f"{metric} {score(m):.4f}")
    held_out = score(network)

    out.mkdir(parents=True, exist_ok=True)
    save_file(network.state_dict(), str(out / "model.safetensors"))
    targets = [table.labels[int(y)] for y in y_test] if classification else [float(y) for y in y_test]
    write_held_out(out, client_rows(schema, x_test), targets)
    # One intra-op thread: a forward pass of ~1 us a row gains nothing from a second, which only wakes on the core
    # the server's front end needs (breast_cancer, 4 interleaved rounds: TorchServe +8% at c=1 and 16, Triton +-2%;
    # reports/ab/breast_cancer-vs-threads_1.md).
    serving = {"max_batch_size": 32, "max_rows_per_request": 32, "threads": 1}
    manifest = Manifest(
        name=table.name,
        task=f"tabular_{table.task}",
        labels=table.labels,
        model={**spec, "format": "eager", "file": "model.safetensors"},
        preprocess={"features": features, "target": target},
        serving=serving | ({"top_k": min(3, len(table.labels))} if classification else {}),
        metrics={metric: round(held_out, 4), "held_out_rows": len(xv), "train_rows": len(xt), "seed": seed},
    )
    write_artifact(out, manifest)
    print(f"{metric.replace('_', ' ')} {held_out:.4f}; artifact written to {out}")
    return manifest


def main(argv: list[str] | None = None) -> Manifest:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", type=Path, help="a CSV file with a header row")
    source.add_argument("--example", choices=sorted(EXAMPLES), help="a bundled scikit-learn data set")
    parser.add_argument("--target", help="the column to predict (with --csv)")
    parser.add_argument("--task", choices=["classification", "regression"], help="default: inferred from the target")
    parser.add_argument("--model", choices=["auto", "logistic", "softmax", "mlp", "linear"], default="auto")
    parser.add_argument("--name", help="model name on the servers (default: the CSV's or example's name)")
    parser.add_argument("--out", type=Path, help="artifact directory (default: artifacts/NAME)")
    parser.add_argument("--epochs", type=at_least(1), default=100)
    parser.add_argument("--seed", type=int, default=0)
    impute_help = "allow empty cells: fill them (and missing features at serving) from the training rows"
    parser.add_argument("--impute", action="store_true", help=impute_help)
    args = parser.parse_args(argv)
    if args.example and (args.target or args.task):
        parser.error("--target and --task go with --csv; an example knows its own")
    if args.csv:
        if not args.target:
            parser.error("--csv needs --target")
        table = load_csv(args.csv, args.target, args.task, args.name, args.impute)
        model = args.model
    else:
        table = load_example(args.example)
        table.name = args.name or table.name
        model = EXAMPLES[args.example][2] if args.model == "auto" else args.model
    return train(table, args.out or ARTIFACTS_DIR / table.name, model, args.epochs, args.seed)


if __name__ == "__main__":
    main()
