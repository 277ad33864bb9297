"""CrossEncoderReranker on a tiny random BERT: scoring, reranking, truncation, save/load."""
from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from multitask_retriever.rerank.base import Reranker
from multitask_retriever.rerank.cross_encoder import CrossEncoderConfig, CrossEncoderReranker

QUERY = "who wrote the play hamlet"
PASSAGES = [
    "Hamlet is a tragedy written by William Shakespeare around 1600.",
    "Paris is the capital of France.",
    "The Danish prince Hamlet seeks revenge on his uncle Claudius, who murdered his father and "
    "married his mother Gertrude; the play is set in the castle of Elsinore.",
    "Shakespeare",
    "Mount Everest is the highest mountain above sea level.",
]


def _load(path, **options) -> CrossEncoderReranker:
    torch.manual_seed(0)
    options.setdefault("inference_dtype", "float32")  # exact comparisons with the training path
    model = CrossEncoderReranker.from_pretrained(path, **options)
    with torch.no_grad():  # a random tiny model scores all pairs alike; a large head separates them
        model.model.classifier.weight.normal_(0.0, 50.0)
    return model.eval()


@pytest.fixture(scope="module")
def reranker(tiny_bert) -> CrossEncoderReranker:
    return _load(tiny_bert, max_length=64, max_query_length=16)


def test_the_fixture_tells_passages_apart(reranker):
    scores = reranker.rerank(QUERY, PASSAGES)
    assert max(scores) - min(scores) > 0.1


def test_loads_a_plain_encoder_folder_with_a_one_logit_head(reranker, tiny_bert):
    assert isinstance(reranker, Reranker)
    assert reranker.method == "cross-encoder"
    assert reranker.model.config.num_labels == 1
    assert reranker.config.model_name_or_path == str(tiny_bert)


def test_position_embeddings_are_frozen_and_the_rest_trains(reranker):
    frozen = {name for name, p in reranker.named_parameters() if not p.requires_grad}
    assert frozen == {"model.bert.embeddings.position_embeddings.weight"}
    total = sum(p.numel() for p in reranker.parameters())
    assert reranker.num_trainable_parameters() == total - 512 * 32


def test_score_is_one_differentiable_value_per_pair(reranker):
    scores = reranker.score([QUERY, "capital of france"], [PASSAGES[:2], PASSAGES[2:4]])
    assert scores.shape == (2, 2)
    scores.sum().backward()
    head = reranker.model.classifier.weight
    assert head.grad is not None and head.grad.abs().sum() > 0
    reranker.zero_grad(set_to_none=True)


def test_score_needs_equally_long_rows(reranker):
    with pytest.raises(ValueError, match=r"same number of passages, got sizes \[1, 2\]"):
        reranker.score([QUERY, QUERY], [PASSAGES[:2], PASSAGES[:1]])


def test_rerank_matches_score_in_input_order(reranker):
    with torch.no_grad():
        expected = reranker.score([QUERY], [PASSAGES])[0].tolist()
    got = reranker.rerank(QUERY, PASSAGES, batch_size=2)
    assert got == pytest.approx(expected, rel=1e-6)


def test_rerank_neither_drops_nor_duplicates_candidates(reranker):
    passages = PASSAGES + [PASSAGES[0]]
    scores = reranker.rerank(QUERY, passages, batch_size=4)
    assert len(scores) == len(passages)
    assert scores[-1] == pytest.approx(scores[0], rel=1e-6)
    order = [3, 0, 5, 2, 4, 1]
    permuted = reranker.rerank(QUERY, [passages[i] for i in order], batch_size=4)
    assert permuted == pytest.approx([scores[i] for i in order], rel=1e-6)


def test_rerank_of_no_candidates_is_empty(reranker):
    assert reranker.rerank(QUERY, []) == []


@pytest.mark.parametrize("query", ["", "   "])
def test_rerank_rejects_an_empty_query(reranker, query):
    with pytest.raises(ValueError, match="empty query"):
        reranker.rerank(query, PASSAGES)


