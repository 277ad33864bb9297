"""Dataclass configs become CLI flags and merge defaults < file < flags."""
import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from multitask_retriever.config import (add_config_arguments, config_from_args, flat_fields, load_config_file,
                                        moved_fields, replace_places, section_of, section_places, unmoved_fields)


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


@dataclass
class Section:
    """A nested section."""

    beta: float = 0.5
    exact: bool = False


@dataclass
class WithSection:
    steps: int = 1
    taco: Section = field(default_factory=Section)


def test_a_section_is_flat_on_the_command_line_and_nested_or_flat_in_a_file():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, WithSection)
    args = parser.parse_args(["--taco-exact", "true"])
    assert config_from_args(WithSection, args, {"taco": {"beta": 0.9}, "steps": 3}) == \
        WithSection(steps=3, taco=Section(beta=0.9, exact=True))
    assert config_from_args(WithSection, None, {"taco_beta": 0.7}) == WithSection(taco=Section(beta=0.7))


def test_later_config_files_override_earlier_ones_field_by_field():
    files = [{"steps": 2, "taco": {"beta": 0.1, "exact": True}}, {"steps": 5, "taco_beta": 0.2}]
    assert config_from_args(WithSection, None, files) == WithSection(steps=5, taco=Section(beta=0.2, exact=True))


def test_unknown_section_keys_are_named():
    for values in ({"taco": {"betta": 1}}, {"taco_betta": 1}):
        with pytest.raises(ValueError, match="unknown Section field 'betta'; known: beta, exact"):
            config_from_args(WithSection, None, values)
    with pytest.raises(ValueError, match="WithSection section 'taco' must be a mapping of Section fields"):
        config_from_args(WithSection, None, {"taco": 3})


def test_flat_fields_spell_sections_as_their_flags():
    assert flat_fields(WithSection(taco=Section(beta=0.3))) == {"steps": 1, "taco_beta": 0.3, "taco_exact": False}


@pytest.mark.parametrize("field, value", [("steps", 2.7), ("steps", True), ("lr", "fast"), ("method", 3)])
def test_a_file_value_of_the_wrong_type_is_named_not_converted(field, value):
    from multitask_retriever.trainer import TrainConfig

    with pytest.raises(ValueError, match=rf"(TrainConfig|OptimizerConfig) field '{field}' expects"):
        config_from_args(TrainConfig, None, {field: value})


def test_an_int_is_a_float_in_a_file():
    from multitask_retriever.trainer import TrainConfig

    assert config_from_args(TrainConfig, None, {"lr": 1}).lr == 1.0


def test_every_committed_config_file_loads():
    """Each YAML under scripts/configs fills its dataclass (TrainConfig for train-*, else ExperimentConfig)."""
    from pathlib import Path

    from multitask_retriever.experiment import ExperimentConfig
    from multitask_retriever.trainer import TrainConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "scripts" / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cls = TrainConfig if path.name.startswith("train-") else ExperimentConfig
        config_from_args(cls, None, load_config_file(path), **({} if cls is TrainConfig else {"data_dir": "d"}))


# --------------------------------------------------------------------------- sections of another config, moved fields
Budget = section_of(WithSection, "Budget", ["steps", "taco"], doc="Some of WithSection's fields.", module=__name__,
                    steps=4)


@moved_fields({"steps": "budget.steps", "taco": "budget.taco"})
@dataclass
class Moved:
    """A config whose `steps` and `taco` moved into its `budget` section."""

    name: str = "x"
    budget: Budget = field(default_factory=Budget)


def test_a_section_of_another_config_has_its_fields_with_the_defaults_given():
    assert [f.name for f in dataclasses.fields(Budget)] == ["steps", "taco"]
    assert Budget() == Budget(steps=4, taco=Section())
    with pytest.raises(ValueError, match="Budget field 'steps' expects int, got 'many'"):
        Budget(steps="many")


def test_old_file_keys_load_as_their_new_places():
    old = {"steps": 3, "taco": {"beta": 0.1}, "taco_exact": True}
    new = {"budget": {"steps": 3, "taco": {"beta": 0.1, "exact": True}}}
    assert config_from_args(Moved, None, old) == config_from_args(Moved, None, new) == \
        Moved(budget=Budget(steps=3, taco=Section(beta=0.1, exact=True)))


def test_each_old_key_warns_once_in_one_line_naming_its_new_place(caplog):
    config_from_args(Moved, None, [{"steps": 3, "taco_beta": 0.2}, {"steps": 5}])
    assert [r.getMessage() for r in caplog.records] == [
        "config key 'steps' is deprecated: write it as budget.steps",
        "config key 'taco_beta' is deprecated: write it as budget.taco.beta"]


def test_old_flags_set_the_new_places_and_warn(caplog):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Moved)
    old = config_from_args(Moved, parser.parse_args(["--steps", "3", "--taco-exact", "true"]))
    assert old == config_from_args(Moved, parser.parse_args(["--budget-steps", "3", "--budget-taco-exact", "true"]))
    assert old == Moved(budget=Budget(steps=3, taco=Section(exact=True)))
    assert [r.getMessage() for r in caplog.records] == ["--steps is deprecated: use --budget-steps",
                                                        "--taco-exact is deprecated: use --budget-taco-exact"]
    assert "--steps" not in parser.format_help() and "--budget-steps" in parser.format_help()


def test_old_keywords_and_attributes_reach_the_new_places():
    with pytest.deprecated_call(match=r"Moved\(steps=...\) is deprecated: use budget.steps"):
        config = Moved(steps=3, taco=Section(beta=0.1))
    assert config == Moved(budget=Budget(steps=3, taco=Section(beta=0.1)))
    assert (config.steps, config.taco) == (3, Section(beta=0.1))
    replaced = dataclasses.replace(config, taco=Section(exact=True))
    assert replaced.budget == Budget(steps=3, taco=Section(exact=True))
    with pytest.raises(AttributeError, match="'Moved' object has no attribute 'stepz'"):
        config.stepz


def test_records_spell_a_moved_config_as_before_its_moves():
    config = Moved(budget=Budget(steps=3, taco=Section(beta=0.1)))
    assert unmoved_fields(config) == {"name": "x", "steps": 3, "taco": {"beta": 0.1, "exact": False}}
    assert flat_fields(config, unmoved=True) == {"name": "x", "steps": 3, "taco_beta": 0.1, "taco_exact": False}


def test_a_section_of_dotted_places_takes_the_owners_defaults_and_gives_its_values_back_by_place():
    Part = section_of(Moved, "Part", ["budget.steps", "name"], doc="Two of Moved's fields.", module=__name__)
    assert Part() == Part(steps=4, name="x")  # Budget's 4 (as Moved builds it), not WithSection's 1
    assert section_places(Part(steps=9)) == {"budget.steps": 9, "name": "x"}
    assert replace_places(Moved(), section_places(Part(steps=9))) == Moved(budget=Budget(steps=9))


def test_replace_places_builds_each_section_before_checking_the_config():
    @dataclass
    class Pair:
        low: int = 0
        high: int = 1

        def __post_init__(self):
            if self.low > self.high:
                raise ValueError("low > high")

    @dataclass
    class Owner:
        pair: Pair = field(default_factory=Pair)

    assert replace_places(Owner(), {"pair.low": 5, "pair.high": 6}).pair == Pair(5, 6)


def test_a_sections_flags_show_the_defaults_its_owner_gives_it():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Moved)
    assert " ".join(parser.format_help().split()).count("--budget-steps BUDGET_STEPS [default: 4]") == 1
