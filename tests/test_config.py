"""Dataclass configs become CLI flags and merge defaults < file < flags."""
import argparse
from dataclasses import dataclass, field

import pytest

from multitask_retriever.config import add_config_arguments, config_from_args, load_config_file


@dataclass
class Demo:
    """A demo config."""

    lr: float = 1e-3
    steps: int = 10
    name: str = "x"
    fp16: bool = False
    tasks: list[str] = field(default_factory=lambda: ["nq"])
    mapping: dict = field(default_factory=dict)


def _parser():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Demo)
    return parser


def test_flags_override_file_and_defaults(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.5\nsteps: 3\n")
    args = _parser().parse_args(["--steps", "7", "--fp16", "true", "--tasks", "nq,fever"])
    cfg = config_from_args(Demo, args, load_config_file(cfg_file))
    assert cfg == Demo(lr=0.5, steps=7, name="x", fp16=True, tasks=["nq", "fever"])


def test_unset_flags_keep_defaults():
    assert config_from_args(Demo, _parser().parse_args([])) == Demo()


def test_non_scalar_fields_get_no_flag():
    with pytest.raises(SystemExit):
        _parser().parse_args(["--mapping", "a"])


def test_unknown_file_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown Demo field 'lrr'"):
        config_from_args(Demo, None, {"lrr": 1})


def test_bad_config_file_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="bad.yaml: config must be a mapping"):
        load_config_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config_file(tmp_path / "missing.yaml")
