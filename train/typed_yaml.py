"""YAML text to typed dataclasses: the machinery under train/config.py's schema.

YAML is read with a SafeLoader subclass (no Python tags, so `!!python/object` is refused) that
follows YAML 1.2 for scalars: only true/false are booleans (`amp: off` stays the string "off"),
`010` is the integer 10 (not octal 8), `1:30` is a string (not 90)
and `5e-5` is a float (PyYAML's YAML 1.1 rules read it as a string). Every key is checked
against the dataclass fields and every value against the field's type; a problem raises
ConfigError with a one-line message naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing

import yaml


class ConfigError(ValueError):
    """A bad config: unknown key, wrong type or bad value. The message names the dotted key."""


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 (core schema) booleans, integers and floats."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """YAML 1.2 integers: decimal (`010` is 10), `0o17` octal, `0x1f` hex; no `1:30` or `1_000`."""
        text = self.construct_scalar(node)
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)


_YAML11 = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float", "tag:yaml.org,2002:int")
_Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] not in _YAML11] for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, where: str) -> object:
    """YAML text -> plain Python data; ConfigError (naming `where`) on a syntax error or a tag."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"config: {where}: not safe YAML ({msg})") from None


def _check(value: object, tp: object, key: str) -> object:
    """`value` converted to type `tp` (int -> float only), or ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _check(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config: '{key}' must be a mapping, got {type(value).__name__}")
        return build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config: '{key}' must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not tp:  # bool is not an int here, and an int is not a str
        raise ConfigError(f"config: '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(cls: type, values: dict, prefix: str = "") -> object:
    """The dataclass `cls` from a tree of plain values, every key and type checked (ConfigError
    naming the dotted key, `prefix` + key). A ValueError from the dataclass's own checks
    (`__post_init__`) is passed on as it is: the caller names it a config error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in values:
        if k not in names:
            raise ConfigError(f"config: unknown key '{prefix}{k}'")
    return cls(**{k: _check(v, hints[k], prefix + k) for k, v in values.items()})


def set_dotted(tree: dict, dotted: str, value: object) -> None:
    """Set `tree["a"]["b"] = value` for dotted "a.b", making sections as needed; ConfigError when
    a part of the path is a value, not a section."""
    node, parts = tree, dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config: unknown key '{dotted}' ('{part}' is not a section)")
        node = child
    node[parts[-1]] = value
