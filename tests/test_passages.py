"""kilt.passages: 100-word chunking, the passage file and PassageStore (page rankings: test_page_contract)."""
from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest

from kilt.io import KiltFormatError, Page, Provenance, iter_pages
from kilt.passages import Passage, PassageStore, chunk_page, iter_passage_file, iter_passages, write_passages

PAGE = Page(
    wikipedia_id="42",
    title="Lake Example",
    paragraphs=[
        "Lake Example\n",
        "one two three four five\n",
        "Section::::History.\n",
        "six seven\n",
        "BULLET::::- eight nine ten\n",
    ],
)


def test_chunk_page_windows_skip_title_and_headers_and_keep_spans():
    assert chunk_page(PAGE, words=4, first_id=7) == [
        Passage(7, "42", "Lake Example", "one two three four", 1, 1),
        Passage(8, "42", "Lake Example", "five six seven eight", 1, 4),
        Passage(9, "42", "Lake Example", "nine ten", 4, 4),
    ]


def test_chunk_page_default_is_100_words_with_a_short_last_window():
    page = Page("1", "T", ["T\n", " ".join(f"w{i}" for i in range(150)) + "\n", "tail words\n"])
    passages = chunk_page(page)
    assert [len(p.text.split()) for p in passages] == [100, 52]
    assert passages[1].text.split()[-2:] == ["tail", "words"]
    assert [(p.start_paragraph_id, p.end_paragraph_id) for p in passages] == [(1, 1), (1, 2)]


def test_chunk_page_without_body_gives_no_passage():
    assert chunk_page(Page("1", "T", ["T\n", "Section::::Empty.\n"])) == []


def test_chunk_page_rejects_nonpositive_window():
    with pytest.raises(ValueError, match="words must be >= 1"):
        chunk_page(PAGE, words=0)


def test_iter_passages_numbers_across_pages_from_zero():
    other = Page("43", "Other", ["Other\n", "a b c\n"])
    passages = list(iter_passages([PAGE, other], words=4))
    assert [p.id for p in passages] == [0, 1, 2, 3]
    assert [p.wikipedia_id for p in passages] == ["42", "42", "42", "43"]


@pytest.fixture(scope="module")
def passage_file(mini_kilt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return path


def test_write_passages_streams_the_chunking_of_every_page(mini_kilt, passage_file):
    expected = list(iter_passages(iter_pages(mini_kilt / "knowledge_source.jsonl")))
    assert list(iter_passage_file(passage_file)) == expected
    assert len({p.wikipedia_id for p in expected}) == sum(1 for _ in iter_pages(mini_kilt / "knowledge_source.jsonl"))


def test_write_passages_returns_count_and_leaves_no_temporary_file(mini_kilt, tmp_path):
    n = write_passages(mini_kilt / "knowledge_source.jsonl", tmp_path / "p.jsonl", progress=False)
    assert n == sum(1 for _ in open(tmp_path / "p.jsonl"))
    assert os.listdir(tmp_path) == ["p.jsonl"]


def test_write_passages_on_bad_page_names_file_and_line_and_writes_nothing(tmp_path):
    source = tmp_path / "ks.jsonl"
    good = {"wikipedia_id": "1", "wikipedia_title": "A", "text": ["A\n", "body\n"]}
    source.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(KiltFormatError, match=r"ks\.jsonl:2"):
        write_passages(source, tmp_path / "p.jsonl", progress=False)
    assert not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize("lines", [
    [],                                                                            # no page at all
    [{"wikipedia_id": "1", "text": ["Title\n", "Section::::History.\n"]}],         # no words to chunk
], ids=["no-page", "no-text"])
def test_write_passages_of_an_empty_knowledge_source_is_an_error_and_writes_nothing(tmp_path, lines):
    source = tmp_path / "ks.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(KiltFormatError, match=r"ks\.jsonl: no passage to write \(no valid page with text beyond "
                                              r"its title and section headers\)"):
        write_passages(source, tmp_path / "p.jsonl", progress=False)
    assert os.listdir(tmp_path) == ["ks.jsonl"]


def test_write_passages_rejects_a_page_listed_twice_naming_its_second_line(tmp_path):
    source = tmp_path / "ks.jsonl"
    page = {"wikipedia_id": "1", "wikipedia_title": "A", "text": ["A\n", "body\n"]}
    source.write_text("".join(json.dumps(p) + "\n" for p in (page, {**page, "wikipedia_id": "2"}, page)))
    with pytest.raises(KiltFormatError, match=r"ks\.jsonl:3: page 1 listed a second time"):
        write_passages(source, tmp_path / "p.jsonl", progress=False)
    assert not (tmp_path / "p.jsonl").exists()
    with pytest.warns(UserWarning, match=r"ks\.jsonl: skipped 1 invalid line\(s\)"):
        assert write_passages(source, tmp_path / "p.jsonl", progress=False, skip_invalid=True) == 2
    assert [p.wikipedia_id for p in iter_passage_file(tmp_path / "p.jsonl")] == ["1", "2"]


def test_mtr_chunk_of_an_empty_knowledge_source_exits_2(tmp_path, capsys):
    from multitask_retriever.cli import main

    (tmp_path / "ks.jsonl").write_text("")
    assert main(["chunk", str(tmp_path / "ks.jsonl"), str(tmp_path / "p.jsonl")]) == 2
    assert "ks.jsonl: no passage to write" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()


def test_iter_passage_file_names_file_and_line_of_a_bad_record(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": 0, "wikipedia_id": "1", "title": "A", "text": "x",
                                "start_paragraph_id": 1, "end_paragraph_id": 1}) + '\n{"id": 1}\n')
    with pytest.raises(KiltFormatError, match=r"p\.jsonl:2: passage lacks field\(s\) wikipedia_id"):
        list(iter_passage_file(path))


