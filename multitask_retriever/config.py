"""Configuration dataclasses shared by the Python API and the `mtr` command line.

Each component owns its dataclass (`EncoderConfig`, `IndexConfig`, `TrainConfig`,
`RerankTrainConfig`, ...); this module turns any of them into command-line flags and fills
them from flags and YAML/JSON files, so the CLI never restates a default.

A field whose type is itself a dataclass (e.g. `TrainConfig.taco`, a `TacoConfig`) is a
section: in a file either nested (``taco: {beta: 0.99}``) or flat (``taco_beta: 0.99``),
on the command line flat (``--taco-beta 0.99``). `section_of` makes a section of some of
another config's fields (an experiment's ``train:`` section of `TrainConfig`'s).

A field that moved (into a section, or renamed) keeps its old spelling working through
`moved_fields`: old file keys and flags load with a one-line deprecation warning, and the Python
API accepts the old keyword and reads the old attribute.

A numeric field declares its range in its metadata, ``field(default=1, metadata={"min": 1})``
(keys ``min``, ``above``, ``max``, ``below``: >=, >, <=, <; for a list or dict field each
number in it; a float must be finite in any case), and its dataclass's ``__post_init__``
calls `check_fields`, which also checks every value against its annotation; so the Python
API, config files and flags are checked alike. `bounded` gives flags that are no config
field the same ranges.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import numbers
import os
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

log = logging.getLogger("mtr.config")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping; errors name the file."""
    from safeio.text import read_text

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    text = read_text(path)
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
    item = _list_item(hint)

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


# --------------------------------------------------------------------------- checking values
_BOUND_TESTS = {"min": (">=", lambda v, b: v >= b), "above": (">", lambda v, b: v > b),
                "max": ("<=", lambda v, b: v <= b), "below": ("<", lambda v, b: v < b)}


def bounds_text(bounds: Mapping[str, Any]) -> str:
    """The range `bounds` (a field's metadata) declare, as a reader writes it: ">= 1",
    "in [0, 1)"; empty when they declare none."""
    low = next(((k, bounds[k]) for k in ("min", "above") if k in bounds), None)
    high = next(((k, bounds[k]) for k in ("max", "below") if k in bounds), None)
    if low and high:
        return f"in {'[' if low[0] == 'min' else '('}{low[1]}, {high[1]}{']' if high[0] == 'max' else ')'}"
    bound = low or high
    return f"{_BOUND_TESTS[bound[0]][0]} {bound[1]}" if bound else ""


