"""The committed JSON Schemas match the code, and the example manifest validates against its schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from hepinfra.manifest import schema as manifest_schema
from hepinfra.render import json_schema as plan_schema

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_manifest_schema_file_is_current() -> None:
    assert json.loads((DOCS / "manifest.schema.json").read_text()) == manifest_schema(), (
        "run: hepinfra schema > docs/manifest.schema.json"
    )


def test_plan_schema_file_is_current() -> None:
    assert json.loads((DOCS / "plan-json.schema.json").read_text()) == plan_schema(), (
        "run: hepinfra schema --plan > docs/plan-json.schema.json"
    )


def test_example_manifest_validates_against_the_editor_schema() -> None:
    for example in ("hepgg.yaml", "real-postgres/hepinfra.yaml"):
        jsonschema.validate(yaml.safe_load((EXAMPLES / example).read_text()), manifest_schema())


def test_editor_schema_rejects_an_unknown_key() -> None:
    doc = yaml.safe_load((EXAMPLES / "hepgg.yaml").read_text())
    doc["databases"]["shop"]["engin"] = "postgres"
    try:
        jsonschema.validate(doc, manifest_schema())
    except jsonschema.ValidationError:
        return
    raise AssertionError("the schema accepted an unknown key")