def test_store_reads_every_passage_by_id(passage_file):
    store = PassageStore(passage_file, progress=False)
    passages = list(iter_passage_file(passage_file))
    assert len(store) == len(passages)
    assert [store[p.id] for p in passages] == passages
    assert [store.page_id(p.id) for p in passages] == [p.wikipedia_id for p in passages]


def test_store_get_many_keeps_request_order_and_duplicates(passage_file):
    store = PassageStore(passage_file, progress=False)
    assert [p.id for p in store.get_many([5, 0, 5, 3])] == [5, 0, 5, 3]


def test_store_rejects_ids_out_of_range(passage_file):
    store = PassageStore(passage_file, progress=False)
    for pid in (-1, len(store)):
        with pytest.raises(IndexError, match="out of range"):
            store[pid]


def test_store_caches_index_beside_the_file_and_reuses_it(passage_file, monkeypatch):
    PassageStore(passage_file, progress=False)
    cache = passage_file.with_name(passage_file.name + ".offsets.npy")
    assert cache.is_file()
    monkeypatch.setattr(PassageStore, "_build", lambda self, progress: pytest.fail("index rebuilt"))
    assert PassageStore(passage_file, progress=False)[3] == next(
        p for p in iter_passage_file(passage_file) if p.id == 3)


def test_store_rebuilds_a_stale_cache(tmp_path):
    path = tmp_path / "p.jsonl"
    cache = tmp_path / "p.jsonl.offsets.npy"

    def write(page_id: str) -> None:
        page = Page(page_id, "New", ["New\n", "a b c\n"])
        path.write_text("".join(json.dumps(vars(p)) + "\n" for p in iter_passages([PAGE, page], words=2)))

    write("7")
    assert PassageStore(path, progress=False).page_id(6) == "7"
    write("8")  # same size; make it newer than the cache even on a coarse clock
    os.utime(path, ns=(cache.stat().st_atime_ns, cache.stat().st_mtime_ns + 10**9))
    store = PassageStore(path, progress=False)
    assert (len(store), store[6].text, store.page_id(6)) == (7, "c", "8")


def test_store_requires_ids_in_file_order(tmp_path):
    path = tmp_path / "p.jsonl"
    record = {"id": 1, "wikipedia_id": "1", "title": "A", "text": "x",
              "start_paragraph_id": 1, "end_paragraph_id": 1}
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(KiltFormatError, match=r"p\.jsonl:1: passage id 1, expected 0"):
        PassageStore(path, progress=False)


