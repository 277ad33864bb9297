"""kilt.io and kilt.tasks: KILT records in, validated objects out; bad lines named by file and line."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kilt.io import (KiltExample, KiltFormatError, Page, Provenance, iter_pages, iter_task_file, read_predictions,
                     read_task_file, write_predictions)
from kilt.tasks import TASKS, find_task_files, get_task, parse_task_filename

RECORD = {
    "id": "q1", "input": "who wrote hamlet",
    "output": [
        {"answer": "Shakespeare", "provenance": [
            {"wikipedia_id": "10", "title": "Hamlet", "start_paragraph_id": 2, "end_paragraph_id": 3},
            {"wikipedia_id": 20, "title": "William Shakespeare", "start_paragraph_id": "1", "end_paragraph_id": 1}]},
        {"answer": "William Shakespeare"},
        {"provenance": [{"wikipedia_id": "20"}]},
    ],
    "meta": {"source": "x"},
}


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_a_task_record_becomes_an_example_with_evidence_sets_and_gold_pages(tmp_path):
    (example,) = read_task_file(_write(tmp_path / "nq-dev-kilt.jsonl", [RECORD]))
    assert example == KiltExample(
        id="q1", input="who wrote hamlet", answers=["Shakespeare", "William Shakespeare"],
        evidence=[[Provenance("10", "Hamlet", 2, 3), Provenance("20", "William Shakespeare", 1, 1)],
                  [Provenance("20")]],
        meta={"source": "x"})
    assert example.gold_pages == ["10", "20"]


@pytest.mark.parametrize("line, error", [
    ("{not json", r"t\.jsonl:2: invalid JSON"),
    ({"input": "q"}, r"t\.jsonl:2: record has no id"),
    ({"id": "b", "input": ""}, r"t\.jsonl:2: record b has no input text"),
    ({"id": "b", "input": "q", "output": [{"provenance": [{"title": "T"}]}]},
     r"t\.jsonl:2: provenance without wikipedia_id"),
    ({"id": "a", "input": "again"}, r"t\.jsonl:2: duplicated id a \(first on line 1\)"),
    ({"id": "b", "input": "q", "output": {"answer": "x"}}, r't\.jsonl:2: "output" must be a list'),
    ({"id": "b", "input": "q", "output": [{"provenance": [{"wikipedia_id": 1, "start_paragraph_id": "x"}]}]},
     r"t\.jsonl:2: provenance start_paragraph_id must be an integer"),
])
def test_bad_task_lines_raise_one_line_errors_naming_file_and_line(tmp_path, line, error):
    path = _write(tmp_path / "t.jsonl", [{"id": "a", "input": "fine"}, line])
    with pytest.raises(KiltFormatError, match=error):
        read_task_file(path)


def test_skip_invalid_counts_and_reports_what_it_skipped(tmp_path):
    path = _write(tmp_path / "t.jsonl", [{"id": "a", "input": "x"}, "{oops", {"id": "b"}, {"id": "c", "input": "y"}])
    with pytest.warns(UserWarning, match=r"t\.jsonl: skipped 2 invalid line\(s\); first: .*t\.jsonl:2: invalid JSON"):
        examples = read_task_file(path, skip_invalid=True)
    assert [e.id for e in examples] == ["a", "c"]


def test_an_empty_task_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(KiltFormatError, match=r"empty\.jsonl: empty task file"):
        read_task_file(path)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl: file not found"):
        list(iter_task_file(tmp_path / "nope.jsonl"))


def test_pages_read_from_plain_and_gzip_files_alike(tmp_path):
    pages = [{"wikipedia_id": "7", "wikipedia_title": "Lava", "text": ["Lava\n", "Molten rock.\n"]},
             {"wikipedia_id": 8, "text": ["Ash\n", "Fine rock.\n"]}]
    plain = _write(tmp_path / "ks.jsonl", pages)
    packed = tmp_path / "ks.jsonl.gz"
    with gzip.open(packed, "wt") as f:
        f.write(plain.read_text())
    expected = [Page("7", "Lava", ["Lava\n", "Molten rock.\n"]), Page("8", "Ash", ["Ash\n", "Fine rock.\n"])]
    assert list(iter_pages(plain)) == list(iter_pages(packed)) == expected


@pytest.mark.parametrize("page, error", [
    ({"wikipedia_title": "A", "text": ["A"]}, r"ks\.jsonl:1: page has no wikipedia_id"),
    ({"wikipedia_id": "1", "text": "A"}, r'ks\.jsonl:1: page 1: "text" must be a non-empty list'),
    ([1, 2], r"ks\.jsonl:1: expected a JSON object, got list"),
])
def test_bad_pages_are_named_by_file_and_line(tmp_path, page, error):
    with pytest.raises(KiltFormatError, match=error):
        list(iter_pages(_write(tmp_path / "ks.jsonl", [page])))


def test_predictions_round_trip_in_rank_order(tmp_path):
    path = tmp_path / "guess.jsonl"
    assert write_predictions(path, [("q1", ["3", "1"]), ("q2", [{"wikipedia_id": "9", "start_paragraph_id": 2}])]) == 2
    assert read_predictions(path) == {"q1": ["3", "1"], "q2": ["9"]}
    assert json.loads(path.read_text().splitlines()[0]) == {
        "id": "q1", "output": [{"provenance": [{"wikipedia_id": "3"}, {"wikipedia_id": "1"}]}]}


def test_a_prediction_needs_exactly_one_output(tmp_path):
    path = _write(tmp_path / "g.jsonl", [{"id": "a", "output": [{"provenance": []}, {"provenance": []}]}])
    with pytest.raises(KiltFormatError, match=r"g\.jsonl:1: prediction a must have exactly one output"):
        read_predictions(path)


def test_non_utf8_bytes_are_named_by_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"id": "a", "input": "fine"}\n{"id": "b", "input": "caf\xe9"}\n')
    with pytest.raises(KiltFormatError, match=r"t\.jsonl:2: not UTF-8 \(byte 0xe9 at byte 26 of the line\)"):
        read_task_file(path)


def test_skip_invalid_skips_undecodable_lines(tmp_path):
    path = tmp_path / "ks.jsonl"
    page = {"wikipedia_id": "1", "wikipedia_title": "A", "text": ["A\n", "body\n"]}
    path.write_bytes(b"\xff\xfe\n" + json.dumps(page).encode() + b"\n")
    with pytest.warns(UserWarning, match=r"ks\.jsonl: skipped 1 invalid line\(s\); first: .*ks\.jsonl:1: not UTF-8"):
        assert [p.wikipedia_id for p in iter_pages(path, skip_invalid=True)] == ["1"]


def test_a_truncated_gzip_file_is_an_error_at_the_line_where_it_stops(tmp_path):
    pages = [{"wikipedia_id": str(i), "wikipedia_title": f"P{i}", "text": [f"P{i}\n", f"body {i} " * 50]}
             for i in range(200)]
    packed = tmp_path / "ks.jsonl.gz"
    with gzip.open(packed, "wt") as f:
        f.write("".join(json.dumps(p) + "\n" for p in pages))
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    read = []
    with pytest.raises(KiltFormatError, match=r"ks\.jsonl\.gz:(\d+): truncated or corrupt gzip file") as error:
        read.extend(iter_pages(packed, skip_invalid=True))  # lost lines cannot be skipped
    assert str(error.value).startswith(f"{packed}:{len(read) + 1}: ")
    assert 0 < len(read) < len(pages)


# --------------------------------------------------------------------------- pages listed twice
def test_a_page_listed_twice_is_named_at_its_second_line(tmp_path):
    path = _write(tmp_path / "ks.jsonl", [{"wikipedia_id": i, "text": ["T\n", "x\n"]}
                                          for i in ("1", "01", "x", "12345678901", " 1 ")])
    with pytest.raises(KiltFormatError, match=r"ks\.jsonl:5: page 1 listed a second time"):
        list(iter_pages(path))  # "01" and "1" are different ids; " 1 " is "1"


def test_skip_invalid_keeps_the_first_of_a_repeated_page(tmp_path):
    path = _write(tmp_path / "ks.jsonl", [{"wikipedia_id": i, "text": [f"T{n}\n", "x\n"]}
                                          for n, i in enumerate(("12345678901", "x", "12345678901", "x"))])
    with pytest.warns(UserWarning, match=r"skipped 2 invalid line\(s\); first: .*ks\.jsonl:3: page 12345678901 "):
        pages = list(iter_pages(path, skip_invalid=True))
    assert [(p.wikipedia_id, p.title) for p in pages] == [("12345678901", "T0"), ("x", "T1")]



def test_the_registry_knows_every_kilt_task_with_kind_files_and_prompt():
    assert set(TASKS) == {"fever", "aidayago2", "wned", "cweb", "trex", "structured_zeroshot", "nq",
                          "hotpotqa", "triviaqa", "eli5", "wow"}
    assert get_task("triviaqa").files == {"train": "triviaqa-train_id-kilt.jsonl",
                                          "dev": "triviaqa-dev_id-kilt.jsonl",
                                          "test": "triviaqa-test_id_without_answers-kilt.jsonl"}
    assert set(get_task("wned").files) == {"dev", "test"}
    assert get_task("structured_zeroshot").prompt == "zsre"
    assert {t.kind for t in TASKS.values()} == {"fact checking", "entity linking", "slot filling",
                                                "open-domain QA", "dialogue"}


def test_unknown_task_names_are_errors_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown KILT task 'squad'; known: fever, aidayago2"):
        get_task("squad")


@pytest.mark.parametrize("name, parsed", [
    ("nq-dev-kilt.jsonl", ("nq", "dev")),
    ("triviaqa-train_id-kilt.jsonl", ("triviaqa", "train")),
    ("eli5-test_without_answers-kilt.jsonl", ("eli5", "test")),
    ("structured_zeroshot-dev-kilt.jsonl.gz", ("structured_zeroshot", "dev")),
    ("squad-dev-kilt.jsonl", None),
    ("knowledge_source.jsonl", None),
])
def test_official_file_names_parse_to_task_and_split(name, parsed):
    assert parse_task_filename(name) == parsed


def test_find_task_files_warns_about_unknown_task_files(tmp_path):
    for name in ("nq-dev-kilt.jsonl", "nq-train-kilt.jsonl", "squad-dev-kilt.jsonl", "notes.txt"):
        (tmp_path / name).write_text("")
    with pytest.warns(UserWarning, match=r"squad-dev-kilt\.jsonl: unknown KILT task 'squad'"):
        found = find_task_files(tmp_path)
    assert found == {"nq": {"train": tmp_path / "nq-train-kilt.jsonl", "dev": tmp_path / "nq-dev-kilt.jsonl"}}
