"""KServe's CRD schemas, applied strictly: what the API server refuses under ``kubectl apply --validate=strict``.

The schemas are KServe's own OpenAPI v3 schemas of InferenceService, ServingRuntime and ClusterServingRuntime,
vendored in ``kserve_crd_schemas.json`` by ``update_kserve_schemas.py`` (its ``source`` names the commit). The walk
below knows every keyword those CRDs use (``KEYWORDS``; the updater refuses a schema with any other), with the
Kubernetes extensions read as the API server reads them:

* an object that lists ``properties`` takes no other key (pruned, or refused in strict mode: "unknown field");
* ``x-kubernetes-int-or-string``: an integer or a string, the ``pattern`` (quantities) applying to strings only;
* ``x-kubernetes-list-type: map``: items unique by ``x-kubernetes-list-map-keys`` (``env`` by name ...); ``set``:
  unique items;
* ``format: int32|int64``: in range (the API server lets it pass, KServe's webhook cannot decode it and refuses);
* ``metadata``, only ``type: object`` in the CRD: Kubernetes' ObjectMeta rules (names, label and annotation keys).

Imports only the standard library and PyYAML, so tests and ``maas deploy check`` run it in any process.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from functools import cache
from pathlib import Path

import yaml

SCHEMAS = Path(__file__).with_name("kserve_crd_schemas.json")
KEYWORDS = {  # what the walk reads; "default" and "x-kubernetes-map-type" change nothing a check could see
    "type", "properties", "required", "additionalProperties", "items", "enum", "pattern", "format", "minimum",
    "maximum", "minLength", "maxLength", "minItems", "anyOf", "$ref", "default", "x-kubernetes-int-or-string",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type",
}  # fmt: skip
INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
# k8s.io/apimachinery: resource.Quantity (the CRDs' pattern) and util/validation/validation.go
QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")  # fmt: skip  # noqa: E501
SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "n": Decimal("1e-9"),
          "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "E": 10**18}  # fmt: skip
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = re.compile(rf"^{DNS1123_LABEL}(\.{DNS1123_LABEL})*$")  # <= 253 characters
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")  # <= 63 (a key's part after the '/')
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # <= 63
PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")  # a map key shown as .key in a path; others as [key]
OBJECT_META = {  # metav1.ObjectMeta's fields: any other key under metadata is unknown
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields",
}  # fmt: skip


class ManifestError(ValueError):
    """A manifest that KServe or Kubernetes would refuse: names the file and the field."""


# ---- YAML in ---------------------------------------------------------------------------------------------
class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (the API server's strict field validation does;
    ``yaml.safe_load`` silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ManifestError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_documents(path: Path) -> list:
    """The YAML documents of ``path`` (empty ones skipped); ManifestError for a repeated key or bad YAML."""
    try:
        return [doc for doc in yaml.load_all(Path(path).read_text(), Loader=UniqueKeyLoader) if doc is not None]
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not YAML: {' '.join(str(exc).split())}") from None


# ---- the schemas -----------------------------------------------------------------------------------------
@cache
def vendored() -> dict:
    """``{"source": ..., "schemas": {"<group>/<version>/<Kind>": schema}, "$defs": {...}}``."""
    return json.loads(SCHEMAS.read_text())


def quantity(text: str | int) -> Decimal:
    """A Kubernetes quantity's value (``'4Gi'`` -> 4294967296); ValueError if it is not one."""
    text = str(text)
    if not QUANTITY.match(text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number, suffix = re.fullmatch(r"([+-]?[0-9.]+)(.*)", text).groups()
    if suffix and suffix not in SUFFIX:  # an exponent: 1e3
        return Decimal(text)
    return Decimal(number) * Decimal(SUFFIX.get(suffix, 1))


def schema_errors(doc) -> list[str]:
    """Every way ``doc`` breaks its KServe kind's CRD schema or ObjectMeta's rules, each naming its path."""
    if not isinstance(doc, dict):
        return [f"(document): expected a mapping, got {describe(doc)}"]
    kind = f"{doc.get('apiVersion')}/{doc.get('kind')}"
    schemas = vendored()["schemas"]
    if kind not in schemas:
        known = ", ".join(k.rsplit("/", 1)[1] + f" ({k.rsplit('/', 1)[0]})" for k in schemas)
        return [f"apiVersion/kind: {kind} is not a KServe kind; expected one of {known}"]
    errors = [f"{key}: required" for key in ("metadata", "spec") if doc.get(key) is None]
    walk(doc, schemas[kind], "", errors)
    if isinstance(doc.get("metadata"), dict):
        errors += metadata_errors(doc["metadata"])
    return errors


def describe(value) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"[:80]


def is_integer(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


def resolve(schema: dict) -> dict:
    """The shared definition a ``{"$ref": ...}`` names, or the schema itself."""
    return vendored()["$defs"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema


TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": is_integer,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def walk(value, schema: dict, path: str, errors: list[str]) -> None:
    """Append to ``errors`` every way ``value`` (at ``path``) breaks ``schema``, strictly."""
    schema = resolve(schema)
    where = path or "(document)"
    if value is None:  # the API server drops a null field; a required one is then missing
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (is_integer(value) or isinstance(value, str)):
            errors.append(f"{where}: expected an integer or a string, got {describe(value)} (quote a fraction: '0.5')")
            return
    elif "type" in schema and not TYPES[schema["type"]](value):
        errors.append(f"{where}: expected {schema['type']}, got {describe(value)}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            quantity_pattern = schema["pattern"] == QUANTITY.pattern
            expected = "a Kubernetes quantity (2, 500m, 4Gi)" if quantity_pattern else f"matching {schema['pattern']}"
            errors.append(f"{where}: {value!r} is not {expected}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: length {len(value)} outside {schema.get('minLength', 0)}.."
                          f"{schema.get('maxLength', '')}")  # fmt: skip
    elif is_integer(value) or isinstance(value, float):
        low, high = INT_RANGE.get(schema.get("format"), (None, None))
        if low is not None and not low <= value <= high:
            errors.append(f"{where}: {value} is out of the {schema['format']} range (KServe cannot decode it)")
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errors.append(f"{where}: {value} outside {schema.get('minimum', '')}..{schema.get('maximum', '')}")
    if isinstance(value, dict):
        object_errors(value, schema, path, errors)
    elif isinstance(value, list):
        list_errors(value, schema, path, errors)


def object_errors(value: dict, schema: dict, path: str, errors: list[str]) -> None:
    prefix = f"{path}." if path else ""
    for key in schema.get("required", []):
        if value.get(key) is None:
            errors.append(f"{prefix}{key}: required")
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        if properties is not None and key in properties:
            walk(item, properties[key], f"{prefix}{key}", errors)
        elif isinstance(extra, dict):
            walk(item, extra, f"{prefix}{key}" if PLAIN_KEY.match(str(key)) else f"{path}[{key}]", errors)
        elif properties is not None:
            near = [name for name in properties if name.lower() == str(key).lower()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            errors.append(f"{prefix}{key}: unknown field{hint}")


def list_errors(value: list, schema: dict, path: str, errors: list[str]) -> None:
    if len(value) < schema.get("minItems", 0):
        errors.append(f"{path}: needs at least {schema['minItems']} item(s)")
    for i, item in enumerate(value):
        if "items" in schema:
            walk(item, schema["items"], f"{path}[{i}]", errors)
    list_type, seen = schema.get("x-kubernetes-list-type"), {}
    if list_type not in ("map", "set"):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    fields = resolve(schema.get("items", {})).get("properties", {})
    defaults = {k: resolve(fields.get(k, {})).get("default") for k in keys}  # ports: protocol defaults to TCP
    for i, item in enumerate(value):
        is_entry = list_type == "map" and isinstance(item, dict)
        identity = {k: defaults[k] if item.get(k) is None else item[k] for k in keys} if is_entry else item
        token = json.dumps(identity, sort_keys=True, default=str)
        if token in seen:
            what = " ".join(f"{k} {v!r}" for k, v in identity.items()) if list_type == "map" else repr(item)
            errors.append(f"{path}[{i}]: duplicate {what} (also at [{seen[token]}]; the list is keyed by it)")
        seen.setdefault(token, i)


def metadata_errors(meta: dict) -> list[str]:
    """ObjectMeta's rules the API server applies to any object (apimachinery's validation.go)."""
    errors = [f"metadata.{key}: unknown field" for key in meta if key not in OBJECT_META]
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.append("metadata.name: required (a DNS-1123 subdomain: lower case letters, digits, '-', '.')")
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1123 subdomain (lower case letters, digits, '-', '.')")
    namespace = meta.get("namespace")
    if namespace is not None and not (isinstance(namespace, str) and re.fullmatch(DNS1123_LABEL, namespace)):
        errors.append(f"metadata.namespace: {namespace!r} is not a DNS-1123 label")
    for field in ("labels", "annotations"):
        entries = meta.get(field) or {}
        if not isinstance(entries, dict):
            errors.append(f"metadata.{field}: expected a mapping, got {describe(entries)}")
            continue
        for key, text in entries.items():
            prefix, _, base = str(key).rpartition("/")
            if not QUALIFIED_NAME.match(base) or len(base) > 63 or (prefix and not DNS1123_SUBDOMAIN.match(prefix)):
                errors.append(f"metadata.{field}[{key}]: not a qualified key ([prefix/]name, name <= 63 characters)")
            if not isinstance(text, str):
                errors.append(f"metadata.{field}[{key}]: expected string, got {describe(text)} (quote it)")
            elif field == "labels" and (len(text) > 63 or not LABEL_VALUE.match(text)):
                errors.append(f"metadata.labels[{key}]: {text!r} is not a label value")
    return errors