# --------------------------------------------------------------------------- provenance -> passage
def _passages(path: Path, pages: list[tuple[str, int, int]]) -> PassageStore:
    """A store of one passage per (page, first paragraph, last paragraph)."""
    path.write_text("".join(json.dumps(vars(Passage(i, page, "T", f"text {i}", start, end))) + "\n"
                            for i, (page, start, end) in enumerate(pages)))
    return PassageStore(path, progress=False)


def test_a_passage_holds_provenance_on_its_page_sharing_a_paragraph():
    passage = Passage(0, "7", "T", "text", 3, 5)
    assert passage.holds(Provenance("7", start_paragraph_id=5, end_paragraph_id=9))
    assert passage.holds(Provenance("7", start_paragraph_id=4))  # no end: the start paragraph alone
    assert not passage.holds(Provenance("7", start_paragraph_id=6, end_paragraph_id=9))
    assert not passage.holds(Provenance("8", start_paragraph_id=4))  # another page
    assert not passage.holds(Provenance("7"))  # no paragraph named


def test_page_ranges_find_each_pages_consecutive_passages(tmp_path):
    store = _passages(tmp_path / "p.jsonl", [("1", 1, 2), ("2", 1, 1), ("2", 2, 3), ("2", 3, 3), ("10", 1, 1)])
    assert store.page_ranges(["2", "10", "absent", "x" * 50]) == {"2": range(1, 4), "10": range(4, 5)}
    assert store.page_ranges(["2", "1"], chunk=2) == {"1": range(0, 1), "2": range(1, 4)}  # runs across chunks
    assert store.page_ranges([]) == {}


def test_provenance_passage_is_the_pages_first_passage_holding_a_span(tmp_path):
    store = _passages(tmp_path / "p.jsonl", [("1", 1, 1), ("2", 1, 2), ("2", 2, 4), ("2", 5, 6)])
    page = store.page_ranges(["2"])["2"]
    assert store.provenance_passage([Provenance("2", start_paragraph_id=3)], page).id == 2
    assert store.provenance_passage([Provenance("2", start_paragraph_id=6), Provenance("2", start_paragraph_id=2)],
                                    page).id == 1  # the first passage holding any of them
    assert store.provenance_passage([Provenance("2", start_paragraph_id=9)], page) is None
    assert store.provenance_passage([Provenance("1", start_paragraph_id=1), Provenance("2")], page) is None


def _knowledge_source(path: Path, n_pages: int) -> Path:
    body = " ".join(["w"] * 101) + "\n"
    with open(path, "w") as f:
        for i in range(n_pages):
            f.write(json.dumps({"wikipedia_id": str(i), "wikipedia_title": f"P{i}",
                                "text": [f"P{i}\n", body]}) + "\n")
    return path


def test_write_passages_memory_does_not_grow_with_the_knowledge_source(tmp_path):
    peaks = []
    for n_pages in (2_000, 20_000):
        source = _knowledge_source(tmp_path / f"ks{n_pages}.jsonl", n_pages)
        tracemalloc.start()
        n = write_passages(source, tmp_path / f"p{n_pages}.jsonl", progress=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert n == 2 * n_pages
    assert peaks[1] < 1.5 * peaks[0]


def test_mtr_chunk_skips_invalid_pages_only_when_asked_and_reports_them(tmp_path, capsys):
    from multitask_retriever.cli import main

    source = tmp_path / "ks.jsonl"
    good = {"wikipedia_id": "1", "wikipedia_title": "A", "text": ["A\n", "body words\n"]}
    source.write_text(json.dumps(good) + "\n{broken\n" + json.dumps({**good, "wikipedia_id": "2"}) + "\n")
    assert main(["chunk", str(source), str(tmp_path / "p.jsonl")]) == 2
    assert "ks.jsonl:2: invalid JSON" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()
    with pytest.warns(UserWarning, match=r"ks\.jsonl: skipped 1 invalid line\(s\)"):
        assert main(["chunk", str(source), str(tmp_path / "p.jsonl"), "--skip-invalid"]) == 0
    assert [p.wikipedia_id for p in iter_passage_file(tmp_path / "p.jsonl")] == ["1", "2"]
