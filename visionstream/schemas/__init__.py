"""The topics' contract as JSON Schemas (draft 2020-12), one file per message format, shipped in the package.

Each schema describes one Kafka message as a JSON document ``{"key", "value", "headers"}`` (``message_document``
builds it from a consumed message): the key as UTF-8 text, the value as its JSON document (``x-value-encoding``
``json``) or base64 of its bytes (``bytes``: a frame's JPEG), the headers as an object of UTF-8 texts.
``x-topic-settings`` names the settings whose topics carry that format. README.md here: the compatibility rule
of record versions (``v``). Validating needs ``jsonschema`` (not a worker dependency): see ``validator``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

COMMON = "common.json"


@cache
def schemas() -> dict[str, dict[str, Any]]:
    """Every schema by file name (``common.json`` holds the shared definitions)."""
    return {entry.name: json.loads(entry.read_text("utf-8"))
            for entry in files(__name__).iterdir() if entry.name.endswith(".json")}


def schema_of_topic(setting: str) -> dict[str, Any]:
    """The schema of the topic a setting names (``"predictions_topic"``)."""
    for schema in schemas().values():
        if setting in schema.get("x-topic-settings", ()):
            return schema
    raise KeyError(f"no schema describes {setting}")


def message_document(schema: Mapping[str, Any], key: bytes | None, value: bytes | None,
                     headers: Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None = None) -> dict[str, Any]:
    """A consumed message as the document ``schema`` describes (a repeated header: the last one counts, as
    the worker reads it). Raises ValueError when the key, a header or a JSON value is not UTF-8/JSON."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    document: dict[str, Any] = {
        "key": None if key is None else key.decode("utf-8"),
        "headers": {name: raw.decode("utf-8") for name, raw in items},
    }
    if value is None:
        document["value"] = None
    elif schema["x-value-encoding"] == "json":
        document["value"] = json.loads(value)
    else:
        document["value"] = base64.b64encode(value).decode("ascii")
    return document


def validator(schema: Mapping[str, Any]) -> Any:
    """A ``jsonschema`` validator of ``schema`` that resolves its references to the other files here."""
    import jsonschema  # the test extra's; a worker never validates its own records
    from referencing import Registry, Resource

    registry = Registry().with_resources(
        (name, Resource.from_contents(contents)) for name, contents in schemas().items())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def message_errors(setting: str, key: bytes | None, value: bytes | None,
                   headers: Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None = None) -> list[str]:
    """What is wrong with a message of the topic ``setting`` names (``[]``: it keeps the contract)."""
    schema = schema_of_topic(setting)
    try:
        document = message_document(schema, key, value, headers)
    except ValueError as exc:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        return [f"not decodable: {exc}"]
    return [f"{'/'.join(map(str, error.absolute_path)) or '.'}: {error.message}"
            for error in validator(schema).iter_errors(document)]
