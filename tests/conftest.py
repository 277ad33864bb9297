"""Shared fixtures: paths to the bundled mini KILT and ../shared, and tiny saved models."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MINI_KILT = REPO / "tests" / "fixtures" / "mini_kilt"
SHARED = REPO.parent / "shared"

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "MTR_CACHE" not in os.environ:  # digests and BM25 indexes of test files stay out of the user's cache
    import atexit
    import tempfile

    os.environ["MTR_CACHE"] = tempfile.mkdtemp(prefix="mtr-test-cache-")
    atexit.register(shutil.rmtree, os.environ["MTR_CACHE"], ignore_errors=True)

import tiny_models  # noqa: E402


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch) -> None:
    """Tests not marked gpu run on CPU even where CUDA is present: their exact expectations
    (equal scores, byte-identical resumes) are float32 CPU results that bf16 / TF32 on a GPU
    do not reproduce. Tests marked gpu cover the CUDA paths."""
    if request.node.get_closest_marker("gpu") is None:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("ACCELERATE_USE_CPU", "true")


@pytest.fixture(scope="session")
def mini_kilt() -> Path:
    """The hand-written miniature KILT benchmark (also the quickstart's data)."""
    return MINI_KILT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout; tests that need it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (only present in the project's CI and dev machines)")
    return SHARED


@pytest.fixture(scope="session")
def realkilt(shared_dir: Path) -> Path:
    path = shared_dir / "realkilt"
    if not (path / "knowledge_source.jsonl").is_file():
        pytest.skip(f"{path}/knowledge_source.jsonl is absent")
    return path


def _model_fixture(builder):
    @pytest.fixture(scope="session")
    def fixture(tmp_path_factory) -> Path:
        return builder(tmp_path_factory.mktemp(builder.__name__.removeprefix("make_")))

    return fixture


tiny_t5 = _model_fixture(tiny_models.make_tiny_t5)
tiny_t5_encoder = _model_fixture(tiny_models.make_tiny_t5_encoder)
tiny_t5_lm = _model_fixture(tiny_models.make_tiny_t5_lm)
tiny_bert = _model_fixture(tiny_models.make_tiny_bert)
tiny_gpt2 = _model_fixture(tiny_models.make_tiny_gpt2)
tiny_llama = _model_fixture(tiny_models.make_tiny_llama)


def kilt_folder(source: Path, folder: Path, tasks: list[str]) -> Path:
    """`folder` holding `source`'s knowledge source and the train and dev files of `tasks`."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "knowledge_source.jsonl", folder)
    for task in tasks:
        for split in ("train", "dev"):
            shutil.copy(source / f"{task}-{split}-kilt.jsonl", folder)
    return folder


#: the mini KILT tasks the trainer tests train on
TRAIN_TASKS = ["nq", "fever", "wow"]


@pytest.fixture(scope="module")
def training_data(mini_kilt, tmp_path_factory):
    """(PassageStore, {task: [TrainingExample]}) of the mini KILT's TRAIN_TASKS, BM25 negatives."""
    from kilt.passages import PassageStore, write_passages
    from multitask_retriever.data import build_training_examples, task_train_files

    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    store = PassageStore(path, progress=False)
    return store, build_training_examples(task_train_files(mini_kilt, TRAIN_TASKS), store, "bm25", progress=False)
