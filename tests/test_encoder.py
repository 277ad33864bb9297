"""DualEncoder: pooling choice, prompts and templates, truncation, length bucketing, saving."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from multitask_retriever.encoder import PROMPT_STYLES, DualEncoder, EncoderConfig, query_prompts_for
from multitask_retriever.models import packaged_minilm_path

PROMPTS = {"nq": "nq: {query}", "fever": "claim: {query} ?"}
QUERIES = [
    "who wrote hamlet",
    "a considerably longer question about the history of the roman empire and its emperors",
    "paris",
    "is the eiffel tower in france",
    "what is the boiling point of water at sea level in degrees celsius",
]
# (fixture name, pooling override or None for auto) for every backbone/pooling pair under test
BACKBONES = [("tiny_t5", None), ("tiny_t5", "mean"), ("tiny_bert", None), ("tiny_bert", "cls")]


def _load(request, fixture: str, pooling: str | None, **overrides) -> DualEncoder:
    if pooling is not None:
        overrides["pooling"] = pooling
    overrides.setdefault("dtype", "float32")  # exact comparisons; half precision has its own tests
    return DualEncoder.from_pretrained(request.getfixturevalue(fixture), query_prompts=PROMPTS, **overrides)


@pytest.fixture(params=BACKBONES, ids=[f"{f}-{p or 'auto'}" for f, p in BACKBONES])
def encoder(request) -> DualEncoder:
    return _load(request, *request.param)


@pytest.fixture(scope="module")
def minilm() -> DualEncoder:
    return DualEncoder.from_pretrained(packaged_minilm_path(), query_prompts={}, passage_template="{text}")


# ---------------------------------------------------------------- loading and pooling choice
@pytest.mark.parametrize("fixture, pooling, backbone", [
    ("tiny_t5", "first_decoder", "T5Model"),
    ("tiny_t5_encoder", "mean", "T5EncoderModel"),
    ("tiny_bert", "mean", "BertModel"),
])
def test_auto_pooling_follows_the_architecture(request, fixture, pooling, backbone):
    enc = DualEncoder.from_pretrained(request.getfixturevalue(fixture), query_prompts={})
    assert (enc.config.pooling, enc.config.normalize, type(enc.backbone).__name__) == (pooling, False, backbone)


def test_mean_pooling_on_t5_loads_only_the_encoder(tiny_t5):
    enc = DualEncoder.from_pretrained(tiny_t5, pooling="mean", query_prompts={})
    assert type(enc.backbone).__name__ == "T5EncoderModel"


def test_sentence_transformers_folder_sets_mean_pooling_and_normalisation(minilm):
    assert (minilm.config.pooling, minilm.config.normalize, minilm.dim) == ("mean", True, 384)


def test_explicit_normalize_overrides_the_checkpoint():
    enc = DualEncoder.from_pretrained(packaged_minilm_path(), normalize=False, query_prompts={})
    norms = np.linalg.norm(enc.encode_queries(QUERIES[:2]), axis=1)
    assert not np.allclose(norms, 1.0)


def test_first_decoder_pooling_needs_an_encoder_decoder(tiny_bert):
    with pytest.raises(ValueError, match="first_decoder pooling needs an encoder-decoder"):
        DualEncoder.from_pretrained(tiny_bert, pooling="first_decoder", query_prompts={})


def test_unknown_override_is_rejected(tiny_bert):
    with pytest.raises(ValueError, match="unknown EncoderConfig fields \\['poolin'\\]"):
        DualEncoder.from_pretrained(tiny_bert, poolin="mean")


@pytest.mark.parametrize("changes, message", [
    ({"pooling": "max"}, "pooling must be one of"),
    ({"query_prompts": {"nq": "nq: {question}"}}, "must use each of \\['query'\\] once"),
    ({"default_query_template": "no field"}, "must use each of \\['query'\\] once"),
    ({"default_query_template": "{query!r}"}, "no format specs"),
    ({"passage_template": "{title}"}, "must use each of \\['text'\\] once"),
    ({"query_truncation_side": "middle"}, "query_truncation_side must be 'left' or 'right'"),
    ({"dtype": "int8"}, "dtype must be one of auto, float32"),
])
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**{"query_prompts": {}, **changes})


def test_default_prompts_cover_every_kilt_task():
    from kilt.tasks import TASKS

    prompts = EncoderConfig().query_prompts
    assert prompts == {name: f"{task.prompt}: {{query}}" for name, task in TASKS.items()}


def test_prompt_styles():
    from kilt.tasks import TASKS

    assert PROMPT_STYLES == ("short", "taco-t5", "none")
    assert set(query_prompts_for("none").values()) == {"{query}"}
    assert query_prompts_for("short") == EncoderConfig().query_prompts
    taco = query_prompts_for("taco-t5")
    assert set(taco) == set(TASKS)
    assert taco["nq"].format(query="who") == "NQ <extra_id_1> who"
    assert taco["hotpotqa"].format(query="who") == "HOPO <extra_id_1> who"
    assert taco["aidayago2"].format(query="who") == "AIDA <extra_id_1> who"
    assert (taco["triviaqa"], taco["structured_zeroshot"], taco["wned"]) == (
        "TQA <extra_id_1> {query}", "ZSRE <extra_id_1> {query}", "WNED <extra_id_1> {query}")
    EncoderConfig(query_prompts=taco)  # valid templates
    with pytest.raises(ValueError, match="unknown prompt style 'taco'; known: short, taco-t5"):
        query_prompts_for("taco")


# ---------------------------------------------------------------- shapes and dtypes
def test_encode_shapes_and_dtypes(encoder):
    assert encoder.encode_queries(QUERIES, task="nq").shape == (5, 32)
    assert encoder.encode_queries(QUERIES, task="nq").dtype == np.float32
    passages = encoder.encode_passages([("Hamlet", "A tragedy by Shakespeare."), ("Paris", "Capital of France.")])
    assert (passages.shape, passages.dtype) == ((2, 32), np.float32)
    assert encoder.encode_passages([], dtype=np.float16).dtype == np.float16


def test_float16_output_matches_float32(encoder):
    full = encoder.encode_queries(QUERIES, task="nq")
    half = encoder.encode_queries(QUERIES, task="nq", dtype=np.float16)
    assert half.dtype == np.float16
    np.testing.assert_allclose(half.astype(np.float32), full, rtol=2e-3, atol=2e-3)


def test_empty_input_gives_zero_rows(encoder):
    assert encoder.encode_queries([], task="nq").shape == (0, 32)
    assert encoder.encode_passages([]).shape == (0, 32)


def test_normalised_embeddings_have_unit_norm(minilm):
    np.testing.assert_allclose(np.linalg.norm(minilm.encode_queries(QUERIES), axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- length bucketing
def test_batched_rows_equal_rows_encoded_alone(encoder):
    """Length sorting must restore input order, and padding must not change any embedding."""
    shuffled = [QUERIES[i] for i in (3, 0, 4, 2, 1)]
    batched = encoder.encode_queries(shuffled, task="nq", batch_size=2)
    alone = np.stack([encoder.encode_queries([q], task="nq")[0] for q in shuffled])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_passage_rows_keep_input_order(encoder):
    pairs = [("T", "x " * n) for n in (3, 40, 1, 17)]
    batched = encoder.encode_passages(pairs, batch_size=3)
    alone = np.stack([encoder.encode_passages([p])[0] for p in pairs])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_batches_are_length_sorted_and_padded_to_their_longest(request, monkeypatch):
    enc = _load(request, "tiny_bert", None)
    widths = []
    embed = enc.embed
    monkeypatch.setattr(enc, "embed", lambda batch: widths.append(batch["input_ids"].shape[1]) or embed(batch))
    enc.encode_queries(["a", "b c d e f g", "h", "i j k l m"], batch_size=2)
    assert widths == [8, 3]  # [CLS] + 6 words + [SEP], then [CLS] + 1 word + [SEP]


def test_token_budget_batches_short_texts_together_and_keep_input_order(request, monkeypatch):
    enc = _load(request, "tiny_bert", None)
    texts = [" ".join(["w"] * n) for n in (12, 1, 6, 1, 2, 11, 1)]  # 14, 3, 8, 3, 4, 13, 3 tokens
    shapes = []
    embed = enc.embed
    monkeypatch.setattr(enc, "embed", lambda batch: shapes.append(tuple(batch["input_ids"].shape)) or embed(batch))
    batched = enc.encode_queries(texts, batch_size=2)  # at most 2 x 14 tokens per batch
    assert shapes == [(2, 14), (3, 8), (2, 3)]
    monkeypatch.setattr(enc, "embed", embed)
    alone = np.stack([enc.encode_queries([t])[0] for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_rows_keep_input_order_across_tokenisation_windows(request, monkeypatch):
    from multitask_retriever import encoder as module

    enc = _load(request, "tiny_bert", None)
    texts = [" ".join(["w"] * n) for n in (12, 1, 6, 1, 2, 11, 1)]
    alone = np.stack([enc.encode_queries([t])[0] for t in texts])
    monkeypatch.setattr(module, "_FIRST_WINDOW_BATCHES", 1)
    monkeypatch.setattr(module, "_SORT_WINDOW_BATCHES", 2)
    tokenized = []
    call = module._InferenceTokenizer.__call__
    monkeypatch.setattr(module._InferenceTokenizer, "__call__", lambda self, t: tokenized.append(len(t)) or call(self, t))
    np.testing.assert_allclose(enc.encode_queries(texts, batch_size=2), alone, atol=1e-5)
    assert tokenized == [2, 4, 1]  # windows of 1 batch, then 2 batches, of 2 texts


@pytest.mark.parametrize("side", ["left", "right"])
def test_encoding_tokenises_as_the_tokenizer_without_changing_its_settings(request, side):
    enc = _load(request, "tiny_bert", None)
    texts = ["a b c", LONG, "nq: who wrote hamlet"]
    backend = enc.tokenizer.backend_tokenizer
    settings = (backend.truncation, backend.padding)
    ids, lengths = enc._inference_tokenizer(9, side)(texts)
    assert (backend.truncation, backend.padding) == settings
    enc.tokenizer.truncation_side = side
    expected = enc.tokenizer(texts, truncation=True, max_length=9)["input_ids"]
    assert [row.tolist() for row in np.split(ids, np.cumsum(lengths)[:-1])] == expected


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_t5"])
def test_half_precision_encodes_with_half_weights_and_restores_them(request, monkeypatch, fixture):
    enc = _load(request, fixture, None, dtype="bfloat16")
    weights = {name: p.detach().clone() for name, p in enc.backbone.named_parameters()}
    seen = set()
    embed = enc.embed
    monkeypatch.setattr(enc, "embed", lambda batch: seen.update(p.dtype for p in enc.backbone.parameters())
                        or embed(batch))
    half = enc.encode_queries(QUERIES, task="nq")
    assert seen == {torch.bfloat16}
    after = dict(enc.backbone.named_parameters())
    assert all(after[name].dtype == torch.float32 and torch.equal(after[name], w) for name, w in weights.items())
    monkeypatch.setattr(enc, "embed", embed)
    enc.config = dataclasses.replace(enc.config, dtype="float32")
    full = enc.encode_queries(QUERIES, task="nq")
    cosine = (half * full).sum(1) / (np.linalg.norm(half, axis=1) * np.linalg.norm(full, axis=1))
    assert cosine.min() > 0.99


def test_float16_keeps_the_modules_transformers_keeps_in_float32(request, monkeypatch):
    enc = _load(request, "tiny_t5", None, dtype="float16")
    seen = {}
    embed = enc.embed
    monkeypatch.setattr(enc, "embed", lambda batch: seen.update(
        (name.split(".")[-2], p.dtype) for name, p in enc.backbone.named_parameters()) or embed(batch))
    assert np.isfinite(enc.encode_queries(QUERIES[:2], task="nq")).all()
    assert (seen["wo"], seen["wi"], seen["q"]) == (torch.float32, torch.float16, torch.float16)


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_t5"])
def test_backbones_use_sdpa_attention_where_transformers_has_it(request, fixture):
    backbone = _load(request, fixture, None).backbone
    assert backbone.config._attn_implementation == ("sdpa" if type(backbone)._supports_sdpa else "eager")


def test_progress_bar_can_be_shown(encoder, capsys):
    encoder.encode_queries(QUERIES, task="nq", progress=True)
    assert "Encoding queries" in capsys.readouterr().err


# ---------------------------------------------------------------- prompts and templates
def _decode(enc: DualEncoder, batch) -> list[str]:
    return enc.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)


def test_task_prompt_is_applied(request):
    enc = _load(request, "tiny_bert", None)
    assert enc.format_query("who wrote hamlet", "nq") == "nq: who wrote hamlet"
    assert enc.format_query("the sky is green", "fever") == "claim: the sky is green ?"
    assert enc.format_query("who wrote hamlet", None) == "who wrote hamlet"
    assert _decode(enc, enc.tokenize_queries(["who wrote hamlet"], "nq")) == ["nq : who wrote hamlet"]


def test_prompts_change_the_embedding(request):
    enc = _load(request, "tiny_bert", None)
    plain, nq = enc.encode_queries(QUERIES[:1]), enc.encode_queries(QUERIES[:1], task="nq")
    assert not np.allclose(plain, nq)


def test_unknown_task_is_an_error(request):
    enc = _load(request, "tiny_bert", None)
    with pytest.raises(ValueError, match="no query prompt for task 'zsre'; configured: fever, nq"):
        enc.encode_queries(["q"], task="zsre")


def test_passage_template_is_applied(request):
    enc = _load(request, "tiny_bert", None)
    assert enc.format_passage("Hamlet", "A play.") == "Title: Hamlet Text: A play."
    assert _decode(enc, enc.tokenize_passages(["Hamlet"], ["A play."])) == ["title : hamlet text : a play."]


def test_passage_objects_and_pairs_embed_alike(request):
    from kilt.passages import Passage

    enc = _load(request, "tiny_bert", None)
    objects = [Passage(0, "1", "Hamlet", "A play.", 1, 1), Passage(1, "2", "Paris", "A city.", 1, 1)]
    np.testing.assert_array_equal(enc.encode_passages(objects),
                                  enc.encode_passages([("Hamlet", "A play."), ("Paris", "A city.")]))


def test_tokenized_batches_pad_to_the_longest(request):
    enc = _load(request, "tiny_bert", None)
    batch = enc.tokenize_queries(["a", "a b c"], None)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


# ---------------------------------------------------------------- truncation
LONG = "start " + " ".join(f"turn{i}" for i in range(200)) + " latest question"


def test_left_truncation_keeps_the_prompt_and_the_end(request):
    enc = _load(request, "tiny_bert", None, query_max_length=17)  # a plain token cut would keep "##6"
    batch = enc.tokenize_queries([LONG], "nq")
    text = _decode(enc, batch)[0]
    assert batch["input_ids"].shape[1] == 16
    assert text.startswith("nq : turn") and text.endswith("latest question")  # cut between words
    assert "start" not in text


def test_right_truncation_keeps_the_start(request):
    enc = _load(request, "tiny_bert", None, query_max_length=17, query_truncation_side="right")
    text = _decode(enc, enc.tokenize_queries([LONG], "fever"))[0]
    assert text == "claim : start turn0 turn1 turn2 turn3 turn4?"  # a plain token cut would keep "turn" of turn5


def test_a_prompt_longer_than_the_limit_is_an_error(request):
    enc = _load(request, "tiny_bert", None, query_max_length=5)  # [CLS] claim : ? [SEP] leaves no room
    with pytest.raises(ValueError, match="the template for task 'fever' alone exceeds query_max_length"):
        enc.tokenize_queries(["the sky is green"], "fever")


def test_passages_are_cut_on_the_right(request):
    enc = _load(request, "tiny_bert", None, passage_max_length=12)
    batch = enc.tokenize_passages(["Hamlet"], [LONG])
    assert batch["input_ids"].shape[1] == 12
    assert _decode(enc, batch)[0].startswith("title : hamlet text : start")


def test_truncated_encoding_matches_the_tokenized_batch(request):
    enc = _load(request, "tiny_bert", None, query_max_length=16)
    with torch.no_grad():
        expected = enc.embed(enc.tokenize_queries([LONG], "nq")).numpy()
    np.testing.assert_allclose(enc.encode_queries([LONG], task="nq"), expected, atol=1e-6)


# ---------------------------------------------------------------- errors
def test_empty_query_names_its_position(encoder):
    with pytest.raises(ValueError, match=r"empty query \(number 1 of the call\)"):
        encoder.encode_queries(["fine", "   "], task="nq")


def test_a_single_string_is_not_a_query_list(encoder):
    with pytest.raises(ValueError, match="got one str"):
        encoder.encode_queries("who wrote hamlet")


# ---------------------------------------------------------------- saving
def test_save_and_load_round_trip(encoder, tmp_path):
    encoder.save_pretrained(tmp_path / "enc")
    loaded = DualEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.config == dataclasses.replace(encoder.config, model_name_or_path=str(tmp_path / "enc"))
    assert type(loaded.backbone) is type(encoder.backbone)
    np.testing.assert_array_equal(loaded.encode_queries(QUERIES, task="nq"), encoder.encode_queries(QUERIES, task="nq"))
    np.testing.assert_array_equal(loaded.encode_passages([("T", "x y")]), encoder.encode_passages([("T", "x y")]))


@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_half_precision_storage_halves_the_file_and_loads_back_as_float32(request, tmp_path, storage):
    enc = _load(request, "tiny_bert", None)
    enc.save_pretrained(tmp_path / "full")
    enc.config = dataclasses.replace(enc.config, storage_dtype=storage)
    enc.save_pretrained(tmp_path / "half")
    size = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("full", "half")}
    assert size["half"] < 0.6 * size["full"]
    loaded = DualEncoder.from_pretrained(tmp_path / "half")
    assert loaded.config.storage_dtype == storage
    assert {p.dtype for p in loaded.backbone.parameters()} == {torch.float32}
    assert all(p.dtype == torch.float32 for p in enc.backbone.parameters())  # the live model is untouched
    for (name, mine), theirs in zip(enc.backbone.state_dict().items(), loaded.backbone.state_dict().values()):
        torch.testing.assert_close(theirs, mine.to(getattr(torch, storage)).float(), rtol=0, atol=0, msg=name)


def test_saved_config_is_readable_json(request, tmp_path):
    enc = _load(request, "tiny_bert", None)
    enc.save_pretrained(tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / "mtr_encoder.json").read_text())
    assert (saved["pooling"], saved["normalize"], saved["query_prompts"]) == ("mean", False, PROMPTS)


def test_overrides_win_over_the_saved_config(request, tmp_path):
    _load(request, "tiny_bert", None).save_pretrained(tmp_path / "enc")
    assert DualEncoder.from_pretrained(tmp_path / "enc", pooling="cls").config.pooling == "cls"


def test_corrupt_saved_config_names_the_file(request, tmp_path):
    _load(request, "tiny_bert", None).save_pretrained(tmp_path / "enc")
    (tmp_path / "enc" / "mtr_encoder.json").write_text('{"pooling": "mean",\n oops}')
    with pytest.raises(ValueError, match="mtr_encoder.json:2: invalid JSON"):
        DualEncoder.from_pretrained(tmp_path / "enc")


def test_saving_replaces_an_existing_folder_completely(request, tmp_path):
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "stale.txt").write_text("old")
    _load(request, "tiny_bert", None).save_pretrained(tmp_path / "enc")
    assert not (tmp_path / "enc" / "stale.txt").exists()
    assert (tmp_path / "enc" / "mtr_encoder.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["enc"]


def test_failed_save_leaves_the_old_folder(request, tmp_path, monkeypatch):
    enc = _load(request, "tiny_bert", None)
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "keep.txt").write_text("old")

    def fail(path):
        raise OSError("disk full")

    monkeypatch.setattr(enc.tokenizer, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        enc.save_pretrained(tmp_path / "enc")
    assert [p.name for p in tmp_path.iterdir()] == ["enc"]
    assert [p.name for p in (tmp_path / "enc").iterdir()] == ["keep.txt"]


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_flows_through_embed(encoder, checkpointing):
    if checkpointing:
        encoder.gradient_checkpointing_enable()
    encoder.train()
    queries = encoder.embed(encoder.tokenize_queries(QUERIES[:2], "nq"))
    passages = encoder.embed(encoder.tokenize_passages(["A", "B"], ["first text", "second, longer text"]))
    assert queries.requires_grad and queries.shape == (2, 32)
    (queries @ passages.T).logsumexp(1).sum().backward()
    embeddings = encoder.backbone.get_input_embeddings().weight
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


def test_encoding_restores_training_mode(encoder):
    encoder.train()
    encoder.encode_queries(QUERIES[:1], task="nq")
    assert encoder.training


# ---------------------------------------------------------------- sentence-transformers equivalence
def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(packaged_minilm_path()), device="cpu").encode(QUERIES)
    ours_queries = minilm.encode_queries(QUERIES, batch_size=2)
    ours_passages = minilm.encode_passages([("ignored", q) for q in QUERIES])
    assert (ours_queries * reference).sum(1).min() > 0.9999
    assert (ours_passages * reference).sum(1).min() > 0.9999


def test_a_length_above_the_models_positions_is_refused(tiny_bert):
    from transformers import AutoConfig

    limit = AutoConfig.from_pretrained(tiny_bert).max_position_embeddings
    with pytest.raises(ValueError, match=rf"query_max_length {limit + 1} is above .* {limit} positions"):
        DualEncoder.from_pretrained(tiny_bert, query_max_length=limit + 1)
