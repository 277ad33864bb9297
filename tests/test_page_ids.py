"""String page ids of realkilt2's three kinds (Wikipedia page id, Wikidata QID, "enwiki:<Title>")
are kept and compared exactly from chunking through training data, BM25 predictions, scoring and subsetting."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kilt.bm25 import BM25Retriever
from kilt.eval import evaluate, per_query
from kilt.io import iter_jsonl, read_predictions, write_predictions
from kilt.passages import PassageStore, iter_passage_file, write_passages
from kilt.predict import predict_file
from kilt.subset import make_subset
from multitask_retriever.cli import main as mtr
from multitask_retriever.data import build_training_examples
from multitask_retriever.examples import read_training_examples, write_training_examples

# gold pages, one of each kind, with a vocabulary of their own
GOLD = {
    "12345": ("Lake Zorbuluk", "Lake Zorbuluk is a glacial lake fed by the Vintara stream in the Kelm valley."),
    "Q30": ("United States", "The United States is a federal republic of fifty states whose capital is Washington."),
    "enwiki:Barack_Obama": ("Barack Obama", "Barack Obama served as the 44th president after a career in Chicago."),
}
# distractors whose ids an int() or a loose comparison would confuse with the gold ones
DISTRACTORS = {
    "012345": ("Lake Morvane", "Lake Morvane is a shallow pond near a quarry."),
    "30": ("Thirty", "Thirty is the natural number following twenty-nine."),
    "Q300": ("Q300 engine", "An engine of a small aircraft built in a factory."),
    "enwiki:Barack_Obama_Sr.": ("Barack Obama Sr.", "An economist from Kenya who studied in Hawaii."),
    "enwiki:1917–18_NHL_season": ("1917–18 NHL season", "The first season of the National Hockey League."),
}
# (id, input, gold page, provenance paragraph or None) per split
TRAIN = [
    ("t1", "which stream feeds lake zorbuluk", "12345", 1),
    ("t2", "federal republic of fifty states, not an engine", "Q30", None),
    ("t3", "barack obama, 44th president, career in chicago", "enwiki:Barack_Obama", 2),
]
DEV = [
    ("d1", "glacial lake in the kelm valley vintara", "12345"),
    ("d2", "capital washington federal republic", "Q30"),
    ("d3", "president obama chicago career 44th", "enwiki:Barack_Obama"),
]


def _page(page_id: str | int, title: str, text: str) -> dict:
    # several paragraphs, so that a page spans more than one passage
    return {"wikipedia_id": page_id, "wikipedia_title": title,
            "text": [title, text, f"{title} is described further here.", f"More about {title} and {text}"]}


def _record(qid: str, text: str, page: str | int, paragraph: int | None = None) -> dict:
    provenance = {"wikipedia_id": page, "title": (GOLD | DISTRACTORS).get(str(page).strip(), ("",))[0]}
    if paragraph is not None:
        provenance |= {"start_paragraph_id": paragraph, "end_paragraph_id": paragraph}
    return {"id": qid, "input": text, "output": [{"answer": "x", "provenance": [provenance]}]}


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kilt_ids")
    pages = [_page(i, *v) for i, v in DISTRACTORS.items()][:2] + [_page(i, *v) for i, v in GOLD.items()] \
        + [_page(i, *v) for i, v in DISTRACTORS.items()][2:]
    _write_jsonl(root / "knowledge_source.jsonl", pages)
    _write_jsonl(root / "nq-train-kilt.jsonl", [_record(*row) for row in TRAIN])
    _write_jsonl(root / "nq-dev-kilt.jsonl", [_record(*row) for row in DEV])
    return root


@pytest.fixture(scope="module")
def store(folder: Path) -> PassageStore:
    path = folder / "passages.jsonl"
    write_passages(folder / "knowledge_source.jsonl", path, words=12, progress=False)
    return PassageStore(path, progress=False)


def test_chunking_keeps_each_id_as_written(store):
    pages = {p.wikipedia_id for p in iter_passage_file(store.path)}
    assert pages == set(GOLD) | set(DISTRACTORS)
    assert {store.page_id(i) for i in range(len(store))} == pages
    ranges = store.page_ranges(GOLD)
    assert set(ranges) == set(GOLD) and all(len(r) > 1 for r in ranges.values())
    assert all(store.page_id(pid) == page for page, r in ranges.items() for pid in r)


def test_training_examples_find_each_gold_page_exactly(folder, store, tmp_path):
    examples = build_training_examples({"nq": folder / "nq-train-kilt.jsonl"}, store, "bm25", depth=20,
                                       keep=5, progress=False)["nq"]
    assert [(e.qid, e.gold_pages) for e in examples] == [(qid, (page,)) for qid, _, page, _ in TRAIN]
    for example, (_, _, page, paragraph) in zip(examples, TRAIN):
        positive = store[example.positives[0]]
        assert positive.wikipedia_id == page
        if paragraph is not None:
            assert positive.start_paragraph_id <= paragraph <= positive.end_paragraph_id
        assert example.negatives and all(store.page_id(pid) != page for pid in example.negatives)
    path = tmp_path / "examples.jsonl"
    write_training_examples(path, {"nq": examples})
    assert read_training_examples(path)["nq"] == examples


def test_bm25_predictions_score_r_precision_one(folder, store, tmp_path):
    bm25 = BM25Retriever.build(store, progress=False)
    out = tmp_path / "nq-dev-kilt.jsonl"
    predict_file(lambda queries, task: bm25.search_pages(queries, task, k=5), folder / "nq-dev-kilt.jsonl", out,
                 progress=False)
    predictions = read_predictions(out)
    assert [predictions[qid][0] for qid, _, _ in DEV] == [page for _, _, page in DEV]
    assert evaluate(folder / "nq-dev-kilt.jsonl", out)["Rprec"] == 1.0


def test_scoring_tells_look_alike_ids_apart(folder, tmp_path):
    out = tmp_path / "guess.jsonl"
    write_predictions(out, [("d1", ["012345", "12345"]), ("d2", ["Q300", "30", "Q30"]),
                            ("d3", ["enwiki:Barack_Obama_Sr.", "enwiki:Barack_Obama"])])
    scores = per_query(folder / "nq-dev-kilt.jsonl", out, ks=[1, 3])
    assert [scores[q]["Rprec"] for q in ("d1", "d2", "d3")] == [0.0, 0.0, 0.0]
    assert [scores[q]["precision@3"] for q in ("d1", "d2", "d3")] == [pytest.approx(1 / 3)] * 3


def test_kilt_subset_keeps_the_gold_pages(folder, tmp_path, capsys):
    out = tmp_path / "subset"
    assert mtr(["kilt-subset", str(folder), str(folder / "knowledge_source.jsonl"), str(out),
                "--queries", "5", "--distractors", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["missing_pages"] == [] and summary["gold_pages"] == 3
    assert [page["wikipedia_id"] for _, page in iter_jsonl(out / "knowledge_source.jsonl")] == list(GOLD)


def test_kilt_subset_reads_ids_as_kilt_io_does(tmp_path):
    """Numbers and padded strings name the same page, as they do for kilt.io and kilt.eval."""
    source = _write_jsonl(tmp_path / "knowledge_source.jsonl",
                          [_page(12345, *GOLD["12345"]), _page(" Q30", *GOLD["Q30"]), _page("30", *DISTRACTORS["30"])])
    _write_jsonl(tmp_path / "nq-dev-kilt.jsonl", [_record("d1", "lake", " 12345 "), _record("d2", "usa", "Q30")])
    summary = make_subset(tmp_path, source, tmp_path / "out", queries_per_split=5, distractors=0, progress=False)
    assert (summary["gold_pages"], summary["missing_pages"]) == (2, [])
