"""Vendor KServe's CRD schemas into ``scripts/deploy/kserve_crd_schemas.json`` (what ``maas deploy check`` reads).

    git clone --depth 1 --branch v0.21.0 https://github.com/kserve/kserve /tmp/kserve
    python -m scripts.deploy.update_kserve_schemas /tmp/kserve --version v0.21.0 \
        --commit "$(git -C /tmp/kserve rev-parse HEAD)" --date 2026-09-01

Reads ``config/crd/full/serving.kserve.io_{inferenceservices,servingruntimes,clusterservingruntimes}.yaml`` (a
checkout, or a folder holding those three files, as ``kubectl get crd NAME -o yaml`` writes them from a cluster) and
keeps each served version's ``openAPIV3Schema`` without ``status``. The InferenceService schema repeats the same pod
and container subtrees a dozen times (predictor, canary, transformer, explainer, every framework), so each object
subtree of 400 bytes or more that occurs twice or more is written once under ``$defs`` and referred to by
``{"$ref": "#/$defs/<name>-<hash>"}``: 82 KB instead of 700 KB. Expanding the references must give KServe's schemas
back exactly, and every keyword must be one ``kserve_schema.py`` understands: otherwise nothing is written (a new
keyword, a CEL rule say, has to be handled there first). One schema or definition per line, so diffs stay readable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import yaml

from scripts.deploy.kserve_schema import KEYWORDS, SCHEMAS

CRDS = {
    "serving.kserve.io/v1beta1/InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "serving.kserve.io/v1alpha1/ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "serving.kserve.io/v1alpha1/ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
}
CHECKOUT_PATH = Path("config/crd/full")
SHARED_BYTES = 400  # smaller repeated subtrees stay inline: a reference would save little and read worse
DOCUMENTATION = {"description", "title", "example"}  # dropped: they validate nothing


def canonical(node) -> str:
    return json.dumps(node, separators=(",", ":"), sort_keys=True)


def digest(node) -> str:
    return hashlib.sha1(canonical(node).encode()).hexdigest()[:8]


def subschemas(node: dict):
    """(name, subschema) of a schema node's schema positions (never a ``properties`` mapping itself)."""
    for key, value in (node.get("properties") or {}).items():
        yield key, value
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield None, node[key]
    for value in node.get("anyOf") or []:
        yield None, value


def clean(node: dict, path: str) -> dict:
    """The schema without documentation keys; ValueError naming the first keyword kserve_schema.py does not know."""
    unknown = set(node) - KEYWORDS - DOCUMENTATION
    if unknown:
        raise ValueError(
            f"{path}: schema keyword(s) {sorted(unknown)} are not handled by scripts/deploy/kserve_schema.py"
        )
    out = {key: value for key, value in node.items() if key not in DOCUMENTATION}
    if "properties" in node:
        out["properties"] = {k: clean(v, f"{path}.{k}") for k, v in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out[key] = clean(node[key], f"{path}.{key}")
    if "anyOf" in node:
        out["anyOf"] = [clean(v, f"{path}.anyOf[{i}]") for i, v in enumerate(node["anyOf"])]
    return out


def read_schemas(folder: Path) -> dict[str, dict]:
    if (folder / CHECKOUT_PATH).is_dir():
        folder = folder / CHECKOUT_PATH
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schemas = {}
    for kind, name in CRDS.items():
        crd = yaml.load((folder / name).read_text(), Loader=loader)
        version = kind.split("/")[1]
        served = [v for v in crd["spec"]["versions"] if v["name"] == version]
        if not served:
            raise ValueError(f"{folder / name} has no version {version}")
        schema = served[0]["schema"]["openAPIV3Schema"]
        schema["properties"].pop("status", None)  # written by KServe, never by us
        schemas[kind] = clean(schema, kind)
    return schemas


def share(roots: dict[str, dict]) -> tuple[dict, dict]:
    """(roots with repeated subtrees replaced by references, the shared definitions)."""
    counts, names = {}, {}

    def count(node: dict, name: str) -> None:
        key = digest(node)
        counts[key] = counts.get(key, 0) + 1
        names.setdefault(key, name)
        for child_name, child in subschemas(node):
            count(child, child_name or name)

    for root in roots.values():
        count(root, "root")
    defs: dict[str, dict | None] = {}

    def rewrite(node: dict, top: bool = False) -> dict:
        key = digest(node)
        if not top and counts[key] > 1 and len(canonical(node)) >= SHARED_BYTES:
            ref = f"{names[key]}-{key}"
            if ref not in defs:
                defs[ref] = None  # reserved before the recursion
                defs[ref] = rewrite(node, top=True)
            return {"$ref": f"#/$defs/{ref}"}
        out = dict(node)
        if "properties" in node:
            out["properties"] = {k: rewrite(v) for k, v in node["properties"].items()}
        for k in ("items", "additionalProperties"):
            if isinstance(node.get(k), dict):
                out[k] = rewrite(node[k])
        if "anyOf" in node:
            out["anyOf"] = [rewrite(v) for v in node["anyOf"]]
        return out

    shared = {kind: rewrite(root, top=True) for kind, root in roots.items()}
    return shared, dict(sorted(defs.items()))


def expand(node, defs: dict):
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            return expand(defs[node["$ref"].rsplit("/", 1)[1]], defs)
        return {key: expand(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [expand(value, defs) for value in node]
    return node


def render(source: dict, schemas: dict, defs: dict) -> str:
    def block(entries: dict) -> list[str]:
        return [f"  {json.dumps(k)}: {canonical(v)}{',' if i < len(entries) - 1 else ''}"
                for i, (k, v) in enumerate(entries.items())]  # fmt: skip

    lines = ["{", f' "source": {canonical(source)},', ' "schemas": {', *block(schemas), " },", ' "$defs": {']
    return "\n".join([*lines, *block(defs), " }", "}", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("crds", type=Path, help="a kserve/kserve checkout, or a folder holding the three CRD files")
    parser.add_argument("--commit", required=True, help="the kserve/kserve commit the CRDs are from")
    parser.add_argument("--version", required=True, help="its release (a tag), or a description if it has none")
    parser.add_argument("--date", required=True, help="the commit's date")
    parser.add_argument("--note", default="", help="anything a reader of the file should know about this source")
    parser.add_argument("--out", type=Path, default=SCHEMAS)
    args = parser.parse_args(argv)
    roots = read_schemas(args.crds)
    schemas, defs = share(roots)
    for kind, root in roots.items():
        if canonical(expand(schemas[kind], defs)) != canonical(root):
            raise ValueError(f"{kind}: the shared definitions do not expand to KServe's schema")
    source = {"repository": "kserve/kserve", "commit": args.commit, "version": args.version, "date": args.date,
              "files": [str(CHECKOUT_PATH / name) for name in CRDS.values()], "note": args.note}  # fmt: skip
    text = render(source, schemas, defs)
    assert json.loads(text) == {"source": source, "schemas": schemas, "$defs": defs}
    args.out.write_text(text)
    print(f"{args.out}: {len(text)} bytes, {len(defs)} shared definitions, expands to KServe's schemas exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
