"""The reranker training loop on a tiny BERT cross-encoder and mini_kilt training queries:
example building, teacher files, the four schedules of Pezzuti et al., exact resume."""
from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kilt.bm25 import BM25Retriever
from kilt.io import KiltExample, KiltFormatError, Provenance, read_task_file
from kilt.passages import PassageStore, write_passages
from multitask_retriever.cli import main
from multitask_retriever.rerank.cross_encoder import CrossEncoderReranker
from multitask_retriever.rerank.examples import (
    RerankExample,
    attach_teacher_scores,
    examples_from_candidates,
    read_teacher_file,
    write_teacher_file,
)
from multitask_retriever.rerank.losses import ListwiseCE
from multitask_retriever.rerank.train import RerankTrainConfig, train_reranker, train_stages
from multitask_retriever.training_loop import OptimizerConfig

GROUP = 4
pytestmark = pytest.mark.filterwarnings("ignore:passages longer than max_length")


@pytest.fixture(scope="module")
def passage_file(mini_kilt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, words=100)
    return path


@pytest.fixture(scope="module")
def store(passage_file) -> PassageStore:
    return PassageStore(passage_file)


@pytest.fixture(scope="module")
def nq_train(mini_kilt):
    return read_task_file(mini_kilt / "nq-train-kilt.jsonl")


@pytest.fixture(scope="module")
def examples(nq_train, store) -> list[RerankExample]:
    """Contrastive examples from BM25's top 10 for mini_kilt's NQ training queries."""
    hits = BM25Retriever.build(store).search([e.input for e in nq_train], k=10)
    built = examples_from_candidates(nq_train, hits, store)
    assert len(built) >= 4
    return built


