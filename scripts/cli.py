"""``maas``: one command for the whole path from a trained model to both servers.

    maas train digits|text|image|tabular ...   train an example or your own model into an artifact
    maas train lm --out ARTIFACT [--corpus FILE]   train a small GPT from scratch (the demo language model)
    maas import hf DIR --out ARTIFACT    import a Hugging Face classifier or causal LM checkpoint
    maas import torchscript|onnx FILE    import an image classifier (--labels, --input-size, --mean/--std ...)
    maas compress distill ARTIFACT --layers K   a student with K transformer layers, taught by the model
    maas compress prune ARTIFACT --keep F       keep a fraction F of each layer's feed-forward neurons
    maas export ARTIFACT --format F      export: torchscript | onnx | onnx_int8[_static]
    maas build ARTIFACT [...]            package for TorchServe (model_store/) and Triton (model_repository/)
    maas check ARTIFACT --input FILE...  requests through both servers' handlers in process, side by side
    maas explain ARTIFACT --text "..."  why the model answered what it did (per word / pixel / feature), in process
    maas serve start|stop torchserve|triton|both
    maas serve status [--json]           deep health: a real inference per model on each server (a k8s probe)
    maas serve deploy ARTIFACT           a new version beside the running one, probed, then the default
    maas serve deploy ARTIFACT --canary 10   the new version takes ~10% of the requests (promote|rollback MODEL)
    maas serve rollback|retire MODEL     the version before back as the default | drop all but the default
    maas serve versions [MODEL]          versions loaded and the default, on each server
    maas soak --requests N --kill-every K   load both servers, kill workers/stubs, count lost and wrong answers
    maas soak --deploy ARTIFACT          the same load while a version is canaried, promoted, rolled back
    maas deploy kserve ARTIFACT... --storage-uri URI   KServe storage layouts + InferenceService manifests
    maas deploy check DIR                check them against KServe's CRD schemas and rules (after an edit)
    maas samples                         send sample requests to the running servers
    maas bench serving|formats|int8      the benchmarks (reports/)
    maas bench profile                   py-spy on each server's worker under wrk load (reports/profile/)
    maas bench ab --a KEY=V [--b KEY=V]  two serving settings served at once, measured interleaved (reports/ab/)
    maas bench overload                  each server at 0.5-4x its capacity, open loop: goodput, refusals, p99
    maas bench explain                   an explanation's latency on each server, and its cost to predictions
    maas bench compression               a model and its compressed students: size, accuracy, speed (reports/)
    maas bench train-image               maas train image's recipes vs a plain CNN on generated folders (reports/)
    maas bench peers                     the same models on LitServe, BentoML, KServe, FastAPI, plain TorchServe
    maas bench generate ARTIFACT         a language model's tokens/s, TTFT, ITL: served, in process, naive, static

``maas COMMAND --help`` shows each command's options and an example. Each command is the ``main`` of a module
under ``scripts/`` (``python -m scripts.X`` runs the same code).

A user error (a missing or wrong path, a refused artifact or export, a bad option value) is answered with one line,
``maas COMMAND: error: ...``, and exit status 1 (2: the command line itself is wrong); an unexpected failure with one
``internal error`` line. ``--debug`` (anywhere on the line) or ``MAAS_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

# command words -> the module whose main(argv) runs them (or "module:function")
COMMANDS = {
    ("train", "digits"): "scripts.training.train_digits",
    ("train", "text"): "scripts.training.train_text",
    ("train", "tabular"): "scripts.training.train_tabular",
    ("train", "image"): "scripts.training.train_image",
    ("train", "lm"): "scripts.training.train_lm",
    ("import", "hf"): "scripts.training.import_hf",
    ("import", "torchscript"): "scripts.training.import_image",
    ("import", "onnx"): "scripts.training.import_image:main_onnx",
    ("compress", "distill"): "scripts.compression.distill",
    ("compress", "prune"): "scripts.compression.prune",
    ("export",): "scripts.packaging.export",
    ("build",): "scripts.packaging.build",
    ("check",): "scripts.packaging.check",
    ("explain",): "scripts.packaging.explain",
    ("serve",): "scripts.serving.servers",
    ("serve", "deploy"): "scripts.deploy.rollout:deploy",
    ("serve", "promote"): "scripts.deploy.rollout:promote",
    ("serve", "rollback"): "scripts.deploy.rollout:rollback",
    ("serve", "retire"): "scripts.deploy.rollout:retire",
    ("serve", "versions"): "scripts.deploy.rollout:versions",
    ("samples",): "scripts.serving.samples",
    ("soak",): "scripts.deploy.soak_deploy",
    ("deploy",): "scripts.deploy.kserve",
    ("bench", "serving"): "scripts.benchmarking.benchmark",
    ("bench", "formats"): "scripts.benchmarking.benchmark_formats",
    ("bench", "int8"): "scripts.benchmarking.int8_recipes",
    ("bench", "profile"): "scripts.benchmarking.profile_servers",
    ("bench", "overload"): "scripts.benchmarking.overload",
    ("bench", "explain"): "scripts.benchmarking.explain_bench",
    ("bench", "ab"): "scripts.benchmarking.ab",
    ("bench", "compression"): "scripts.benchmarking.compression_table",
    ("bench", "train-image"): "scripts.benchmarking.train_image_bench",
    ("bench", "generate"): "scripts.benchmarking.generate_bench",
    ("bench", "peers"): "scripts.benchmarking.peers.bench",
}


DEBUG_FLAG, DEBUG_ENV = "--debug", "MAAS_DEBUG"
# User errors that are neither OSErrors nor ValueErrors, by module: looked up only once their module is imported
# (no exception of the class can exist before), so that `maas` itself imports no model code.
REFUSALS = {
    "scripts.packaging.acceptance": "ExportRejected",
    "handlers.self_check": "SelfCheckFailed",
    "scripts.serving.processes": "ServerExited",
    "httpx": "TransportError",  # a server that does not answer (not started?)
}


def is_user_error(exc: BaseException) -> bool:
    """What a user's input causes: a path (OSError: missing, a directory, no permission, a refused connection), a
    value or an artifact refused (ValueError, which most of the project's refusals derive from), a refused export,
    a server that does not answer."""
    if isinstance(exc, (OSError, ValueError)):
        return True
    refusals = (getattr(sys.modules.get(module), name, None) for module, name in REFUSALS.items())
    return any(isinstance(refusal, type) and isinstance(exc, refusal) for refusal in refusals)


def error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"  # the path first, not "[Errno 2] No such file or directory: '...'"
    message = str(exc) or type(exc).__name__
    try:
        url = str(exc.request.url)  # httpx's errors do not name the server
    except (AttributeError, RuntimeError):
        return message
    return message if url in message else f"{url}: {message}"


def run(prog: str, command: str, args: list[str], debug: bool) -> int:
    """Run ``command`` ("module" or "module:function") on ``args``; a failure becomes one line on stderr and a
    non-zero status, a traceback only with ``debug``."""
    module_name, _, function = command.partition(":")
    try:
        result = getattr(importlib.import_module(module_name), function or "main")(args)
    except SystemExit as exc:  # argparse (it printed usage and the error), --help, or a module's sys.exit("...")
        if not isinstance(exc.code, str):
            return exc.code or 0
        if debug:
            raise
        message = exc.code.removeprefix(f"{prog}: ")  # some modules name themselves already
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        if is_user_error(exc):
            print(f"{prog}: error: {error_message(exc)}", file=sys.stderr)
        else:
            print(f"{prog}: internal error: {type(exc).__name__}: {error_message(exc)} "
                  f"(run with {DEBUG_FLAG} for the traceback)", file=sys.stderr)  # fmt: skip
        return 1
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    for words, module in sorted(COMMANDS.items(), key=lambda item: -len(item[0])):
        if tuple(argv[: len(words)]) == words:
            # argparse names the program after sys.argv[0]: make each command's --help and errors say "maas ...".
            sys.argv[0] = prog = " ".join(["maas", *words])
            return run(prog, module, argv[len(words) :], debug)
    known = sorted({" ".join(words) for words in COMMANDS})
    if argv and argv[0] not in ("-h", "--help"):
        print(f"maas: unknown command {' '.join(argv[:2])!r}; commands: {', '.join(known)}", file=sys.stderr)
        print(__doc__, file=sys.stderr)
        return 2
    print(__doc__)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
