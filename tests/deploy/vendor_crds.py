"""Vendor the OpenAPI schemas of the CustomResourceDefinitions the manifests use.

``python -m tests.deploy.vendor_crds CRD.yaml...`` writes, for every served version of
every CRD given, ``deploy/schemas/<group>/<Kind>_<version>.json``: the CRD's
``openAPIV3Schema`` without its descriptions (they are most of its size and none of its
meaning). Run it again on the operators' CRDs of a newer release to follow them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

SCHEMAS = Path(__file__).resolve().parents[2] / "deploy" / "schemas"


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: without_descriptions(value)
            for key, value in node.items()
            # "description" is a property name in a few schemas: keep those.
            if key != "description" or isinstance(value, dict)
        }
    if isinstance(node, list):
        return [without_descriptions(item) for item in node]
    return node


def vendor(crd: dict[str, Any]) -> list[Path]:
    spec = crd["spec"]
    written = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = without_descriptions(version["schema"]["openAPIV3Schema"])
        path = SCHEMAS / spec["group"] / f"{spec['names']['kind']}_{version['name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(paths: list[str]) -> None:
    for name in paths:
        for crd in yaml.safe_load_all(Path(name).read_text(encoding="utf-8")):
            if crd and crd.get("kind") == "CustomResourceDefinition":
                for path in vendor(crd):
                    print(path.relative_to(SCHEMAS.parents[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
