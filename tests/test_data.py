"""Training data: positives, hard negatives, deterministic per-task batches, clear errors."""
import shutil

import pytest

from kilt.hits import Hit
from kilt.io import KiltExample, KiltFormatError, Provenance, read_task_file
from kilt.passages import PassageStore, iter_passage_file, write_passages
from multitask_retriever.data import (
    MultitaskBatches,
    build_training_examples,
    positive_passages,
    prepare_training_data,
    task_train_files,
)
from multitask_retriever.examples import TrainingExample, read_training_examples, write_training_examples

AMAZON = "2712547"  # two passages: paragraphs 1-3 and 3-4


@pytest.fixture(scope="module")
def store(mini_kilt, tmp_path_factory):
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return PassageStore(path, progress=False)


@pytest.fixture(scope="module")
def examples(mini_kilt, store):
    return build_training_examples(task_train_files(mini_kilt), store, "bm25", progress=False)


def _page(store, page):
    return [p for p in iter_passage_file(store.path) if p.wikipedia_id == page]


def test_task_files_cover_every_train_file(mini_kilt):
    files = task_train_files(mini_kilt)
    assert sorted(files) == ["fever", "hotpotqa", "nq", "structured_zeroshot", "trex", "triviaqa", "wow"]
    assert files["triviaqa"].name == "triviaqa-train_id-kilt.jsonl"


def test_every_train_query_becomes_an_example(mini_kilt, examples):
    for task, path in task_train_files(mini_kilt).items():
        assert [e.qid for e in examples[task]] == [e.id for e in read_task_file(path)]


def test_positives_hold_the_provenance_paragraph(mini_kilt, store, examples):
    checked = 0
    for task, path in task_train_files(mini_kilt).items():
        by_id = {e.qid: e for e in examples[task]}
        for kilt_example in read_task_file(path):
            positives = store.get_many(by_id[kilt_example.id].positives)
            for prov in (p for group in kilt_example.evidence for p in group):
                on_page = [p for p in positives if p.wikipedia_id == prov.wikipedia_id]
                assert len(on_page) == 1, (task, kilt_example.id)
                assert on_page[0].start_paragraph_id <= prov.start_paragraph_id <= on_page[0].end_paragraph_id
                checked += 1
    assert checked >= 100


def test_extractive_positive_contains_the_answer(examples, store):
    curie = next(e for e in examples["nq"] if e.query.startswith("what element did marie curie"))
    (positive,) = store.get_many(curie.positives)
    assert positive.wikipedia_id == "54259994" and "polonium" in positive.text.lower()


def test_positive_fallbacks_answer_then_first_passage(store):
    first, second = _page(store, AMAZON)
    assert (first.start_paragraph_id, first.end_paragraph_id, second.end_paragraph_id) == (1, 3, 4)
    ranges = store.page_ranges([AMAZON])
    assert ranges == {AMAZON: range(first.id, second.id + 1)}

    def example(answer, start=None):
        return KiltExample("q", "a question", [answer], [[Provenance(AMAZON, "Amazon River", start, start)]])

    assert positive_passages(example("whatever", start=4), store, ranges) == [second.id]
    assert positive_passages(example("no bridge crosses"), store, ranges) == [second.id]
    assert positive_passages(example("not in the page"), store, ranges) == [first.id]


def test_two_provenance_pages_give_two_positives(examples, store):
    for example in examples["hotpotqa"]:
        pages = [p.wikipedia_id for p in store.get_many(example.positives)]
        assert pages == list(example.gold_pages) and len(pages) == 2


def test_hard_negatives_never_come_from_gold_pages(examples, store):
    total = 0
    for task_examples in examples.values():
        for example in task_examples:
            assert all(store.page_id(pid) not in example.gold_pages for pid in example.negatives)
            assert len(set(example.negatives)) == len(example.negatives)
            total += len(example.negatives)
    assert total > 500  # BM25 found real negatives


