"""Structured pruning: remove the least important feed-forward neurons of every transformer layer, then a short
distillation from the unpruned model to recover.

    maas compress prune ARTIFACT --keep 0.5 [--out DIR] [--epochs 1] [--calibration-texts 512] [...distill's options]

Why feed-forward neurons: they hold two thirds of a BERT layer's weights and multiply-adds (MiniLM: 1,536 neurons
against a hidden size of 384), and removing whole neurons shrinks two dense matrices, so the pruned model is a
smaller dense model that any runtime speeds up (no sparse kernels needed). The same fraction is kept in every
layer, so the result is an ordinary checkpoint with a smaller ``intermediate_size``, exported and served as any.

Importance of neuron j (each layer): its mean absolute activation (after the activation function, over the
non-padding tokens of ``--calibration-texts`` training texts) times the L2 norm of its output weights: how much it
adds to the layer's output on real inputs. The lowest are removed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from handlers.tasks import text
from scripts import ARTIFACTS_DIR
from scripts.compression import kd
from scripts.compression.distill import add_common_arguments
from scripts.compression.kd import CompressionError


def feed_forward_pairs(model) -> list[tuple[object, str, str]]:
    """Per layer: (the layer module, its up-projection's attribute path, its down-projection's)."""
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or not hasattr(layers[0], "intermediate"):
        raise CompressionError(f"{type(model).__name__}: pruning takes BERT-style encoders (encoder.layer[i]."
                               "intermediate / .output)")  # fmt: skip
    return [(layer, "intermediate.dense", "output.dense") for layer in layers]


def neuron_importance(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 32) -> list[torch.Tensor]:
    """Per layer, each feed-forward neuron's importance (module docstring)."""
    pairs = feed_forward_pairs(model)
    sums = [torch.zeros(layer.get_submodule(down).in_features) for layer, _, down in pairs]
    mask: list[torch.Tensor] = []

    def hook(index):
        def record(module, inputs):  # the down-projection's input: the neurons' activations
            sums[index] += (inputs[0].abs() * mask[0].unsqueeze(-1)).sum(dim=(0, 1))

        return record

    handles = [layer.get_submodule(down).register_forward_pre_hook(hook(i)) for i, (layer, _, down) in enumerate(pairs)]
    tokens = 0
    try:
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True,
                                  return_tensors="pt")  # fmt: skip
                mask[:] = [batch["attention_mask"].float()]
                model(**batch)
                tokens += int(batch["attention_mask"].sum())
    finally:
        for handle in handles:
            handle.remove()
    return [
        s / tokens * layer.get_submodule(down).weight.norm(dim=0)
        for s, (layer, _, down) in zip(sums, pairs, strict=True)
    ]


def prune_feed_forward(model, importance: list[torch.Tensor], keep: float) -> int:
    """Keep the ``keep`` fraction of neurons with the highest importance in every layer; return how many."""
    pairs = feed_forward_pairs(model)
    width = pairs[0][0].get_submodule(pairs[0][2]).in_features
    if not 0 < keep < 1:
        raise CompressionError(f"--keep must be between 0 and 1 (a fraction of the {width} neurons), not {keep}")
    kept = max(1, round(width * keep))
    with torch.no_grad():
        for (layer, up_path, down_path), scores in zip(pairs, importance, strict=True):
            index = torch.sort(torch.topk(scores, kept).indices).values
            up, down = layer.get_submodule(up_path), layer.get_submodule(down_path)
            new_up = torch.nn.Linear(up.in_features, kept)
            new_up.weight.copy_(up.weight[index])
            new_up.bias.copy_(up.bias[index])
            new_down = torch.nn.Linear(kept, down.out_features)
            new_down.weight.copy_(down.weight[:, index])
            new_down.bias.copy_(down.bias)
            set_submodule(layer, up_path, new_up)
            set_submodule(layer, down_path, new_down)
    model.config.intermediate_size = kept
    return kept


def set_submodule(root, path: str, module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def prune(artifact: Path, keep: float, out: Path, epochs: int = 1, lr: float = 5e-5, seed: int = 0,
          data: Path | None = None, text_column: str = "text", train_size: int | None = None,
          max_accuracy_drop: float = kd.MAX_ACCURACY_DROP, calibration_texts: int = 512):  # fmt: skip
    manifest, teacher, tokenizer = kd.load_teacher(artifact)
    _, student, _ = kd.load_teacher(artifact)  # a second copy, pruned in place
    max_length = text.max_length(manifest)
    texts = kd.training_texts(manifest, data, text_column, train_size)
    importance = neuron_importance(student, tokenizer, texts[:calibration_texts], max_length)
    width = len(importance[0])
    kept = prune_feed_forward(student, importance, keep)
    print(f"pruned {artifact.name}: {kept} of {width} feed-forward neurons kept in each of {len(importance)} "
          f"layers; recovering with {epochs} epoch(s) of distillation on {len(texts)} texts")  # fmt: skip
    method = {"method": "feed-forward pruning", "teacher": artifact.name, "kept_neurons": kept, "of_neurons": width,
              "importance": "mean |activation| x output-weight L2 norm"}  # fmt: skip
    return kd.teach_and_write(teacher, student, tokenizer, artifact, manifest, out, method, texts, epochs, lr, seed,
                              data, max_accuracy_drop)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--keep", type=float, required=True, help="fraction of feed-forward neurons kept, e.g. 0.5")
    parser.add_argument("--out", type=Path, help="default: artifacts/<name>-ffn<percent>")
    parser.add_argument("--calibration-texts", type=int, default=512, help="texts the importance is measured on")
    add_common_arguments(parser, epochs=1, lr=5e-5)
    args = parser.parse_args(argv)
    out = args.out or ARTIFACTS_DIR / f"{args.artifact.name}-ffn{round(args.keep * 100)}"
    try:
        prune(args.artifact, args.keep, out, args.epochs, args.lr, args.seed, args.data, args.text_column,
              args.train_size, args.max_accuracy_drop, args.calibration_texts)  # fmt: skip
    except CompressionError as exc:
        raise SystemExit(f"maas compress prune: {exc}") from None


if __name__ == "__main__":
    main()
