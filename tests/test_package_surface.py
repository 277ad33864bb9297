"""What `import multitask_retriever` offers: the public names, loaded lazily, and one `create`
signature for every reranker."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import multitask_retriever
from kilt.tasks import check_queries
from conftest import REPO

PUBLIC = ["DualEncoder", "Index", "Retriever", "Pipeline", "load_reranker", "make_reranker", "train"]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": ""}).stdout.strip()


def test_importing_the_package_loads_no_model_library():
    loaded = _run("import sys, multitask_retriever; "
                  "print(sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))")
    assert loaded == "[]"


def test_asking_for_one_name_loads_only_what_it_needs():
    loaded = _run("import sys, multitask_retriever as m; m.Pipeline; "
                  "print(sorted(x for x in ('transformers', 'faiss') if x in sys.modules))")
    assert loaded == "[]"


def test_the_public_names_are_the_modules_own_objects():
    from multitask_retriever import DualEncoder, Index, Pipeline, Retriever, load_reranker, make_reranker, train
    from multitask_retriever import encoder, indexing, pipeline, rerank, retriever, training

    assert (DualEncoder, Index, Retriever, Pipeline) == (encoder.DualEncoder, indexing.Index,
                                                        retriever.Retriever, pipeline.Pipeline)
    assert (load_reranker, make_reranker, train) == (rerank.load_reranker, rerank.make_reranker, training.train)


def test_all_lists_every_public_name_and_the_version():
    assert set(PUBLIC) | {"__version__"} <= set(multitask_retriever.__all__)
    assert set(PUBLIC) <= set(dir(multitask_retriever))


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'Trainer'"):
        multitask_retriever.Trainer  # noqa: B018


def test_train_runs_the_multitask_trainer(monkeypatch):
    from multitask_retriever import train
    from multitask_retriever.trainer import MultitaskTrainer, TrainConfig

    calls = []
    monkeypatch.setattr(MultitaskTrainer, "train",
                        lambda self, resume=False, stop_after=None: calls.append((self.config, resume, stop_after)))
    config = TrainConfig(output_dir="run")
    train(config, resume=True)
    assert calls == [(config, True, None)]


def test_every_reranker_create_takes_the_start_model_as_model():
    from multitask_retriever.rerank import METHODS, reranker_class

    for method in METHODS:
        parameters = list(inspect.signature(reranker_class(method).create).parameters)
        assert parameters[0] == "model", method


# --------------------------------------------------------------------------- the one query check
def test_queries_come_back_as_a_list():
    assert check_queries(q for q in ["who wrote hamlet", "paris"]) == ["who wrote hamlet", "paris"]


@pytest.mark.parametrize("queries, message", [
    ("who wrote hamlet", "expected a sequence of queries, got one str"),
    (["fine", "  "], "empty query (number 1 of the call): '  '"),
    (["fine", ""], "empty query (number 1 of the call): ''"),
    (["fine", None], "query number 1 of the call is a NoneType, not a str: None"),
    ([b"bytes"], "query number 0 of the call is a bytes, not a str: b'bytes'"),
])
def test_a_bad_query_is_one_value_error_naming_it(queries, message):
    with pytest.raises(ValueError) as caught:
        check_queries(queries)
    assert str(caught.value) == message


def test_rerankers_check_queries_with_the_same_function():
    from multitask_retriever.rerank.base import check_rows

    with pytest.raises(ValueError, match="got one str"):
        check_rows("who wrote hamlet", [["p"]])
    with pytest.raises(ValueError, match=r"^empty query \(number 0 of the call\)"):
        check_rows([" "], [["p"]])