def test_batch_negatives_including_random_fill_stay_off_gold_pages(examples, store):
    # 40 negatives per query: more than BM25 kept for any query, so random ones fill in
    batches = MultitaskBatches(examples, store, batch_sizes=3, n_negatives=40, seed=1)
    for task in batches.tasks:
        for step in range(3):
            batch = batches.batch(task, step)
            assert len(batch.passages) == 3 * 41 and batch.group_size == 41
            for i, qid in enumerate(batch.qids):
                example = next(e for e in examples[task] if e.qid == qid)
                group = batch.passages[i * 41:(i + 1) * 41]
                assert group[0].id in example.positives
                assert all(p.wikipedia_id not in example.gold_pages for p in group[1:])
                assert len({p.id for p in group}) == 41


def test_same_seed_same_batches_other_seed_other_batches(examples, store):
    def run(seed):
        batches = MultitaskBatches(examples, store, {t: 4 for t in examples}, n_negatives=2, seed=seed)
        return [(b.qids, b.passage_ids) for s in range(5) for b in (batches.batch(t, s) for t in batches.tasks)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_epochs_visit_every_query_once(examples, store):
    batches = MultitaskBatches({"nq": examples["nq"]}, store, 4, n_negatives=0, seed=0)
    seen = [q for step in range(4) for q in batches.batch("nq", step).qids]  # 16 queries, 4 per step
    assert sorted(seen) == sorted(e.qid for e in examples["nq"])


def test_processes_take_consecutive_slices_of_the_global_batch(examples, store):
    whole = MultitaskBatches(examples, store, 4, n_negatives=1, seed=3).batch("wow", 2)
    parts = [MultitaskBatches(examples, store, 2, n_negatives=1, seed=3, num_processes=2, process_index=r)
             .batch("wow", 2) for r in range(2)]
    assert parts[0].qids + parts[1].qids == whole.qids


def test_per_task_batch_sizes_and_query_lengths(examples, store, tiny_bert):
    from multitask_retriever.encoder import DualEncoder

    batches = MultitaskBatches(examples, store, {"nq": 2, "wow": 5, **{t: 1 for t in examples if t not in
                                                                       ("nq", "wow")}}, n_negatives=1)
    assert len(batches.batch("nq", 0).qids) == 2 and len(batches.batch("wow", 0).qids) == 5
    encoder = DualEncoder.from_pretrained(tiny_bert, query_max_length=64)
    features = batches.batch("wow", 0).tokenize(encoder, query_max_length=12)
    assert features["query"]["input_ids"].shape[1] == 12  # dialogue histories are longer than 12 tokens
    assert features["passage"]["input_ids"].shape[0] == 10
    assert encoder.config.query_max_length == 64  # restored


def test_exclude_marks_other_queries_passages_on_own_gold_pages(store):
    first, second = _page(store, AMAZON)
    other = next(p for p in iter_passage_file(store.path) if p.wikipedia_id != AMAZON)
    a = TrainingExample("nq", "a", "amazon one", (first.id,), (other.id,), (AMAZON,))
    b = TrainingExample("nq", "b", "amazon two", (second.id,), (other.id,), (AMAZON,))
    batches = MultitaskBatches({"nq": [a, b]}, store, 2, n_negatives=1, seed=0)
    batch = batches.batch("nq", 0)
    order = [0, 1] if batch.qids == ["a", "b"] else [1, 0]
    assert batch.passage_ids == [[first.id, other.id, second.id, other.id][k] for i in order
                                 for k in (2 * i, 2 * i + 1)]
    # each query: its own positive (column 2i) is kept, the other query's Amazon positive is masked
    assert batch.exclude.tolist() == [[False, False, True, False], [True, False, False, False]]


def test_dense_backend_negatives_in_rank_order_without_gold(mini_kilt, store):
    first, _ = _page(store, AMAZON)
    ranking = [first.id, 5, first.id + 1, 9, 5, 12]  # gold passages and a duplicate mixed in

    class Backend:
        def search(self, queries, task=None, k=100):
            assert task == "fever" and k == 6
            return [[Hit(pid, 1.0, "", "", "") for pid in ranking] for _ in queries]

    out = build_training_examples({"fever": mini_kilt / "fever-train-kilt.jsonl"}, store, Backend(), depth=6,
                                  keep=2, progress=False)
    amazon = next(e for e in out["fever"] if e.gold_pages == (AMAZON,))
    expected = [pid for pid in dict.fromkeys(ranking) if store.page_id(pid) != AMAZON][:2]
    assert amazon.negatives == tuple(expected) and len(expected) == 2


def test_a_runs_data_is_cached_by_its_inputs(mini_kilt, tmp_path):
    """Chunked passages and built examples are reused for the same inputs and rebuilt for others."""
    store, examples = prepare_training_data(tmp_path, mini_kilt, tasks=["nq"], negatives="none", progress=False)
    assert store.path == tmp_path / "passages.jsonl" and list(examples) == ["nq"]
    cache = tmp_path / "training_examples.jsonl"
    stamps = [(tmp_path / name).stat().st_mtime_ns for name in ("passages.jsonl", "training_examples.jsonl")]
    _, again = prepare_training_data(tmp_path, mini_kilt, tasks=["nq"], negatives="none", progress=False)
    assert again == examples
    assert [(tmp_path / n).stat().st_mtime_ns for n in ("passages.jsonl", "training_examples.jsonl")] == stamps
    _, fewer = prepare_training_data(tmp_path, mini_kilt, tasks=["nq"], negatives="none", max_queries=2,
                                     progress=False)
    assert [e.qid for e in fewer["nq"]] == [e.qid for e in examples["nq"][:2]]
    assert len(read_training_examples(cache)["nq"]) == 2  # rebuilt from the new inputs


def test_training_example_file_round_trip(examples, tmp_path):
    path = tmp_path / "negatives.jsonl"
    assert write_training_examples(path, examples) == sum(len(e) for e in examples.values())
    assert read_training_examples(path) == examples
    assert list(read_training_examples(path, ["wow", "nq"])) == ["wow", "nq"]
    with pytest.raises(ValueError, match="no training examples for task.*eli5"):
        read_training_examples(path, ["eli5"])


def test_unknown_task_is_a_clear_error(mini_kilt, store):
    with pytest.raises(ValueError, match="unknown KILT task 'nope'; known: fever"):
        task_train_files(mini_kilt, ["nq", "nope"])
    with pytest.raises(ValueError, match="unknown KILT task 'nope'"):
        build_training_examples({"nope": mini_kilt / "nq-train-kilt.jsonl"}, store, "none", progress=False)


def test_task_without_train_file_names_the_folder(mini_kilt, tmp_path):
    shutil.copy(mini_kilt / "nq-train-kilt.jsonl", tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no train file for task.*fever"):
        task_train_files(tmp_path, ["nq", "fever"])


def test_empty_training_file_names_the_file(tmp_path, store):
    empty = tmp_path / "nq-train-kilt.jsonl"
    empty.write_text("\n")
    with pytest.raises(KiltFormatError, match=f"{empty}: empty task file"):
        build_training_examples({"nq": empty}, store, "none", progress=False)


def test_queries_without_pages_in_the_corpus_are_an_error_naming_the_file(tmp_path, store):
    path = tmp_path / "nq-train-kilt.jsonl"
    path.write_text('{"id": "1", "input": "q", "output": [{"answer": "a", "provenance": '
                    '[{"wikipedia_id": "999999999"}]}]}\n')
    with pytest.raises(ValueError, match=f"{path}: no training query has a provenance page"):
        build_training_examples({"nq": path}, store, "none", progress=False)
