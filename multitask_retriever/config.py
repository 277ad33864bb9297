"""Configuration dataclasses shared by the Python API and the `mtr` command line.

Each component owns its dataclass (`EncoderConfig`, `IndexConfig`, `TrainConfig`,
`RerankTrainConfig`, ...); this module turns any of them into command-line flags and fills
them from flags and YAML/JSON files, so the CLI never restates a default.

A field whose type is itself a dataclass (e.g. `TrainConfig.taco`, a `TacoConfig`) is a
section: in a file either nested (``taco: {beta: 0.99}``) or flat (``taco_beta: 0.99``),
on the command line flat (``--taco-beta 0.99``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

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


def _list_parser(hint: Any) -> Any:
    """argparse type of a list field: comma-separated items of the list's element type."""
    args = typing.get_args(_optional_inner(hint))
    item = args[0] if args and args[0] in (int, float, str) else str

    def parse(text: str) -> list:
        try:
            return [item(x) for x in text.split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__}s, got {text!r}") from None

    return parse


def _optional_inner(tp: Any) -> Any:
    """X of Optional[X]; tp itself otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset(),
                         prefix: str = "") -> None:
    """Add one `--field-name` flag per scalar or list field of dataclass `cls` (default: unset),
    and `--section-field` flags for the fields of each nested dataclass `section`."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().split("\n")[0])
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            add_config_arguments(parser, hints[f.name], prefix=f"{prefix}{f.name}_")
            continue
        kind = _scalar_type(hints[f.name])
        if kind is None:
            continue
        dest = prefix + f.name
        flag = "--" + dest.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else "(computed)"
        help_text = f.metadata.get("help", "") + f" [default: {default}]"
        if kind is bool:
            group.add_argument(flag, dest=dest, type=_parse_bool, default=None, metavar="BOOL", help=help_text)
        elif kind == "list":
            group.add_argument(flag, dest=dest, type=_list_parser(hints[f.name]), default=None,
                               metavar="A,B,...", help=help_text)
        else:
            group.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)


def _checked(cls: type, name: str, value: Any, hint: Any) -> Any:
    """A config file's value for a field, as its annotation's type; a mismatch (2.7 for an
    int, "yes" for a bool) is a ValueError naming the field, never a silent conversion."""
    kind = _scalar_type(hint)
    if value is None or kind is None:
        return value
    ok = {int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          bool: isinstance(value, bool), str: isinstance(value, str),
          "list": isinstance(value, (list, tuple))}[kind]
    if not ok:
        expected = kind if isinstance(kind, str) else kind.__name__
        raise ValueError(f"{cls.__name__} field {name!r} expects {expected}, got {value!r}")
    return float(value) if kind is float else value


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _collect(cls: type, files: Sequence[Mapping[str, Any]], args: argparse.Namespace | None,
             prefix: str) -> dict[str, Any]:
    """Field values of `cls` given by the files (in order) and then the flags; sections built."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    sections = {name for name in fields if dataclasses.is_dataclass(hints[name])}
    values: dict[str, Any] = {}
    section_files: dict[str, list[dict[str, Any]]] = {name: [] for name in sections}
    for file in files:
        for key, value in file.items():
            key = key.replace("-", "_")
            owner = next((n for n in sections if key.startswith(n + "_")), None)
            if key in sections:
                if not isinstance(value, Mapping):
                    raise ValueError(f"{cls.__name__} section {key!r} must be a mapping of "
                                     f"{hints[key].__name__} fields, got {value!r}")
                section_files[key].append(dict(value))
            elif key in fields:
                values[key] = _checked(cls, key, value, hints[key])
            elif owner is not None:
                section_files[owner].append({key[len(owner) + 1:]: value})
            else:
                raise ValueError(f"unknown {cls.__name__} field {key!r}; known: {', '.join(sorted(fields))}")
    for name in fields.keys() - sections:
        value = getattr(args, prefix + name, None) if args is not None else None
        if value is not None:
            values[name] = value
    for name in sections:
        given = _collect(hints[name], section_files[name], args, f"{prefix}{name}_")
        if given:
            values[name] = dataclasses.replace(_default(fields[name]), **given)
    return values


def config_from_args(cls: type[T], args: argparse.Namespace | None = None,
                     file_values: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                     **overrides: Any) -> T:
    """Build `cls` from (lowest to highest priority) defaults, config files' values (one mapping
    or several, later ones winning), flags, then `overrides`."""
    files = [file_values] if isinstance(file_values, Mapping) else list(file_values or [])
    values = _collect(cls, files, args, "")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def flat_fields(config: Any) -> dict[str, Any]:
    """A dataclass instance's fields with each section spread as `<section>_<field>` (the flag names)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}_{k}": v for k, v in flat_fields(value).items()})
        else:
            out[f.name] = value
    return out
