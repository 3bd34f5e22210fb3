"""The settings' reference, read from the schema itself (msgspec's JSON schema: type, range, default,
description): `run.py config` prints it section by section, and docs/configuration.md is this
module's markdown (tests/unit/pipeline/test_config_reference.py keeps the file in step)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import msgspec

from pipeline.config.schema import Config


@dataclass
class Setting:
    name: str  # dotted: section.field
    type: str
    default: str
    range: str
    description: str


def _type(prop: dict, defs: dict) -> str:
    if "$ref" in prop:
        return defs[prop["$ref"].split("/")[-1]]["title"]
    if "anyOf" in prop:
        return " | ".join(_type(p, defs) for p in prop["anyOf"])
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if prop.get("type") == "array":
        return f"list[{_type(prop.get('items', {}), defs)}]"
    return {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "object": "table"}.get(
        prop.get("type", ""), prop.get("type", "any"))


def _range(prop: dict) -> str:
    for alt in prop.get("anyOf", []):
        if (r := _range(alt)):
            return r
    low = (f">= {prop['minimum']:g}" if "minimum" in prop else f"> {prop['exclusiveMinimum']:g}"
           if "exclusiveMinimum" in prop else "")
    high = (f"<= {prop['maximum']:g}" if "maximum" in prop else f"< {prop['exclusiveMaximum']:g}"
            if "exclusiveMaximum" in prop else "")
    return ", ".join(x for x in (low, high) if x)


def settings(struct: type = Config, prefix: str = "") -> list[Setting]:
    """Every setting of `struct`, sub-sections flattened (`model.tiny.hidden_size`), in schema order."""
    schema = msgspec.json.schema(struct)
    defs = schema["$defs"]
    return list(_walk(defs[struct.__name__], defs, prefix, msgspec.to_builtins(struct())))


def _walk(node: dict, defs: dict, prefix: str, defaults: dict):
    for name, prop in node["properties"].items():
        dotted = f"{prefix}{name}"
        ref = prop.get("$ref")
        if ref is not None and "properties" in defs[ref.split("/")[-1]]:
            yield from _walk(defs[ref.split("/")[-1]], defs, f"{dotted}.", defaults[name])
            continue
        yield Setting(dotted, _type(prop, defs), json.dumps(defaults[name]), _range(prop),
                      prop.get("description", ""))


def sections() -> dict[str, str]:
    """Each top-level section's description (its docstring)."""
    defs = msgspec.json.schema(Config)["$defs"]
    return {name: defs[prop["$ref"].split("/")[-1]].get("description", "")
            for name, prop in defs["Config"]["properties"].items()}


def text(section: str = "") -> str:
    """The reference as `run.py config` prints it (one section, or all)."""
    out, current = [], None
    heads = sections()
    for s in settings():
        top = s.name.split(".")[0]
        if section and top != section:
            continue
        if top != current:
            current = top
            out.append(f"\n[{top}]  {heads[top]}")
        rng = f"  ({s.range})" if s.range else ""
        out.append(f"  {s.name.split('.', 1)[1]:<28} {s.type:<34} = {s.default}{rng}\n      {s.description}")
    return "\n".join(out).lstrip("\n")


def markdown() -> str:
    """docs/configuration.md."""
    out = ["# Configuration reference", "",
           "Generated from the schema (pipeline/config/schema.py) by `python run.py config --markdown`; "
           "a test keeps this file in step with it. Set any setting in a TOML file (`[section]` then "
           "`field = value`) or on the command line (`--section.field value`); `run.py train --dry-run` "
           "prints the resolved configuration.", ""]
    heads, current = sections(), None
    for s in settings():
        top = s.name.split(".")[0]
        if top != current:
            current = top
            out += ["", f"## [{top}]", "", heads[top], "", "| setting | type | default | range | description |",
                    "|---|---|---|---|---|"]
        cell = lambda v: v.replace("|", "\\|")  # noqa: E731
        out.append(f"| `{s.name}` | {cell(s.type)} | `{cell(s.default)}` | {cell(s.range)} | {cell(s.description)} |")
    return "\n".join(out) + "\n"
