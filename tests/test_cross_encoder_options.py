"""An experiment's `cross_encoder_options`: CrossEncoderConfig fields checked when the config is read."""
from __future__ import annotations

import pytest

from multitask_retriever.config import config_from_args
from multitask_retriever.experiment import ExperimentConfig


def test_cross_encoder_options_are_crossencoderconfig_fields():
    config = config_from_args(ExperimentConfig, None, {"cross_encoder_options": {"lora_rank": 16,
                                                                                 "storage_dtype": "float16"}})
    assert config.cross_encoder_options == {"lora_rank": 16, "storage_dtype": "float16"}


def test_an_unknown_cross_encoder_option_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown CrossEncoderConfig fields \['rank'\]; known: .*lora_rank"):
        ExperimentConfig(cross_encoder_options={"rank": 16})


def test_an_invalid_cross_encoder_option_is_refused():
    with pytest.raises(ValueError, match="lora_rank must be >= 0, got -1"):
        ExperimentConfig(cross_encoder_options={"lora_rank": -1})