def test_overlong_passages_are_truncated_with_one_warning(tiny_bert):
    model = _load(tiny_bert, max_length=16, max_query_length=8)
    with pytest.warns(UserWarning, match="longer than max_length=16 tokens"):
        first = model.rerank(QUERY, [PASSAGES[2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = model.rerank(QUERY, [PASSAGES[2], PASSAGES[2] + " and more words at the end"])
    # everything after the 16th token is cut, so the extra words change nothing
    assert second == pytest.approx([first[0], first[0]], rel=1e-6)
    assert model.rerank(QUERY, [PASSAGES[0]]) != pytest.approx(first, abs=1e-3)


def test_long_queries_are_cut_to_max_query_length(reranker):
    def query(extra_words: int) -> str:
        return " ".join([QUERY] + ["again"] * extra_words)  # QUERY is 5 word pieces

    long_scores = reranker.rerank(query(40), PASSAGES[:2])
    assert long_scores == pytest.approx(reranker.rerank(query(16 - 5), PASSAGES[:2]), rel=1e-6)
    assert long_scores != pytest.approx(reranker.rerank(query(16 - 6), PASSAGES[:2]), abs=1e-3)


def test_save_and_load_give_identical_scores(reranker, tmp_path):
    with torch.no_grad():
        reranker.model.classifier.bias.add_(0.5)  # not the freshly drawn head any more
    try:
        reranker.save_pretrained(tmp_path / "ce")
        meta = json.loads((tmp_path / "ce" / "mtr_reranker.json").read_text())
        assert meta["method"] == "cross-encoder"
        assert meta["config"]["max_length"] == 64
        loaded = CrossEncoderReranker.from_pretrained(tmp_path / "ce").eval()
        assert loaded.config == reranker.config
        assert loaded.rerank(QUERY, PASSAGES) == reranker.rerank(QUERY, PASSAGES)
    finally:
        with torch.no_grad():
            reranker.model.classifier.bias.sub_(0.5)


def test_float16_storage_loads_back_as_float32_weights(reranker, tmp_path):
    half = CrossEncoderReranker(reranker.model, reranker.tokenizer,
                                dataclasses.replace(reranker.config, storage_dtype="float16"))
    half.save_pretrained(tmp_path / "ce")
    loaded = CrossEncoderReranker.from_pretrained(tmp_path / "ce")
    assert loaded.config.storage_dtype == "float16"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    weight = reranker.model.classifier.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(loaded.model.classifier.weight, weight.half().float(), rtol=0, atol=0)


def test_saving_over_a_folder_replaces_it_and_leaves_no_temporaries(reranker, tmp_path):
    target = tmp_path / "ce"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    reranker.save_pretrained(target)
    assert not (target / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ce"]


def test_from_pretrained_rejects_another_method_and_unknown_options(tiny_bert, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "mtr_reranker.json").write_text(json.dumps({"method": "qpeft-a", "config": {}}))
    with pytest.raises(ValueError, match="not a cross-encoder checkpoint"):
        CrossEncoderReranker.from_pretrained(folder)
    with pytest.raises(ValueError, match="unknown CrossEncoderConfig fields \\['max_len'\\]"):
        CrossEncoderReranker.from_pretrained(tiny_bert, max_len=8)


def test_config_leaves_room_for_the_passage():
    with pytest.raises(ValueError, match="must leave room for a passage"):
        CrossEncoderConfig(max_length=32, max_query_length=30)


def test_make_reranker_starts_a_cross_encoder_from_the_packaged_minilm_by_default():
    from multitask_retriever.models import packaged_minilm_path
    from multitask_retriever.rerank import make_reranker

    reranker = make_reranker("cross-encoder", max_length=64, max_query_length=16)
    assert isinstance(reranker, CrossEncoderReranker)
    assert reranker.config.model_name_or_path == "minilm"  # the portable name, not this machine's folder
    spelled_out = make_reranker("cross-encoder", packaged_minilm_path(), max_length=64, max_query_length=16)
    assert spelled_out.config.model_name_or_path == "minilm"


# --------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora(tiny_bert) -> CrossEncoderReranker:
    return _load(tiny_bert, max_length=64, max_query_length=16, lora_rank=4)


def test_lora_trains_only_adapters_and_the_head(lora):
    trained = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name or "classifier" in name for name in trained)
    assert any("classifier" in name for name in trained)


def test_a_saved_lora_cross_encoder_holds_only_its_adapters_and_scores_alike(lora, tmp_path):
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)  # B starts at zero: make the adapters matter
    lora.save_pretrained(tmp_path / "ce")
    assert sorted(f.name for f in (tmp_path / "ce").iterdir()) == ["adapters.safetensors", "mtr_reranker.json"]
    loaded = CrossEncoderReranker.from_pretrained(tmp_path / "ce").eval()
    assert loaded.config == lora.config
    assert loaded.rerank(QUERY, PASSAGES) == pytest.approx(lora.eval().rerank(QUERY, PASSAGES), rel=1e-6)


def test_adapters_of_another_rank_are_refused_naming_the_file(lora, tmp_path):
    lora.save_pretrained(tmp_path / "ce")
    meta = tmp_path / "ce" / "mtr_reranker.json"
    meta.write_text(meta.read_text().replace('"lora_rank": 4', '"lora_rank": 8'))
    with pytest.raises(ValueError, match=r"adapters\.safetensors: saved parameters .* rank-8 LoRA cross-encoder"):
        CrossEncoderReranker.from_pretrained(tmp_path / "ce")
