"""`mtr`'s flags are generated: each command's own flags from the arguments dataclass beside its
handler (config.add_config_arguments(..., command=True)), its config flags from its config
dataclasses; defaults show in --help without being restated."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from multitask_retriever.cli import COMMANDS, arg, build_parser, main
from multitask_retriever.config import add_config_arguments


@dataclass(kw_only=True)
class DemoArgs:
    source: str = arg(help="input file", positional=True)
    files: list[str] = arg(help="more files", positional=True)
    out: str = arg(help="output file")
    k: int = arg(100, "hits per query", min=1)
    model: str = arg("", "start model", aliases=("--llm",))
    option: list[str] = arg([], "KEY=VALUE (repeatable)", metavar="KEY=VALUE")
    style: str = arg("a", choices=lambda: ["a", "b"])
    force: bool = arg(False, "do it anyway")
    nprobe: int | None = arg(None, "cells visited [as saved]")


def _demo() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo")
    add_config_arguments(parser, DemoArgs, command=True)
    return parser


def test_fields_become_arguments_with_their_defaults():
    args = _demo().parse_args(["s", "f1", "f2", "--out", "o"])
    assert vars(args) == {"source": "s", "files": ["f1", "f2"], "out": "o", "k": 100, "model": "", "option": [],
                          "style": "a", "force": False, "nprobe": None}


def test_aliases_switches_repeats_and_types():
    args = _demo().parse_args(["s", "f", "--out", "o", "--llm", "m", "--option", "a=1", "--option", "b=2",
                               "--force", "--nprobe", "8", "--style", "b"])
    assert (args.model, args.option, args.force, args.nprobe, args.style) == ("m", ["a=1", "b=2"], True, 8, "b")


def test_a_repeated_flag_starts_from_an_empty_list_each_parse():
    parser = _demo()
    parser.parse_args(["s", "f", "--out", "o", "--option", "a=1"])
    assert parser.parse_args(["s", "f", "--out", "o"]).option == []


@pytest.mark.parametrize("argv, error", [
    (["s", "f"], "the following arguments are required: --out"),
    (["s", "f", "--out", "o", "--k", "0"], "argument --k: must be >= 1, got 0"),
    (["s", "f", "--out", "o", "--style", "c"], "argument --style: invalid choice: 'c'"),
])
def test_required_flags_ranges_and_choices_are_checked_while_parsing(argv, error, capsys):
    with pytest.raises(SystemExit):
        _demo().parse_args(argv)
    assert error in capsys.readouterr().err


def test_help_shows_set_defaults_and_ranges_but_not_unset_ones():
    helps = {a.dest: a.help for a in _demo()._actions}
    assert helps["k"] == "hits per query [default: 100; >= 1]"
    assert helps["style"] == "[default: a]"
    assert (helps["model"], helps["force"], helps["nprobe"]) == ("start model", "do it anyway", "cells visited [as saved]")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_registered_command_is_a_subcommand_in_order():
    assert list(_subparsers()) == ["chunk", "bm25", "kilt-subset", "evaluate", "encode", "index", "retrieve", "search",
                                   "train", "mine-negatives", "train-reranker", "pipeline", "benchmark-quality"]


def test_each_field_of_a_commands_arguments_is_one_of_its_arguments():
    parsers = _subparsers()
    for name, spec in COMMANDS.items():
        if spec.args is None:
            continue
        dests = {a.dest for a in parsers[name]._actions}
        assert {f.name for f in dataclasses.fields(spec.args)} <= dests, name


def test_search_is_retrieve_by_another_name():
    assert COMMANDS["search"] is COMMANDS["retrieve"]
    retrieve, search = _subparsers()["retrieve"], _subparsers()["search"]
    assert [a.option_strings for a in retrieve._actions] == [a.option_strings for a in search._actions]


def test_a_config_field_the_command_declares_itself_is_not_added_twice():
    loss = [a for a in _subparsers()["train-reranker"]._actions if a.dest == "loss"]
    assert len(loss) == 1 and "lce" in loss[0].choices


def test_help_states_each_default_once(capsys):
    assert main(["mine-negatives", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "passages retrieved per query [default: 100; >= 1]" in out and "[100]" not in out