def range_problem(value: Any, bounds: Mapping[str, Any]) -> str:
    """What is wrong with the number `value` given `bounds` ("must be >= 0"), empty when
    nothing is; a NaN or an infinity is never in range."""
    if isinstance(value, numbers.Real) and not math.isfinite(value):
        return "must be a finite number"
    if all(test(value, bounds[k]) for k, (_, test) in _BOUND_TESTS.items() if k in bounds):
        return ""
    return f"must be {bounds_text(bounds)}"


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` is of the annotated type: ints are not bools, a float may be an int,
    a str may be a path; lists and dicts item by item; unknown annotations pass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        number = numbers.Integral if hint is int else numbers.Real
        return isinstance(value, number) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, (str, os.PathLike))
    if hint in (list, tuple) or origin in (list, tuple):
        item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else Any
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    if hint is dict or origin is dict:
        key, item = args if len(args) == 2 else (Any, Any)
        return isinstance(value, Mapping) and all(_matches(k, key) and _matches(v, item) for k, v in value.items())
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    """An annotation as written in the source: "int", "list[str]", "dict[str, int]", "float or None"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint).removeprefix("typing."))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_error(cls: type, name: str, value: Any) -> ValueError | None:
    """A ValueError naming the field when `value` is not of `cls`'s field `name`'s type."""
    hint = _hints(cls)[name]
    if _matches(value, hint):
        return None
    return ValueError(f"{cls.__name__} field {name!r} expects {_type_name(hint)}, got {value!r}")


def check_fields(config: Any) -> None:
    """Check each field of the dataclass instance `config` against its annotation and the range
    its metadata declares (see the module doc); the first problem is a ValueError naming the
    field and its value. Call it first in a config's `__post_init__`."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        error = _type_error(type(config), f.name, value)
        if error is not None:
            raise error
        if isinstance(value, Mapping):
            items = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            items = [(None, value)]
        for key, number in items:
            if isinstance(number, numbers.Real) and not isinstance(number, bool):
                problem = range_problem(number, f.metadata)
                if problem:
                    label = f.name if key is None else f"{f.name}[{key!r}]"
                    raise ValueError(f"{label} {problem}, got {number!r}")


def bounded(kind: Callable[[str], Any], **bounds: Any) -> Callable[[str], Any]:
    """An argparse `type` for a flag that is no config field: `kind` of the text, within
    `bounds` (the metadata keys above); an error names the value as typed."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        problem = range_problem(value, bounds)
        if problem:
            raise argparse.ArgumentTypeError(f"{problem}, got {text}")
        return value

    return parse


def field_like(cls: type, name: str, **changes: Any) -> Any:
    """A dataclass field declared as `cls`'s field `name` (its default, help and range), with
    `changes`: another `default=`, or metadata entries such as `help=`. `name` may be a dotted
    place in a section ("optim.lr"): the default is then `cls`'s own, not the section class's."""
    _, source = _place_field(cls, name)
    default = changes.pop("default", _place_default(cls, name) if "." in name else source.default)
    metadata = {**source.metadata, **changes}
    if default is dataclasses.MISSING:
        return dataclasses.field(default_factory=source.default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _place_default(cls: type, place: str) -> Any:
    """The default of the field at dotted `place` of `cls` as `cls` sets it (its section's default)."""
    head, _, rest = place.partition(".")
    value = _default(next(f for f in dataclasses.fields(cls) if f.name == head))
    for part in rest.split("."):
        value = getattr(value, part)
    return value


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset(),
                         prefix: str = "", command: bool = False, defaults: Any = None) -> None:
    """Add one `--field-name` flag per scalar or list field of dataclass `cls` (default: unset),
    and `--section-field` flags for the fields of each nested dataclass `section`, whose help
    shows the defaults its owner gives it (`defaults`: that section's default instance); the old
    spellings of moved fields (`moved_fields`) stay as hidden flags that warn when used.

    With `command`, `cls` declares a command's own arguments instead (`_add_command_arguments`)."""
    if command:
        _add_command_arguments(parser, cls, skip)
        return
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().split("\n")[0])
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            section = getattr(defaults, f.name) if defaults is not None else _default(f)
            add_config_arguments(parser, hints[f.name], prefix=f"{prefix}{f.name}_", defaults=section)
        else:
            shown = getattr(defaults, f.name) if defaults is not None and f.default is not dataclasses.MISSING \
                else f.default
            _add_flag(group, prefix + f.name, prefix + f.name, hints[f.name], f, shown=shown)
    for old, place in moved_places(cls).items():
        _add_moved_flags(group, cls, old, place, prefix)


def _add_flag(group: Any, flag_name: str, dest: str, hint: Any, f: dataclasses.Field, moved_to: str = "",
              shown: Any = dataclasses.MISSING) -> None:
    """The flag `--flag-name` setting `dest`, typed by the field's annotation, its help ending
    with the default `shown` (unset: the field's own); hidden and warning when used if it is the
    old spelling of a moved field (`moved_to`: the new flag)."""
    kind = _scalar_type(hint)
    if kind is None:
        return
    flag = "--" + flag_name.replace("_", "-")
    default = shown if shown is not dataclasses.MISSING else "(computed)"
    limits = bounds_text(f.metadata)
    help_text = f.metadata.get("help", "") + f" [default: {default}{'; ' + limits if limits else ''}]"
    extra: dict[str, Any] = {"action": _MovedFlag, "moved_to": moved_to, "help": argparse.SUPPRESS} if moved_to \
        else {"help": help_text}
    if kind is bool:
        group.add_argument(flag, dest=dest, type=_parse_bool, default=None, metavar="BOOL", **extra)
    elif kind == "list":
        group.add_argument(flag, dest=dest, type=_list_parser(hint), default=None, metavar="A,B,...", **extra)
    else:
        group.add_argument(flag, dest=dest, type=kind, default=None, **extra)


def _add_moved_flags(group: Any, cls: type, old: str, place: str, prefix: str) -> None:
    """Hidden flags with `old`'s spelling for the field (or every field of the section) now at `place`."""
    owner, f = _place_field(cls, place)
    hint = _hints(owner)[f.name]
    new = prefix + place.replace(".", "_")
    if new == prefix + old:  # spelled alike flat (model_name_or_path at model.name_or_path): the flag is the new one
        return
    if not dataclasses.is_dataclass(hint):
        _add_flag(group, prefix + old, new, hint, f, moved_to="--" + new.replace("_", "-"))
        return
    for name, (sub_owner, sub) in _leaf_fields(hint).items():
        _add_flag(group, f"{prefix}{old}_{name}", f"{new}_{name}", _hints(sub_owner)[sub.name], sub,
                  moved_to="--" + f"{new}_{name}".replace("_", "-"))


class _MovedFlag(argparse.Action):
    """Stores a flag's value like a plain one, with a one-line warning naming its new spelling."""

    def __init__(self, option_strings: Sequence[str], dest: str, moved_to: str = "", **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.moved_to = moved_to

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        log.warning("%s is deprecated: use %s", option_string, self.moved_to)
        setattr(namespace, self.dest, values)


# --------------------------------------------------------------------------- a command's own arguments
def _add_command_arguments(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset()) -> None:
    """One argument per field of `cls`, a dataclass of a command's own arguments: unlike config
    fields these take their defaults while parsing (handlers read them from the Namespace) and
    check their range there. A field without a default is required; a bool is a switch; a list
    is a repeatable flag or, when positional, one or more values. Metadata beside the range:
    `help` (text or a function giving it), `positional`, `aliases` (more flag names), `choices`
    (a list or a function giving it) and `metavar`. The help ends with the default unless it is
    unset (None, empty or False: the help says in words what unset means)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            names, options = _command_argument(f, hints[f.name])
            parser.add_argument(*names, **options)


def _command_argument(f: dataclasses.Field, hint: Any) -> tuple[list[str], dict[str, Any]]:
    """The names and `add_argument` options of one field of a command's arguments dataclass."""
    meta, kind = f.metadata, _scalar_type(hint)
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    default = None if required else _default(f)
    help_text = meta["help"]() if callable(meta.get("help")) else meta.get("help", "")
    options: dict[str, Any] = {}
    for key in ("choices", "metavar"):
        if key in meta:
            options[key] = list(meta[key]()) if key == "choices" and callable(meta[key]) else meta[key]
    if kind is bool:
        options["action"] = "store_true"
    elif kind == "list":
        if _list_item(hint) is not str:
            options["type"] = _list_item(hint)
        if meta.get("positional"):
            options["nargs"] = "+"
        else:
            options.update(action="append", default=default)
    else:
        bounds = {k: meta[k] for k in _BOUND_TESTS if k in meta}
        if bounds or kind is not str:
            options["type"] = bounded(kind, **bounds) if bounds else kind
    if not required and default not in (None, "", False) and default != []:
        limits = bounds_text(meta)
        help_text = f"{help_text} [default: {default}{'; ' + limits if limits else ''}]".lstrip()
    options["help"] = help_text
    if meta.get("positional"):
        return [f.name], options
    options.setdefault("default", default)
    if required:
        options["required"] = True
    return ["--" + f.name.replace("_", "-"), *meta.get("aliases", ())], {"dest": f.name, **options}


def _list_item(hint: Any) -> type:
    """The element type of a list annotation (str when it names none)."""
    args = typing.get_args(_optional_inner(hint))
    return args[0] if args and args[0] in (int, float, str) else str


def _checked(cls: type, name: str, value: Any) -> Any:
    """A config file's value for a field, as its annotation's type; a mismatch (2.7 for an
    int, "yes" for a bool) is a ValueError naming the field, never a silent conversion."""
    error = _type_error(cls, name, value)
    if error is not None:
        raise error
    return float(value) if _scalar_type(_hints(cls)[name]) is float and value is not None else value


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
    warned: set[str] = set()
    for file in files:
        for key, value in file.items():
            key = _moved_key(cls, key.replace("-", "_"), warned)
            owner = next((n for n in sections if key.startswith(n + "_")), None)
            if key in sections:
                if not isinstance(value, Mapping):
                    raise ValueError(f"{cls.__name__} section {key!r} must be a mapping of "
                                     f"{hints[key].__name__} fields, got {value!r}")
                section_files[key].append(dict(value))
            elif key in fields:
                values[key] = _checked(cls, key, value)
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


def flat_fields(config: Any, unmoved: bool = False) -> dict[str, Any]:
    """A dataclass instance's fields with each section spread as `<section>_<field>` (the flag
    names); with `unmoved`, each moved field (`moved_fields`) under its old flat name, as
    `unmoved_fields` records a config."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}_{k}": v for k, v in flat_fields(value).items()})
        else:
            out[f.name] = value
    if unmoved:
        old = _old_flat_names(type(config))
        out = {old.get(k, k): v for k, v in out.items()}
    return out


def unmoved_fields(config: Any) -> dict[str, Any]:
    """`dataclasses.asdict(config)` spelled as before its fields moved (`moved_fields`): each moved
    field under its old name, the sections the moves emptied left out. What records a config (a
    run's saved settings, stage keys) uses it, so records from before a move still compare equal."""
    out = dataclasses.asdict(config)
    moves = moved_places(type(config))
    for old, place in moves.items():
        *path, last = place.split(".")
        holder = out
        for part in path:
            holder = holder[part]
        out[old] = holder.pop(last)
    for head in {place.split(".")[0] for place in moves.values() if "." in place}:
        if out.get(head) == {}:
            del out[head]
    return out


def replace_places(config: T, places: Mapping[str, Any]) -> T:
    """A copy of dataclass `config` with the fields at dotted `places` ("optim.lr": 1e-5) set;
    each section is replaced whole, then `config` once, so only the result is validated."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for place, value in places.items():
        head, _, rest = place.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    top.update({head: replace_places(getattr(config, head), sub) for head, sub in nested.items()})
    return dataclasses.replace(config, **top)


# --------------------------------------------------------------------------- sections of another config
def section_of(cls: type, name: str, places: Sequence[str], doc: str, module: str, **defaults: Any) -> type:
    """A config dataclass `name` holding the fields of dataclass `cls` at `places` (a field's name,
    or a dotted place in a section of `cls`: "optim.lr"), each named by its last part (type,
    default, help and range as `cls` gives them; `defaults` replaces some defaults by those
    names), checked like any config: a section that lets a larger config set only those of
    `cls`'s fields. `section_places` gives an instance's values by their places in `cls`."""
    names = {place.rpartition(".")[2]: place for place in places}
    fields = [(n, _place_hint(cls, place),
               field_like(cls, place, **({"default": defaults[n]} if n in defaults else {})))
              for n, place in names.items()]
    section = dataclasses.make_dataclass(name, fields, namespace={"__doc__": doc, "__post_init__": check_fields})
    section.__module__ = module
    section.__places__ = names  # type: ignore[attr-defined]
    return section


def section_places(section: Any) -> dict[str, Any]:
    """The values of a `section_of` section by their places in the config it is a section of,
    for `replace_places`."""
    return {place: getattr(section, n) for n, place in type(section).__places__.items()}


# --------------------------------------------------------------------------- moved fields
def moved_places(cls: type) -> dict[str, str]:
    """The old names of `cls`'s moved fields and their new places ("steps": "train.steps")."""
    return dict(getattr(cls, "__moved_fields__", {}))


def _place_field(cls: type, place: str) -> tuple[type, dataclasses.Field]:
    """(the dataclass owning the field at dotted `place` of `cls`, that field)."""
    head, _, rest = place.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if head not in fields:
        raise ValueError(f"{cls.__name__} has no field {head!r} (in moved place {place!r})")
    return _place_field(_hints(cls)[head], rest) if rest else (cls, fields[head])


def _place_hint(cls: type, place: str) -> Any:
    """The annotation of the field at dotted `place` of `cls`."""
    owner, f = _place_field(cls, place)
    return _hints(owner)[f.name]


def _leaf_fields(cls: type) -> dict[str, tuple[type, dataclasses.Field]]:
    """Every non-section field of dataclass `cls`, nested ones too, by flat name, with its owner."""
    out: dict[str, tuple[type, dataclasses.Field]] = {}
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            out.update({f"{f.name}_{k}": v for k, v in _leaf_fields(hint).items()})
        elif f.init:
            out[f.name] = (cls, f)
    return out


def _moved_key(cls: type, key: str, warned: set[str]) -> str:
    """A config file's key in its new flat spelling when it names a moved field (or a field of a
    moved section, spelled flat), with a one-line warning once per key; else `key` itself (also
    when the old name is the new flat spelling: model_name_or_path for model.name_or_path)."""
    moves = moved_places(cls)
    if not moves or key in {f.name for f in dataclasses.fields(cls)}:
        return key
    if key in moves:
        place = moves[key]
    else:
        old = next((o for o, p in moves.items()
                    if key.startswith(o + "_") and dataclasses.is_dataclass(_place_hint(cls, p))), None)
        if old is None:
            return key
        place = f"{moves[old]}.{key[len(old) + 1:]}"
    if place.replace(".", "_") == key:
        return key
    if key not in warned:
        warned.add(key)
        log.warning("config key %r is deprecated: write it as %s", key, place)
    return place.replace(".", "_")


def _old_flat_names(cls: type) -> dict[str, str]:
    """The flat names (`flat_fields`) of `cls`'s moved fields, each mapped to its old flat name."""
    out: dict[str, str] = {}
    for old, place in moved_places(cls).items():
        new, hint = place.replace(".", "_"), _place_hint(cls, place)
        if dataclasses.is_dataclass(hint):
            out.update({f"{new}_{name}": f"{old}_{name}" for name in _leaf_fields(hint)})
        else:
            out[new] = old
    return out


def _replaced(config: Any, place: str, value: Any) -> Any:
    """A copy of dataclass `config` with the field at dotted `place` set to `value`."""
    head, _, rest = place.partition(".")
    return dataclasses.replace(config, **{head: _replaced(getattr(config, head), rest, value) if rest else value})


def _fold_moved(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords with the old names of moved fields folded into their new places
    (after the section given, if any: an old keyword wins, as `dataclasses.replace` needs)."""
    moves = moved_places(cls)
    old = [k for k in kwargs if k in moves]
    if not old:
        return kwargs
    kwargs, fields = dict(kwargs), {f.name: f for f in dataclasses.fields(cls)}
    for name in old:
        place = moves[name]
        warnings.warn(f"{cls.__name__}({name}=...) is deprecated: use {place}", DeprecationWarning, stacklevel=3)
        head, _, rest = place.partition(".")
        value = kwargs.pop(name)
        if rest:
            value = _replaced(kwargs[head] if head in kwargs else _default(fields[head]), rest, value)
        kwargs[head] = value
    return kwargs


def _read_moved(self: Any, name: str) -> Any:
    """An old field name read on an instance: the value at its new place (read-only)."""
    place = moved_places(type(self)).get(name)
    if place is None:
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
    value = self
    for part in place.split("."):
        value = object.__getattribute__(value, part)
    return value


def moved_fields(moves: Mapping[str, str]) -> Callable[[type[T]], type[T]]:
    """Class decorator (above `@dataclass`) for a config whose fields moved: `moves` maps each
    old name to its new dotted place ("steps": "train.steps"; a moved section, "taco":
    "train.taco", moves its flat keys too). Old file keys and flags still load, each with a
    one-line deprecation warning; the constructor takes old keywords (a DeprecationWarning)
    and instances read old names."""
    def decorate(cls: type[T]) -> type[T]:
        for place in moves.values():
            _place_field(cls, place)  # a wrong place fails at import
        cls.__moved_fields__ = dict(moves)  # type: ignore[attr-defined]
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **_fold_moved(cls, kwargs))

        cls.__init__ = __init__  # type: ignore[method-assign]
        cls.__getattr__ = _read_moved  # type: ignore[attr-defined]
        return cls

    return decorate
