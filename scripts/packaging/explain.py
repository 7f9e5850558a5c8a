"""Why the model answered what it did, in process: Integrated Gradients on your inputs (``handlers/explain``).

    maas explain ARTIFACT --input FILE [--input FILE ...] [--text "..."] [--target LABEL] [--steps N]
                 [--png OUT.png] [--json]
    e.g.  maas explain artifacts/sentiment --text "What an awful, boring film."
          maas explain artifacts/digits --input artifacts/sample_digit.png --png heat.png

Each FILE is one request body as a client would POST it to TorchServe (JSON, text or image bytes), each ``--text``
one text. The answer per row: the label, the explained target, the completeness check (attributions sum to the
output at the input minus that at the baseline; ``convergence_delta`` is what is left), and the attributions: per
word (text), per pixel (image; ``--png`` writes the heat map over the input), per feature (tabular). The servers
answer the same (``/explanations/<model>`` on TorchServe, ``<model>_explain`` on Triton; docs/explanations.md).
An export (ONNX, int8) is explained on the eager artifact it was exported from when that is beside it.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

from handlers.artifact import read_manifest
from handlers.explain import explainer_for
from handlers.tasks import load_pipeline
from scripts.packaging.check import read_body

BAR = 24  # characters of the widest score's bar


def source_of(artifact: Path) -> Path:
    """The artifact to explain: itself, or for an export the eager artifact beside it it was exported from."""
    model = read_manifest(artifact).model
    if "exported_from" not in model:
        return artifact
    source = artifact.parent / artifact.name.split(".")[0]
    try:
        eager = read_manifest(source)
    except (FileNotFoundError, ValueError):
        return artifact  # the explainer then says why it cannot
    return source if eager.files.get(eager.model["file"]) == model["exported_from"] else artifact


def explain(artifact: Path, bodies: list[Any], options: dict) -> list[tuple[int, Any]]:
    explainer = explainer_for(load_pipeline(source_of(artifact)))
    return explainer.explain_json(bodies, [options] * len(bodies))


def show(answer: dict) -> list[str]:
    """A few lines for a person: the verdict, the check, the strongest attributions as bars."""
    a = answer
    lines = [f"label {a.get('label', '-')}, explaining {a['target']!r}: {a['output']} {a['baseline_score']:.4f} at "
             f"the baseline -> {a['score']:.4f}; convergence delta {a['convergence_delta']:.2e} "
             f"({a['relative_delta']:.2%}) at {a['steps']} steps"]  # fmt: skip
    attributions = answer["attributions"]
    if attributions and isinstance(attributions[0], dict):
        named = [(a.get("word", a.get("feature")), a["score"]) for a in attributions]
        widest = max(abs(s) for _, s in named) or 1.0
        for name, score in named:
            bar = ("+" if score >= 0 else "-") * round(BAR * abs(score) / widest)
            lines.append(f"    {str(name)[:24]:>24} {score:+.4f} {bar}")
    else:  # a heat map: one row of numbers per pixel row
        lines += ["    " + " ".join(f"{v:+.2f}" for v in row) for row in attributions]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path, help="an artifact directory (trained, imported or exported)")
    parser.add_argument("--input", type=Path, action="append", default=[], help="one request body (repeatable)")
    parser.add_argument("--text", action="append", default=[], help="one text to explain (repeatable)")
    parser.add_argument("--target", help="the label (or output index) to explain; default: the one answered")
    parser.add_argument("--steps", type=int, help="integration steps (default: the manifest's explain_steps)")
    parser.add_argument("--png", type=Path, help="image models: write the first row's heat map here")
    parser.add_argument("--json", action="store_true", help="print the answers as JSON")
    args = parser.parse_args(argv)
    if not args.input and not args.text:
        parser.error("give at least one --input FILE or --text")
    for path in args.input:
        if not path.is_file():
            parser.error(f"--input {path}: no such file")
    bodies = [read_body(path) for path in args.input] + [{"text": text} for text in args.text]
    names = [str(path) for path in args.input] + [f"--text {text[:40]!r}" for text in args.text]
    options = {"target": args.target, "steps": args.steps, "png": bool(args.png)}
    answers = explain(args.artifact, bodies, options)
    if args.json:
        print(json.dumps([body for _, body in answers], indent=2))
    pictures = []
    for name, (status, body) in zip(names, answers, strict=True):
        rows = body if isinstance(body, list) else [body]
        if not args.json:
            print(f"[{name}]" + ("" if status == 200 else f" {status} {body['error']['message']}"))
            for row in rows if status == 200 else []:
                print("\n".join("  " + line for line in show(row)))
        pictures += [row["png"] for row in rows if status == 200 and "png" in row]
    if args.png and pictures:
        args.png.write_bytes(base64.b64decode(pictures[0]))
        print(f"heat map written to {args.png}")
    if any(status != 200 for status, _ in answers):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
