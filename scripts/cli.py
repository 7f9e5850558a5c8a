"""``maas``: one command for the whole path from a trained model to both servers.

    maas train digits|text|image|tabular ...   train an example or your own model into an artifact
    maas import hf DIR --out ARTIFACT    import a Hugging Face sequence-classification checkpoint
    maas import torchscript|onnx FILE    import an image classifier (--labels, --input-size, --mean/--std ...)
    maas compress distill ARTIFACT --layers K   a student with K transformer layers, taught by the model
    maas compress prune ARTIFACT --keep F       keep a fraction F of each layer's feed-forward neurons
    maas export ARTIFACT --format F      export: torchscript | onnx | onnx_int8[_static]
    maas build ARTIFACT [...]            package for TorchServe (model_store/) and Triton (model_repository/)
    maas check ARTIFACT --input FILE...  requests through both servers' handlers in process, side by side
    maas serve start|stop torchserve|triton|both
    maas serve status [--json]           deep health: a real inference per model on each server (a k8s probe)
    maas soak --requests N --kill-every K   load both servers, kill workers/stubs, count lost and wrong answers
    maas deploy kserve ARTIFACT... --storage-uri URI   KServe storage layouts + InferenceService manifests
    maas deploy check DIR                re-validate them (kserve SDK models) after an edit
    maas samples                         send sample requests to the running servers
    maas bench serving|formats|int8      the benchmarks (reports/)
    maas bench profile                   py-spy on each server's worker under wrk load (reports/profile/)
    maas bench ab --a KEY=V [--b KEY=V]  two serving settings served at once, measured interleaved (reports/ab/)
    maas bench compression               a model and its compressed students: size, accuracy, speed (reports/)

``maas COMMAND --help`` shows each command's options and an example. Each command is the ``main`` of a module
under ``scripts/`` (``python -m scripts.X`` runs the same code).
"""

from __future__ import annotations

import importlib
import sys

# command words -> the module whose main(argv) runs them (or "module:function")
COMMANDS = {
    ("train", "digits"): "scripts.training.train_digits",
    ("train", "text"): "scripts.training.train_text",
    ("train", "tabular"): "scripts.training.train_tabular",
    ("train", "image"): "scripts.training.train_image",
    ("import", "hf"): "scripts.training.import_hf",
    ("import", "torchscript"): "scripts.training.import_image",
    ("import", "onnx"): "scripts.training.import_image:main_onnx",
    ("compress", "distill"): "scripts.compression.distill",
    ("compress", "prune"): "scripts.compression.prune",
    ("export",): "scripts.packaging.export",
    ("build",): "scripts.packaging.build",
    ("check",): "scripts.serving.check",
    ("serve",): "scripts.serving.servers",
    ("samples",): "scripts.serving.samples",
    ("soak",): "scripts.serving.soak",
    ("deploy",): "scripts.deploy.kserve",
    ("bench", "serving"): "scripts.benchmarking.benchmark",
    ("bench", "formats"): "scripts.benchmarking.benchmark_formats",
    ("bench", "int8"): "scripts.benchmarking.int8_recipes",
    ("bench", "profile"): "scripts.benchmarking.profile_servers",
    ("bench", "ab"): "scripts.benchmarking.ab",
    ("bench", "compression"): "scripts.benchmarking.compression_table",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, module in sorted(COMMANDS.items(), key=lambda item: -len(item[0])):
        if tuple(argv[: len(words)]) == words:
            # argparse names the program after sys.argv[0]: make each command's --help and errors say "maas ...".
            sys.argv[0] = " ".join(["maas", *words])
            module_name, _, function = module.partition(":")
            result = getattr(importlib.import_module(module_name), function or "main")(argv[len(words) :])
            return result if isinstance(result, int) else 0
    known = sorted({" ".join(words) for words in COMMANDS})
    if argv and argv[0] not in ("-h", "--help"):
        print(f"maas: unknown command {' '.join(argv[:2])!r}; commands: {', '.join(known)}", file=sys.stderr)
        print(__doc__, file=sys.stderr)
        return 2
    print(__doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
