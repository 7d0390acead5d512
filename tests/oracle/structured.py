"""Checks constrained outputs with oracles tandem did not write: Python's jsonschema for JSON
schemas, re.fullmatch for regexes, the lark package for grammars (GBNF cases are checked against
the same language written in Lark by hand).

Reads [{"kind": "json_schema" | "json_object" | "regex" | "lark", "spec": ..., "text": ...}]
from the file named by argv[1]; prints one line of JSON: [null | "why it fails", ...].
Exits 3 when an oracle package is missing (the test then skips, or fails where required)."""

import json
import re
import sys

try:
    import jsonschema
    import lark
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(f"missing oracle package: {e}", file=sys.stderr)
    sys.exit(3)


def check(case):
    kind, spec, text = case["kind"], case["spec"], case["text"]
    if kind in ("json_schema", "json_object"):
        try:
            value = json.loads(text)
        except ValueError as e:
            return f"not JSON: {e}"
        schema = {"type": "object"} if kind == "json_object" else spec
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as e:
            return f"invalid: {e.message}"
        return None
    if kind == "regex":
        return None if re.fullmatch(spec, text) else "does not match"
    if kind == "lark":
        try:
            lark.Lark(spec, parser="earley", lexer="dynamic").parse(text)
        except lark.exceptions.LarkError as e:
            return f"not in the language: {e}"
        return None
    return f"unknown kind {kind}"


with open(sys.argv[1], encoding="utf-8") as f:
    cases = json.load(f)
print(json.dumps([check(c) for c in cases]))
