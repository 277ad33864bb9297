"""Entity-linking queries: over-long ones keep the marked mention and context on both sides."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kilt.tasks import MENTION_END, MENTION_START
from multitask_retriever.encoder import DualEncoder
from multitask_retriever.models import packaged_minilm_path

WORDS = ["river", "castle", "market", "window", "garden", "silver", "orange", "harbour"]
LEFT = " ".join(WORDS[i % len(WORDS)] for i in range(400))
RIGHT = " ".join(WORDS[(i + 3) % len(WORDS)] for i in range(400))
MENTION = f"{MENTION_START} Barack Obama {MENTION_END}"


@pytest.fixture(scope="module")
def minilm() -> DualEncoder:
    return DualEncoder.from_pretrained(packaged_minilm_path(), query_max_length=64, dtype="float32")


def _fit(enc: DualEncoder, text: str, task: str | None = "aidayago2") -> str:
    return enc._fit_queries([text], task)[0]


def _tokens(enc: DualEncoder, text: str) -> int:
    return len(enc.tokenizer(text, add_special_tokens=False)["input_ids"])


def _contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i : i + len(part)] == part for i in range(len(ids)))


def test_marker_spelling_matches_kilt():
    assert (MENTION_START, MENTION_END) == ("[START_ENT]", "[END_ENT]")


def test_long_context_keeps_the_mention_and_balanced_context(minilm):
    fitted = _fit(minilm, f"{LEFT} {MENTION} {RIGHT}")
    assert fitted.startswith("aida: ")
    left, rest = fitted.removeprefix("aida: ").split(MENTION_START)
    mention, right = rest.split(MENTION_END)
    assert MENTION_START + mention + MENTION_END == MENTION
    left_tokens, right_tokens = _tokens(minilm, left), _tokens(minilm, right)
    assert left_tokens > 10 and right_tokens > 10 and abs(left_tokens - right_tokens) <= 2
    assert LEFT.endswith(left.strip()) and RIGHT.startswith(right.strip())  # whole words, nearest the mention
    assert _tokens(minilm, fitted) + 2 <= 64  # [CLS] and [SEP]
    assert _tokens(minilm, fitted) + 2 >= 62  # the budget is used, bar a cut between words


def test_mention_at_the_start_gives_the_budget_to_the_right(minilm):
    fitted = _fit(minilm, f"{MENTION} {RIGHT}")
    assert fitted.startswith(f"aida: {MENTION} window")
    assert 62 <= _tokens(minilm, fitted) + 2 <= 64


def test_mention_at_the_end_gives_the_budget_to_the_left(minilm):
    fitted = _fit(minilm, f"{LEFT} {MENTION}")
    assert fitted.endswith(f"harbour {MENTION}")
    assert 62 <= _tokens(minilm, fitted) + 2 <= 64


def test_a_mention_longer_than_the_budget_keeps_its_start(minilm):
    long_mention = f"{MENTION_START} " + " ".join(WORDS * 20) + f" {MENTION_END}"
    fitted = _fit(minilm, f"{LEFT} {long_mention} {RIGHT}")
    assert fitted.startswith(f"aida: {MENTION_START} river castle")
    assert MENTION_END not in fitted
    assert _tokens(minilm, fitted) + 2 <= 64


def test_a_short_marked_query_is_unchanged(minilm):
    assert _fit(minilm, f"before {MENTION} after") == f"aida: before {MENTION} after"


@pytest.mark.parametrize("side", ["left", "right"])
def test_texts_without_both_markers_are_cut_as_before(side):
    enc = DualEncoder.from_pretrained(packaged_minilm_path(), query_max_length=64, query_truncation_side=side)
    for text in [f"{LEFT} Barack Obama {RIGHT}", f"{LEFT} {MENTION_START} Barack Obama {RIGHT}"]:
        fitted = _fit(enc, text, "nq")
        assert MENTION_START not in fitted
        if side == "left":
            assert fitted.endswith(RIGHT[-40:])
        else:
            assert fitted.startswith("nq: " + LEFT[:40])


def test_the_training_and_inference_paths_keep_the_mention(minilm):
    text = f"{LEFT} {MENTION} {RIGHT}"
    ids = minilm.tokenize_queries([text], "aidayago2")["input_ids"][0].tolist()
    mention_ids = minilm.tokenizer(MENTION, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 64
    assert _contains(ids, mention_ids)
    # encode_queries embeds the same fitted text
    with torch.no_grad():
        expected = minilm.embed(minilm.tokenize_queries([text], "aidayago2")).numpy()
    np.testing.assert_allclose(minilm.encode_queries([text], task="aidayago2"), expected, atol=1e-5)


def test_an_encoder_decoder_keeps_the_mention_too(tiny_t5):
    enc = DualEncoder.from_pretrained(tiny_t5, query_max_length=48)
    ids = enc.tokenize_queries([f"{LEFT} {MENTION} {RIGHT}"], "aidayago2")["input_ids"][0].tolist()
    assert len(ids) <= 48 and _contains(ids, enc.tokenizer(MENTION, add_special_tokens=False)["input_ids"])
    assert enc.tokenizer.decode(ids, skip_special_tokens=True).startswith("aida :")


def test_mention_window_centres_the_mention_in_the_token_budget():
    from kilt.tasks import mention_window

    offsets = [(i * 2, i * 2 + 1) for i in range(20)]  # 20 one-character tokens at 0, 2, 4, ...
    assert mention_window(offsets, (20, 25), 7) == (8, 15)   # tokens 10-12 with 2 left, 2 right
    assert mention_window(offsets, (0, 3), 7) == (0, 7)      # at the start: all spare on the right
    assert mention_window(offsets, (36, 39), 7) == (13, 20)  # at the end: all spare on the left
    assert mention_window(offsets, (10, 30), 4) == (5, 9)    # too long: its start
    assert mention_window(offsets, (20, 25), 30) == (0, 20)  # fits: everything
