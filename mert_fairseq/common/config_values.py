"""Parsing of the string-valued config fields the original MERT configs use for lists
(e.g. "[(512,10,5)] + [(512,3,2)] * 4", "[8000, 24000]"), without `eval`."""
from __future__ import annotations

import ast
from typing import List, Optional, Tuple


def parse_list_literal(text: Optional[str], key: str) -> list:
    """A python list literal ("[1, 2]"; None -> []); errors name the config `key`."""
    try:
        return list(ast.literal_eval("[]" if text is None else text))
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"{key}={text!r} is not a python list literal") from exc


def parse_conv_layers(spec: str) -> List[Tuple[int, int, int]]:
    """Evaluate a conv spec like "[(512,10,5)] + [(512,3,2)] * 4" safely (lists, tuples, ints, + and *)."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"model.conv_feature_layers: unsupported expression {ast.dump(node)} in {spec!r}")

    layers = ev(ast.parse(spec, mode="eval"))
    if not layers or not all(isinstance(l, tuple) and len(l) == 3 for l in layers):
        raise ValueError(f"model.conv_feature_layers={spec!r}: expected a list of (dim, kernel, stride)")
    return layers
