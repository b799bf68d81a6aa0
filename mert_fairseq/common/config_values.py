"""Parsing of the string-valued config fields the original MERT configs use for lists
(e.g. "[(512,10,5)] + [(512,3,2)] * 4", "[8000, 24000]"), without `eval`; fields accepted only so that
original YAMLs and stored checkpoint configs load: one table per config class (`Accepted` entries), the
dataclass base built from it (`accepted_fields`) and the one warning when one is set (`warn_fields_without_effect`)."""
from __future__ import annotations

import ast
import dataclasses
import logging
from typing import Any, List, Mapping, Optional, Tuple

logger = logging.getLogger(__name__)


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


def _plain(value: Any) -> Any:
    """Lists, tuples and OmegaConf ListConfigs compare as lists."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or isinstance(value, Mapping):
        return value
    return [_plain(v) for v in value]


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A config field that has no effect here, accepted so that original YAMLs and the configs stored in
    checkpoints load: its `default`, `why` it does nothing, and its `type` when that is not type(default)."""

    default: Any
    why: str
    type: Any = None


def accepted_fields(name: str, table: Mapping[str, Accepted]) -> type:
    """A FairseqDataclass with one field per entry of `table`: the base of a config class whose own body lists
    only live fields. They are real dataclass fields, so hydra composes a YAML that sets them and fairseq's
    struct merge of a stored checkpoint config (`merge_with_parent`) accepts them."""
    from fairseq.dataclass import FairseqDataclass  # here: the list parsers above need no fairseq

    fields = [(key, entry.type or type(entry.default),
               dataclasses.field(default=entry.default, metadata={"help": f"no effect: {entry.why}"}))
              for key, entry in table.items()]
    return dataclasses.make_dataclass(name, fields, bases=(FairseqDataclass,))


def warn_fields_without_effect(cfg: Any, table: Mapping[str, Accepted], group: str) -> List[str]:
    """One warning per field of `table` that `cfg` sets away from its default (None counts as unset); returns
    those names. `group` names the config group ("model", "task")."""
    changed = []
    for name, entry in table.items():
        value = getattr(cfg, name, None)
        if value is not None and _plain(value) != _plain(entry.default):
            logger.warning("%s.%s=%r has no effect in mert-fairseq: %s", group, name, value, entry.why)
            changed.append(name)
    return changed
