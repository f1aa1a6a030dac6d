"""Render the overlays and check what Kubernetes' own schemas cannot: the custom resources.

``kubernetes-validate`` knows the built-in kinds only. The custom resources (Strimzi,
MongoDB Community, Prometheus operator) are checked here against their CRDs' OpenAPI
schemas, vendored under ``deploy/schemas/`` (see ``tests.deploy.vendor_crds``), as
strictly as ``kubectl apply --validate=strict``: an unknown field is an error, and so is
a custom resource whose schema is not vendored.

``python -m tests.deploy.manifests split RENDERED BUILTIN`` writes the built-in kinds of
a rendered overlay to BUILTIN (for kubernetes-validate) and checks the rest; ``make
manifests`` runs it on every overlay.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft4Validator

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "deploy" / "schemas"
BIN = Path(sys.executable).parent  # kubectl and kubernetes-validate come with the venv

Doc = dict[str, Any]

# What every custom resource's metadata must be: a DNS-1123 subdomain name (namespaced,
# so no namespace is required here: the overlays set it) and string labels.
_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "maxLength": 253,
            "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        },
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def render(overlay: str) -> list[Doc]:
    rendered = subprocess.run(  # noqa: S603
        [BIN / "kubectl", "kustomize", ROOT / "deploy" / "overlays" / overlay],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return load(rendered)


def load(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def group_of(doc: Doc) -> str:
    api_version: str = doc["apiVersion"]
    return api_version.rpartition("/")[0]


def is_custom(doc: Doc) -> bool:
    """Whether a document's kind comes from a CRD (its API group has a dot and is not
    one of Kubernetes' own, which all end in ``.k8s.io``)."""
    group = group_of(doc)
    return "." in group and not group.endswith(".k8s.io")


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever the CRD lists the known ones."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def validator(group: str, kind: str, version: str) -> Draft4Validator | None:
    path = SCHEMAS / group / f"{kind}_{version}.json"
    if not path.exists():
        return None
    schema = strict(json.loads(path.read_text(encoding="utf-8")))
    schema.setdefault("properties", {})["metadata"] = copy.deepcopy(_METADATA)
    schema["required"] = sorted({*schema.get("required", []), "metadata"})
    return Draft4Validator(schema)


def custom_resource_errors(doc: Doc) -> list[str]:
    """What is wrong with one custom resource, as ``Kind/name: path: message`` lines."""
    kind = doc.get("kind", "?")
    name = doc.get("metadata", {}).get("name", "?")
    version = doc["apiVersion"].rpartition("/")[2]
    check = validator(group_of(doc), kind, version)
    if check is None:
        return [f"{kind}/{name}: no schema for {doc['apiVersion']} under deploy/schemas/"]
    return [
        f"{kind}/{name}: {'.'.join(str(p) for p in error.absolute_path) or '(root)'}: "
        f"{error.message}"
        for error in sorted(check.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


def all_errors(docs: Iterable[Doc]) -> list[str]:
    return [error for doc in docs if is_custom(doc) for error in custom_resource_errors(doc)]


def split(rendered: Path, builtin: Path) -> int:
    docs = load(rendered.read_text(encoding="utf-8"))
    builtin.write_text(
        yaml.safe_dump_all([d for d in docs if not is_custom(d)], sort_keys=False),
        encoding="utf-8",
    )
    errors = all_errors(docs)
    for error in errors:
        print(f"{rendered}: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "split":
        sys.exit("usage: python -m tests.deploy.manifests split RENDERED.yaml BUILTIN.yaml")
    sys.exit(split(Path(sys.argv[2]), Path(sys.argv[3])))
