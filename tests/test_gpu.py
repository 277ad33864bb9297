"""The CUDA paths: encoding, exact search, a dual-encoder training step and LLM scoring.

Skipped with a reason where torch sees no CUDA device; run them with `pytest -m gpu`.
Half precision (bf16 / fp16) and TF32 make CUDA results differ from CPU float32 in the
last digits, so each test compares with CPU float32 within a tolerance.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kilt.passages import PassageStore, write_passages
from multitask_retriever.config import replace_places
from multitask_retriever.data import build_training_examples, task_train_files
from multitask_retriever.encoder import DualEncoder
from multitask_retriever.indexing import Index, IndexConfig
from multitask_retriever.models import packaged_minilm_path
from multitask_retriever.rerank.peft_baselines import ZeroShotReranker
from multitask_retriever.trainer import MultitaskTrainer, TrainConfig

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch sees none)")]

QUERIES = ["who wrote hamlet", "paris", "what is the boiling point of water at sea level in degrees celsius",
           "is the eiffel tower in france"]
PASSAGES = [("Hamlet", "A tragedy written by William Shakespeare around 1600."),
            ("Paris", "The capital and largest city of France, on the Seine."),
            ("Water", "At sea level water boils at 100 degrees Celsius. " * 8)]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_cuda_encoding_agrees_with_cpu_and_keeps_the_float32_weights():
    cpu = DualEncoder.from_pretrained(packaged_minilm_path())
    cuda = DualEncoder.from_pretrained(packaged_minilm_path()).to("cuda")
    assert cuda._compute_dtype() in (torch.bfloat16, torch.float16)
    for encode in (lambda e: e.encode_queries(QUERIES, task="nq", batch_size=2),
                   lambda e: e.encode_passages(PASSAGES, batch_size=2, dtype=np.float16)):
        want, got = encode(cpu).astype(np.float32), encode(cuda).astype(np.float32)
        assert got.shape == want.shape
        assert _cosine(got, want).min() > 0.999
    assert {p.dtype for p in cuda.backbone.parameters()} == {torch.float32}
    assert {p.device.type for p in cuda.backbone.parameters()} == {"cuda"}


def test_cuda_encoding_of_a_t5_first_decoder_backbone(tiny_t5):
    cpu = DualEncoder.from_pretrained(tiny_t5)
    cuda = DualEncoder.from_pretrained(tiny_t5).to("cuda")
    got, want = cuda.encode_queries(QUERIES, task="nq"), cpu.encode_queries(QUERIES, task="nq")
    assert np.isfinite(got).all() and _cosine(got, want).min() > 0.99


def test_cuda_exact_search_in_half_precision_ranks_as_float32_except_near_ties():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((20_000, 64)).astype(np.float32)
    queries = rng.standard_normal((300, 64)).astype(np.float32)
    index = Index.build(vectors, IndexConfig(backend="torch", device="cuda"))
    assert index.on_gpu and index._searcher.dtype == torch.float16
    batch, rows = index._searcher._batch_shape(len(queries), 50)
    assert batch == len(queries) and rows == 20_000  # free GPU memory takes every query at once
    scores, ids = index.search(queries, 50)
    want_scores, want_ids = Index.build(vectors, IndexConfig(backend="torch", device="cpu")).search(queries, 50)
    exact = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    near = 2 ** -9 * (np.abs(queries) @ np.abs(vectors).T).max(1, keepdims=True)
    gap = np.abs(np.take_along_axis(exact, ids, 1) - np.take_along_axis(exact, want_ids, 1))
    assert (gap <= near).all() and (ids == want_ids).mean() > 0.9
    np.testing.assert_allclose(scores, want_scores, atol=float(near.max()))


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate keeps one device per process; the CPU tests around this one use CPU."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize("method", ["naive", "taco"])
def test_a_dual_encoder_training_step_runs_on_cuda(method, tiny_bert, mini_kilt, tmp_path, fresh_accelerator_state):
    passages = tmp_path / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", passages, progress=False)
    store = PassageStore(passages, progress=False)
    examples = build_training_examples(task_train_files(mini_kilt, ["nq", "fever"]), store, "none", progress=False)
    config = replace_places(TrainConfig(), {
        "model.name_or_path": str(tiny_bert), "data.tasks": ["nq", "fever"], "method": method,
        "data.per_task_batch_size": 4, "data.n_negatives": 1, "optim.steps": 2, "optim.lr": 1e-3,
        "data.negatives": "none", "optim.mixed_precision": "bf16" if torch.cuda.is_bf16_supported() else "fp16",
        "output_dir": str(tmp_path / "run"), "progress": False})
    trainer = MultitaskTrainer(config, examples=examples, store=store)
    result = trainer.train()
    assert result.step == 2 and all(math.isfinite(loss) for loss in result.losses)
    assert trainer.encoder().device.type == "cuda"


def test_llm_scoring_on_cuda_agrees_with_cpu(tiny_llama):
    passages = [text for _, text in PASSAGES]
    want = ZeroShotReranker.create(str(tiny_llama)).rerank(QUERIES[0], passages)
    cuda = ZeroShotReranker.create(str(tiny_llama)).to("cuda")
    assert cuda.device.type == "cuda"
    assert cuda.rerank(QUERIES[0], passages) == pytest.approx(want, abs=0.05)
