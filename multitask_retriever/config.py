"""Configuration dataclasses shared by the Python API and the `mtr` command line.

Each component owns its dataclass (`EncoderConfig`, `IndexConfig`, `TrainConfig`,
`RerankTrainConfig`); this module turns any of them into command-line flags and fills
them from flags and YAML/JSON files, so the CLI never restates a default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml and json raise different types
        raise ValueError(f"{path}: cannot parse config: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: config must be a mapping, got {type(data).__name__}")
    return data


def _scalar_type(tp: Any) -> Any:
    """The argparse type for a field annotation (Optional[X] -> X); None if not a scalar."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else None
    if tp in (int, float, str, bool):
        return tp
    if origin in (list, tuple):
        return "list"
    return None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset()) -> None:
    """Add one `--field-name` flag per scalar or list field of dataclass `cls` (default: unset)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().split("\n")[0])
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        kind = _scalar_type(hints[f.name])
        if kind is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else "(computed)"
        help_text = f.metadata.get("help", "") + f" [default: {default}]"
        if kind is bool:
            group.add_argument(flag, type=_parse_bool, default=None, metavar="BOOL", help=help_text)
        elif kind == "list":
            group.add_argument(flag, type=lambda s: [x for x in s.split(",") if x], default=None,
                               metavar="A,B,...", help=help_text)
        else:
            group.add_argument(flag, type=kind, default=None, help=help_text)


def config_from_args(cls: type[T], args: argparse.Namespace | None = None, file_values: dict | None = None,
                     **overrides: Any) -> T:
    """Build `cls` from (lowest to highest priority) defaults, a config file's values, flags, overrides."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values: dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        key = key.replace("-", "_")
        if key not in names:
            raise ValueError(f"unknown {cls.__name__} field {key!r}; known: {', '.join(sorted(names))}")
        values[key] = value
    if args is not None:
        for name in names:
            value = getattr(args, name, None)
            if value is not None:
                values[name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)

