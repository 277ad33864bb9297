"""No input crashes a reranker: 500-word queries and 5,000-word passages, for every reranker
kind, in scoring, in a training step and in a teacher file; and the cut itself, token by
token: the query to its own maximum first, then the passage to the rest of the budget."""
from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from multitask_retriever.config import replace_places
from multitask_retriever.rerank import make_reranker
from multitask_retriever.rerank.examples import RerankExample, write_teacher_file
from multitask_retriever.rerank.train import RerankTrainConfig, train_reranker

WORDS = ("the prince of denmark wrote a play about revenge in the castle of elsinore while his uncle "
         "claudius ruled and the ghost of his father walked on the walls at night").split()
LLM_METHODS = ["qpeft-a", "qpeft-r", "idspam", "prompt-tuning", "lora", "zero-shot"]


def _text(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


QUERY = _text(500, 0)
PASSAGES = [_text(5000, 1), _text(5000, 2), "a short passage"]


def _reranker(method: str, request):
    """Each kind on a tiny model; LLM passages may be longer than the tiny GPT-2's 512 positions,
    so only the pair budget keeps the prompt inside them."""
    torch.manual_seed(0)
    if method == "cross-encoder":
        return make_reranker(method, request.getfixturevalue("tiny_bert"))
    return make_reranker(method, str(request.getfixturevalue("tiny_gpt2")), max_passage_tokens=600)


@pytest.fixture(autouse=True)
def _truncation_warnings_are_expected():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(truncated|cut further).*")
        yield


@pytest.mark.parametrize("method", ["cross-encoder", *LLM_METHODS])
def test_every_reranker_scores_long_queries_and_passages(method, request):
    reranker = _reranker(method, request)
    scores = reranker.rerank(QUERY, PASSAGES)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    rows = reranker.score([QUERY, "who wrote hamlet"], [PASSAGES[:2], PASSAGES[1:]])
    assert rows.shape == (2, 2) and torch.isfinite(rows).all()


@pytest.mark.parametrize("method", ["cross-encoder", *LLM_METHODS[:-1]])
def test_every_trainable_reranker_takes_a_training_step_on_long_inputs(method, request, tmp_path):
    reranker = _reranker(method, request)
    before = {n: p.detach().clone() for n, p in reranker.named_parameters() if p.requires_grad}
    examples = [RerankExample(qid="q", query=QUERY, positive=PASSAGES[0], candidates=PASSAGES[1:])]
    config = replace_places(RerankTrainConfig(batch_size=1, group_size=3, output_dir=str(tmp_path), progress=False),
                            {"optim.lr": 1e-2, "optim.steps": 1})
    result = train_reranker(reranker, examples, config)
    assert math.isfinite(result.loss)
    after = dict(reranker.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_a_teacher_file_scores_long_inputs(request, tmp_path):
    teacher = _reranker("zero-shot", request)
    example = RerankExample(qid="q", query=QUERY, positive=PASSAGES[0], candidates=PASSAGES[1:],
                            passage_ids=["0", "1", "2"])
    assert write_teacher_file(teacher, [example], tmp_path / "teacher.jsonl", progress=False) == 3


# --------------------------------------------------------------------------- the cut, token by token
def test_the_cross_encoder_keeps_the_querys_budget_and_gives_the_passage_the_rest(tiny_bert):
    reranker = make_reranker("cross-encoder", tiny_bert, max_length=64, max_query_length=16)
    seen = []
    reranker.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    reranker.rerank(QUERY, [PASSAGES[0]])
    tokenize = reranker.tokenizer
    query_ids = tokenize(QUERY, add_special_tokens=False)["input_ids"]
    passage_ids = tokenize(PASSAGES[0], add_special_tokens=False)["input_ids"]
    cls, sep = tokenize.cls_token_id, tokenize.sep_token_id
    # [CLS] 16 query tokens [SEP] 64 - 16 - 3 = 45 passage tokens [SEP]
    expected = [cls, *query_ids[:16], sep, *passage_ids[:45], sep]
    assert seen[0]["input_ids"][0].tolist() == expected
    assert seen[0]["token_type_ids"][0].tolist() == [0] * 18 + [1] * 46


def test_a_short_query_leaves_the_passage_more_room(tiny_bert):
    reranker = make_reranker("cross-encoder", tiny_bert, max_length=64, max_query_length=16)
    seen = []
    reranker.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    assert len(reranker.tokenizer("hamlet", add_special_tokens=False)["input_ids"]) == 1
    reranker.rerank("hamlet", [PASSAGES[0]])  # one query token: 64 - 1 - 3 = 60 passage tokens
    passage_ids = reranker.tokenizer(PASSAGES[0], add_special_tokens=False)["input_ids"]
    assert seen[0]["input_ids"][0].tolist()[3:-1] == passage_ids[:60]


@pytest.mark.parametrize("method", ["zero-shot", "qpeft-a"])
def test_an_llm_prompt_keeps_the_querys_budget_and_fits_the_lms_positions(method, tiny_gpt2):
    reranker = make_reranker(method, str(tiny_gpt2), max_passage_tokens=600, max_query_tokens=64)
    scorer = reranker.scorer
    (query_ids,) = scorer.query_ids([QUERY])
    (passage_ids,) = scorer.passage_ids([PASSAGES[0]])
    # Q-PEFT-A: its soft prompt after BOS, then its clue block (one clue per query token, wrapped)
    head = 0 if method == "zero-shot" else reranker.config.num_prompt_tokens
    n_soft = 0 if method == "zero-shot" else head + len(reranker.clue_blocks([query_ids], [passage_ids])[0])
    pair = scorer.build(query_ids, passage_ids, n_soft)
    assert pair.target == scorer.tokenizer(QUERY, add_special_tokens=False)["input_ids"][:64]
    assert len(pair.context) + len(pair.target) == 512  # the tiny GPT-2's positions, filled exactly
    start = len(scorer._bos) + head + len(scorer._prefix)
    kept = 512 - 64 - n_soft - start - len(scorer.instruction_ids(None)) - len(scorer._eos)
    assert pair.context[start: start + kept] == passage_ids[:kept]


def test_an_llm_whose_positions_cannot_hold_the_query_and_prompt_is_refused(tiny_gpt2):
    reranker = make_reranker("zero-shot", str(tiny_gpt2), max_query_tokens=600)
    with pytest.raises(ValueError, match="leave no room for a passage within the LM's 512 positions"):
        reranker.rerank(QUERY + " " + QUERY, ["a passage"])



MENTION = "[START_ENT] Elsinore [END_ENT]"
EL_QUERY = f"{_text(300, 3)} {MENTION} {_text(300, 4)}"


def test_the_cross_encoder_keeps_an_entity_mention_and_context_on_both_sides(tiny_bert):
    reranker = make_reranker("cross-encoder", tiny_bert, max_length=64, max_query_length=16)
    limit = len(reranker.tokenizer(MENTION, add_special_tokens=False)["input_ids"]) + 10
    (query,), (count,), cut = reranker._cut([EL_QUERY], [limit], ["aidayago2"])
    assert cut and count == limit and MENTION in query
    left, right = query.split(MENTION)
    assert left.strip() and right.strip()  # context on both sides


def test_an_llm_query_keeps_an_entity_mention_and_context_on_both_sides(tiny_gpt2):
    scorer = make_reranker("zero-shot", str(tiny_gpt2), max_query_tokens=40).scorer
    (ids,) = scorer.query_ids([EL_QUERY])
    mention = scorer.tokenizer(MENTION, add_special_tokens=False)["input_ids"]
    at = next(i for i in range(len(ids)) if ids[i:i + len(mention)] == mention)
    assert len(ids) == 40 and 0 < at and at + len(mention) < 40  # the mention, with context on both sides


LAST_TURN = "so which river has no bridges at all"
DIALOGUE = "\n".join([_text(40, 10 + turn) for turn in range(8)] + [LAST_TURN])


def _dialogue_query(method: str, request, limit: int) -> str:
    """The text of DIALOGUE (a wow input) that `method`'s input path keeps at `limit` tokens."""
    if method == "dual-encoder":
        from multitask_retriever.encoder import DualEncoder

        encoder = DualEncoder.from_pretrained(request.getfixturevalue("tiny_bert"), query_max_length=limit,
                                              query_truncation_side="left")
        ids = encoder.tokenize_queries([DIALOGUE], "wow")["input_ids"][0].tolist()
        return encoder.tokenizer.decode(ids, skip_special_tokens=True)
    if method == "cross-encoder":
        reranker = make_reranker(method, request.getfixturevalue("tiny_bert"), max_length=limit + 40,
                                 max_query_length=limit)
        (query,), _, _ = reranker._cut([DIALOGUE], [limit], ["wow"])
        return query
    scorer = make_reranker(method, str(request.getfixturevalue("tiny_gpt2")), max_query_tokens=limit).scorer
    (ids,) = scorer.query_ids([DIALOGUE], ["wow"])
    assert len(ids) == limit
    return scorer.tokenizer.decode(ids)


@pytest.mark.parametrize("limit", [32, 64])
@pytest.mark.parametrize("method", ["dual-encoder", "cross-encoder", "zero-shot"])
def test_a_long_dialogue_keeps_its_last_turn(method, limit, request):
    assert LAST_TURN in _dialogue_query(method, request, limit)


@pytest.mark.parametrize("method", ["cross-encoder", "zero-shot"])
def test_a_long_question_keeps_its_start(method, request):
    """Other tasks keep the start of the input, as their question or claim comes first."""
    question = "which prince " + _text(200, 20)
    if method == "cross-encoder":
        reranker = make_reranker(method, request.getfixturevalue("tiny_bert"), max_length=72, max_query_length=32)
        (query,), _, _ = reranker._cut([question], [32], ["nq"])
        assert query.startswith("which prince")
    else:
        scorer = make_reranker(method, str(request.getfixturevalue("tiny_gpt2")), max_query_tokens=32).scorer
        (ids,) = scorer.query_ids([question], ["nq"])
        assert scorer.tokenizer.decode(ids).startswith("which prince")