@pytest.fixture(scope="module")
def teacher_examples(examples, tmp_path_factory) -> list[RerankExample]:
    """The same queries with a teacher ranking (positive first, then BM25's order), read
    back from a ranked-list teacher file as the paper's LLM teachers give them."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.jsonl"
    path.write_text("".join(json.dumps({"qid": e.qid, "ranking": e.passage_ids}) + "\n" for e in examples))
    return attach_teacher_scores(examples, read_teacher_file(path))


def _reranker(tiny_bert, dropout: float = 0.0) -> CrossEncoderReranker:
    torch.manual_seed(0)  # the head is drawn from the global RNG
    reranker = CrossEncoderReranker.from_pretrained(tiny_bert, max_length=96, max_query_length=32)
    for module in reranker.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout  # with dropout, exact resumption needs the RNG state restored
    return reranker


def _config(out: Path, steps=16, lr=2e-3, warmup_steps=0, **kw) -> RerankTrainConfig:
    values = dict(loss="lce", optim=OptimizerConfig(lr=lr, steps=steps, warmup_steps=warmup_steps, weight_decay=0.01,
                                                    max_grad_norm=10.0),
                  scheduler="constant", batch_size=4, group_size=GROUP, seed=0, output_dir=str(out), progress=False)
    values.update(kw)
    return RerankTrainConfig(**values)


def _params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_same_params(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


# --------------------------------------------------------------------------- examples
def test_examples_take_a_gold_positive_and_non_gold_negatives(examples, nq_train, store):
    gold = {e.id: set(e.gold_pages) for e in nq_train}
    for example in examples:
        positive, *negatives = [int(pid) for pid in example.passage_ids]
        assert store.page_id(positive) in gold[example.qid]
        assert all(store.page_id(pid) not in gold[example.qid] for pid in negatives)
        assert len(negatives) == len(example.candidates) > 0
        assert example.positive == f"{store[positive].title}\n{store[positive].text}"


@pytest.fixture(scope="module")
def two_passage_page(store) -> tuple[int, int, int]:
    """(first passage, second passage, a paragraph id only the second holds) of one page."""
    for pid in range(len(store) - 1):
        first, second = store[pid], store[pid + 1]
        if first.wikipedia_id == second.wikipedia_id and second.end_paragraph_id > first.end_paragraph_id:
            return pid, pid + 1, second.end_paragraph_id
    pytest.fail("mini_kilt has no page with two passages")


def _question_on(store, pid: int, paragraph: int | None) -> KiltExample:
    provenance = Provenance(store.page_id(pid), start_paragraph_id=paragraph, end_paragraph_id=paragraph)
    return KiltExample(id="q1", input="a question", answers=["x"], evidence=[[provenance]], meta={})


def _off_page(store, page: str, n: int) -> list[int]:
    return [pid for pid in range(len(store)) if store.page_id(pid) != page][:n]


def test_the_positive_is_the_retrieved_passage_holding_the_provenance(store, two_passage_page):
    first, second, paragraph = two_passage_page
    other = _off_page(store, store.page_id(first), 2)
    (built,) = examples_from_candidates([_question_on(store, first, paragraph)],
                                        [[other[0], first, second, other[1]]], store)
    assert built.passage_ids == [str(second), str(other[0]), str(other[1])]


def test_the_provenance_passage_is_found_on_a_retrieved_gold_page(store, two_passage_page):
    first, second, paragraph = two_passage_page
    other = _off_page(store, store.page_id(first), 2)
    (built,) = examples_from_candidates([_question_on(store, first, paragraph)],
                                        [[other[0], first, other[1]]], store)
    assert built.passage_ids == [str(second), str(other[0]), str(other[1])]


def test_without_paragraph_ids_the_best_ranked_gold_passage_is_the_positive(store, two_passage_page):
    first, second, _ = two_passage_page
    other = _off_page(store, store.page_id(first), 2)
    (built,) = examples_from_candidates([_question_on(store, first, None)], [[other[0], second, first, other[1]]],
                                        store, num_negatives=1)
    assert built.passage_ids == [str(second), str(other[0])]


def test_queries_without_a_retrieved_gold_page_are_skipped(nq_train, store):
    example = nq_train[0]
    off_gold = [pid for pid in range(len(store)) if store.page_id(pid) not in example.gold_pages][:5]
    assert examples_from_candidates([example], [off_gold], store) == []


# --------------------------------------------------------------------------- teachers
def test_teacher_files_take_scores_and_ranked_lists(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"qid": "a", "pid": 7, "score": 2.5}\n{"qid": "a", "pid": "9", "score": -1}\n'
                    '{"qid": 3, "ranking": [5, 1, 4]}\n')
    assert read_teacher_file(path) == {"a": {"7": 2.5, "9": -1.0}, "3": {"5": -1.0, "1": -2.0, "4": -3.0}}


@pytest.mark.parametrize("lines, error", [
    (['{"qid": "a", "pid": 1}'], 'expected "pid" and "score", or "ranking"'),
    (['{"qid": "a", "pid": 1, "score": "high"}'], '"score" must be a finite number'),
    (['{"qid": "a", "pid": 1, "score": 1}', '{"qid": "a", "pid": "1", "score": 2}'], "scored twice"),
    (['{"qid": "a", "ranking": [1, 2, 1]}'], "repeats a passage id"),
    (['{"qid": "a", "ranking": [1]}', '{"qid": "a", "pid": 2, "score": 1}'], "already has a ranking"),
    (['[1, 2]'], 'expected an object with "qid"'),
])
def test_teacher_file_errors_name_file_and_line(tmp_path, lines, error):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(KiltFormatError, match=f"t.jsonl:{len(lines)}: .*{error}"):
        read_teacher_file(path)


def test_attaching_teacher_scores_drops_unscored_queries_and_floors_unscored_passages():
    examples = [RerankExample("a", "q", "p", ["n1", "n2"], passage_ids=["1", "2", "3"]),
                RerankExample("b", "q", "p", ["n1"], passage_ids=["4", "5"])]
    with pytest.warns(UserWarning, match="dropped 1 of 2 queries"):
        (scored,) = attach_teacher_scores(examples, {"a": {"1": -1.0, "3": -2.0}})
    assert scored.teacher_scores == [-1.0, -3.0, -2.0]


def test_attaching_teacher_scores_to_unmatched_ids_is_an_error():
    example = RerankExample("a", "q", "p", ["n"], passage_ids=["1", "2"])
    with pytest.raises(ValueError, match="scores none of its passages"):
        attach_teacher_scores([example], {"a": {"passage-1": 1.0}})


def test_write_teacher_file_records_the_rerankers_scores(tiny_bert, examples, tmp_path):
    reranker = _reranker(tiny_bert)
    lines = write_teacher_file(reranker, examples[:2], tmp_path / "t.jsonl", progress=False)
    assert lines == sum(len(e.passage_ids) for e in examples[:2])
    teacher = read_teacher_file(tmp_path / "t.jsonl")
    for e in examples[:2]:
        expected = reranker.rerank(e.query, e.passages)
        assert [teacher[e.qid][pid] for pid in e.passage_ids] == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- training
SCHEDULES = {
    "contrastive": [("contrastive", "lce")],
    "distill": [("distill", "ranknet")],
    "contrastive-distill": [("contrastive", "lce"), ("distill", "ranknet")],
    "distill-contrastive": [("distill", "ranknet"), ("contrastive", "lce")],
}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_schedule_lowers_the_loss_within_every_stage(schedule, tiny_bert, teacher_examples, tmp_path):
    stages = [(name, teacher_examples, _config(tmp_path, loss=loss)) for name, loss in SCHEDULES[schedule]]
    results = train_stages(_reranker(tiny_bert), stages, tmp_path / "run")
    assert list(results) == [name for name, _ in SCHEDULES[schedule]]
    for name, result in results.items():
        losses = result.losses
        assert len(losses) == 16 and result.step == 16
        assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, (name, losses)


def test_only_trainable_parameters_change(tiny_bert, examples, tmp_path):
    reranker = _reranker(tiny_bert)
    before = _params(reranker)
    train_reranker(reranker, examples, _config(tmp_path, steps=2))
    after = _params(reranker)
    frozen = {n for n, p in reranker.named_parameters() if not p.requires_grad}
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert not torch.equal(before["model.classifier.weight"], after["model.classifier.weight"])


def test_a_trained_cross_encoder_saves_and_loads_with_identical_scores(tiny_bert, examples, tmp_path):
    reranker = _reranker(tiny_bert)
    result = train_reranker(reranker, examples, _config(tmp_path, steps=3))
    loaded = CrossEncoderReranker.from_pretrained(result.model_path)
    e = examples[0]
    assert loaded.rerank(e.query, e.passages) == reranker.rerank(e.query, e.passages)


class _CrashAfter(ListwiseCE):
    """LCE that fails on its n-th call, like a run killed mid-stage."""

    def __init__(self, calls: int):
        self.calls = calls

    def __call__(self, scores, batch):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return super().__call__(scores, batch)


def test_resume_within_a_stage_reproduces_the_uninterrupted_run(tiny_bert, examples, tmp_path):
    config = _config(tmp_path / "whole", steps=6, save_every=2, scheduler="linear", warmup_steps=1)
    whole = _reranker(tiny_bert, dropout=0.1)
    expected = train_reranker(whole, examples, config)

    config = replace(config, output_dir=str(tmp_path / "crashed"))
    with pytest.raises(KeyboardInterrupt):
        train_reranker(_reranker(tiny_bert, dropout=0.1), examples, config, loss=_CrashAfter(5))
    assert [p.name for p in (tmp_path / "crashed").glob("checkpoint-*")] == ["checkpoint-0000004"]
    resumed = _reranker(tiny_bert, dropout=0.1)
    result = train_reranker(resumed, examples, config, resume=True)

    _assert_same_params(_params(resumed), _params(whole))
    assert result.losses == pytest.approx(expected.losses, abs=1e-6)
    logged = [json.loads(line)["step"] for line in (tmp_path / "crashed" / "train_log.jsonl").open()]
    assert logged == [1, 2, 3, 4, 5, 6]
    assert not list((tmp_path / "crashed").glob("checkpoint-*"))


def test_a_run_stopped_after_stage_one_resumes_at_stage_two(tiny_bert, teacher_examples, tmp_path):
    stage1 = ("contrastive", teacher_examples, _config(tmp_path, steps=4))
    stage2 = ("distill", teacher_examples, _config(tmp_path, steps=4, loss="ranknet"))
    uninterrupted = _reranker(tiny_bert)
    train_stages(uninterrupted, [stage1, stage2], tmp_path / "whole")

    train_stages(_reranker(tiny_bert), [stage1], tmp_path / "run")
    state = tmp_path / "run" / "1-contrastive" / "final" / "trainer_state.pt"
    stamp = state.stat().st_mtime_ns
    resumed = _reranker(tiny_bert)
    results = train_stages(resumed, [stage1, stage2], tmp_path / "run")

    assert state.stat().st_mtime_ns == stamp  # stage 1 was not redone
    assert results["contrastive"].step == 4 and results["distill"].step == 4
    assert (tmp_path / "run" / "2-distill" / "final" / "reranker" / "mtr_reranker.json").is_file()
    _assert_same_params(_params(resumed), _params(uninterrupted))


def test_training_is_deterministic_for_a_seed(tiny_bert, examples, tmp_path):
    a, b = _reranker(tiny_bert), _reranker(tiny_bert)
    train_reranker(a, examples, _config(tmp_path / "a", steps=3))
    train_reranker(b, examples, _config(tmp_path / "b", steps=3))
    _assert_same_params(_params(a), _params(b), atol=0)


def test_an_existing_run_is_not_overwritten_without_resume(tiny_bert, examples, tmp_path):
    train_reranker(_reranker(tiny_bert), examples, _config(tmp_path, steps=1))
    with pytest.raises(FileExistsError, match="pass resume=True"):
        train_reranker(_reranker(tiny_bert), examples, _config(tmp_path, steps=1))


def test_distillation_needs_teacher_scores(tiny_bert, examples, tmp_path):
    with pytest.raises(ValueError, match="ranknet loss needs teacher scores; query"):
        train_reranker(_reranker(tiny_bert), examples, _config(tmp_path, loss="ranknet"))


def test_queries_with_too_few_negatives_are_skipped(tiny_bert, examples, tmp_path):
    short = replace(examples[0], candidates=examples[0].candidates[:1], passage_ids=examples[0].passage_ids[:2])
    with pytest.warns(UserWarning, match="skipping 1 of"):
        train_reranker(_reranker(tiny_bert), [short, *examples[1:]], _config(tmp_path, steps=1))
    with pytest.raises(ValueError, match="no query has the group_size-1=3 negatives"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_reranker(_reranker(tiny_bert), [short], _config(tmp_path / "b", steps=1))


def test_resume_refuses_settings_other_than_the_runs(tiny_bert, examples, tmp_path):
    train_reranker(_reranker(tiny_bert), examples, _config(tmp_path, steps=1))
    with pytest.raises(ValueError, match=r"final: cannot resume with other settings .*\(lr: 0.002 -> 0.001; "
                                         r"steps: 1 -> 2\)"):
        train_reranker(_reranker(tiny_bert), examples, _config(tmp_path, steps=2, lr=1e-3), resume=True)


def test_the_command_gives_identical_weights_for_the_same_seed(tiny_bert, mini_kilt, passage_file, tmp_path):
    """The cross-encoder's new head is drawn before training starts: it must be seeded too."""
    weights = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["train-reranker", "--method", "cross-encoder", "--model", str(tiny_bert),
                     "--option", "max_length=96", "--option", "max_query_length=32", "--data-dir", str(mini_kilt),
                     "--passages", str(passage_file), "--tasks", "nq", "--depth", "10", "--optim-steps", "1",
                     "--batch-size", "2", "--group-size", "2", "--seed", "3", "--output-dir", str(out)]) == 0
        saved = out / "final" / "reranker"
        weights.append(CrossEncoderReranker.from_pretrained(saved).state_dict())
    _assert_same_params(*weights, atol=0)


def test_a_new_run_removes_the_temporary_folders_of_a_killed_save(tiny_bert, examples, tmp_path):
    for orphan in (".checkpoint-0000004.k1ll3dxx.tmp", ".final.4194305.k1ll3dxx.tmp"):  # no such pid
        (tmp_path / orphan).mkdir(parents=True)
        (tmp_path / orphan / "trainer_state.pt").write_bytes(b"half written")
    train_reranker(_reranker(tiny_bert), examples, _config(tmp_path, steps=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "train_log.jsonl"]


def test_a_finished_run_keeps_no_copy_of_its_weights_in_its_state_and_reloads_them(tiny_bert, examples, tmp_path):
    """The final trainer state of a cross-encoder would otherwise repeat its whole model; a
    finished run resumed reads the weights from final/reranker instead."""
    trained = _reranker(tiny_bert)
    train_reranker(trained, examples, _config(tmp_path, steps=2))
    state = torch.load(tmp_path / "final" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2 and "trainable" not in state
    reloaded = _reranker(tiny_bert)
    assert train_reranker(reloaded, examples, _config(tmp_path, steps=2), resume=True).step == 2
    _assert_same_params(_params(reloaded), _params(trained), atol=0)
