"""kilt.eval: the official KILT retrieval metrics, to the last bit, and clear errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from kilt.eval import GoldOutput, evaluate, main, per_query, query_metrics
from kilt.io import KiltFormatError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cases(shared_dir) -> Path:
    return shared_dir / "kilt-eval-cases"


def _expected(cases: Path) -> dict:
    return json.loads((cases / "expected.json").read_text())


def test_every_official_case_matches_exactly(cases):
    expected = _expected(cases)
    assert len(expected) == 6
    for key, want in expected.items():
        gold, guess, keys = key.split(" ")
        got = evaluate(cases / gold, cases / guess, ks=[1, 2, 5, 10], rank_keys=keys.split("+"))
        assert set(got) == set(want), key
        for metric, value in want.items():
            assert got[metric] == pytest.approx(value, abs=1e-12), (key, metric)


def test_the_cli_prints_the_official_json_for_one_pair(cases):
    run = subprocess.run([sys.executable, "-m", "kilt.eval", str(cases / "gold2.jsonl"), str(cases / "guess2_1.jsonl"),
                          "--ks", "1,2,5,10", "--rank-keys", "wikipedia_id,start_paragraph_id,end_paragraph_id",
                          "--json"], capture_output=True, text=True, cwd=REPO, check=True)
    want = _expected(cases)["gold2.jsonl guess2_1.jsonl wikipedia_id+start_paragraph_id+end_paragraph_id"]
    got = json.loads(run.stdout)
    assert got.keys() == want.keys()
    assert all(got[m] == pytest.approx(want[m], abs=1e-12) for m in want)


def _file(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _gold(qid: str, *evidence_sets: list[str]) -> dict:
    return {"id": qid, "output": [{"provenance": [{"wikipedia_id": p} for p in s]} for s in evidence_sets]}


def _guess(qid: str, pages: list[str]) -> dict:
    return {"id": qid, "output": [{"provenance": [{"wikipedia_id": p} for p in pages]}]}


def _outputs(*id_lists: list[str]) -> list[GoldOutput]:
    return [GoldOutput.of(ids) for ids in id_lists]


def test_an_evidence_set_counts_once_where_its_last_page_is_ranked():
    gold = _outputs(["a", "b"], ["c"])  # two evidence sets: {a, b} and {c}
    metrics = query_metrics(["a", "x", "b", "c"], gold, ks=[1, 2, 3, 4])
    # rank: a -> partial set, x -> miss, b -> completes {a, b} (moves to the end), c -> hit = [F, T, T]
    assert metrics["precision@1"] == 0.0
    assert metrics["precision@2"] == 0.5 and metrics["recall@2"] == 0.5
    assert metrics["precision@3"] == pytest.approx(2 / 3) and metrics["recall@3"] == 1.0
    assert metrics["success_rate@2"] == 1.0
    assert metrics["Rprec"] == 0.5  # best over outputs: {a, b} has 1 of its 2 in the first 2


def test_rprecision_is_the_best_over_evidence_sets():
    assert query_metrics(["c", "a"], _outputs(["a", "b"], ["c"]), ks=[1])["Rprec"] == 1.0
    assert query_metrics(["z"], _outputs(["a"]), ks=[1])["Rprec"] == 0.0


def test_no_prediction_scores_zero_on_every_metric():
    assert set(query_metrics([], _outputs(["a"]), ks=[1, 5]).values()) == {0.0}


def test_input_is_not_required_and_queries_are_scored_in_gold_order(tmp_path):
    gold = _file(tmp_path / "gold.jsonl", [_gold("1", ["a"]), _gold("2", ["b"])])
    guess = _file(tmp_path / "guess.jsonl", [_guess("2", ["b"]), _guess("1", ["x", "a"])])
    scores = per_query(gold, guess, ks=[1, 2])
    assert list(scores) == ["1", "2"]
    assert (scores["1"]["Rprec"], scores["2"]["Rprec"]) == (0.0, 1.0)
    assert evaluate(gold, guess, ks=[2])["recall@2"] == 1.0


@pytest.mark.parametrize("gold, guess, error", [
    ([_gold("1", ["a"])], [_guess("2", ["a"])], r"guess\.jsonl:1: id 2 is not in .*gold\.jsonl"),
    ([_gold("1", ["a"]), _gold("2", ["a"])], [_guess("1", ["a"])], r"gold\.jsonl:2: no prediction for id 2"),
    ([_gold("1", ["a"]), _gold("1", ["b"])], [_guess("1", ["a"])], r"gold\.jsonl:2: duplicated id 1"),
    ([{"output": []}], [_guess("1", ["a"])], r"gold\.jsonl:1: record has no id"),
    ([_gold("1", ["a"])], [{"id": "1", "output": [{"provenance": ["a"]}]}],
     r"guess\.jsonl:1: provenance entry must be an object"),
    ([_gold("1", ["a"])], [{"id": "1", "output": []}],
     r"guess\.jsonl:1: prediction 1 must have exactly one output with provenance, got 0"),
    ([], [_guess("1", ["a"])], r"gold\.jsonl: empty file"),
])
def test_malformed_files_give_one_line_errors_naming_file_and_line(tmp_path, gold, guess, error):
    with pytest.raises(KiltFormatError, match=error):
        evaluate(_file(tmp_path / "gold.jsonl", gold), _file(tmp_path / "guess.jsonl", guess))


def test_bad_json_in_a_guess_file_is_named(tmp_path):
    gold = _file(tmp_path / "gold.jsonl", [_gold("1", ["a"])])
    guess = tmp_path / "guess.jsonl"
    guess.write_text("{broken\n")
    with pytest.raises(KiltFormatError, match=r"guess\.jsonl:1: invalid JSON"):
        evaluate(gold, guess)


def test_the_cli_tables_several_tasks_with_their_average(tmp_path, capsys):
    gold_a = _file(tmp_path / "nq-dev-kilt.jsonl", [_gold("1", ["a"])])
    gold_b = _file(tmp_path / "fever-dev-kilt.jsonl", [_gold("1", ["a"])])
    hit = _file(tmp_path / "hit.jsonl", [_guess("1", ["a"])])
    miss = _file(tmp_path / "miss.jsonl", [_guess("1", ["b"])])
    assert main([str(gold_a), str(hit), str(gold_b), str(miss), "--ks", "1,5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "Rprec", "precision@1", "precision@5", "recall@5", "success_rate@5"]
    assert lines[2].split()[:2] == ["nq", "1.0000"]
    assert lines[3].split()[:2] == ["fever", "0.0000"]
    assert lines[4].split()[:2] == ["average", "0.5000"]


def test_the_cli_reports_bad_input_on_one_line_and_exits_2(tmp_path, capsys):
    gold = _file(tmp_path / "gold.jsonl", [_gold("1", ["a"])])
    assert main([str(gold), str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kilt.eval: error:") and "missing.jsonl" in err and "\n" not in err


def test_ndcg_gains_one_per_completed_evidence_set_at_its_rank():
    from kilt.eval import ndcg

    # sets {a} and {b} found at ranks 1 and 3: (1 + 1/log2(4)) / (1 + 1/log2(3))
    assert ndcg(["a", "x", "b"], _outputs(["a"], ["b"]), k=10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)),
                                                                                abs=1e-12)
    assert ndcg(["a", "b"], _outputs(["a", "b"]), k=10) == 1.0  # one two-page set, completed at rank 1
    assert ndcg(["x", "a"], _outputs(["a"]), k=1) == 0.0
    assert ndcg([], _outputs(["a"]), k=10) == 0.0


def test_ndcg_is_only_added_on_request(tmp_path):
    gold = _file(tmp_path / "g.jsonl", [_gold("q1", ["a"])])
    guess = _file(tmp_path / "p.jsonl", [_guess("q1", ["x", "a"])])
    assert "ndcg@10" not in per_query(gold, guess)["q1"]
    assert per_query(gold, guess, ndcg_ks=(10,))["q1"]["ndcg@10"] == pytest.approx(1 / math.log2(3), abs=1e-12)


# ------------------------------------------------------------ the official normalisations, case by case
# Each case is scored through the files (where ids are normalised) with ks 1, 2; the expectation
# was computed by hand from the official eval_retrieval.py, as the comment beside it shows.
def _record(qid, *outputs: list) -> dict:
    """A record whose outputs are provenance lists (a list) or answer-only outputs (a string)."""
    return {"id": qid, "output": [{"answer": o} if isinstance(o, str) else {"provenance": o} for o in outputs]}


def _wid(*ids) -> list[dict]:
    return [{"wikipedia_id": i} for i in ids]


def _metrics(rprec, p1, p2, r2, s2) -> dict[str, float]:
    return {"Rprec": rprec, "precision@1": p1, "precision@2": p2, "recall@2": r2, "success_rate@2": s2}


OFFICIAL_CASES = [
    # guess a, a, x -> distinct a, x. Rprec: gold {a, b}, R = 2, 1 of [a, x] / 2 = 0.5.
    # rank: a (partial set), x (miss) -> no hit.
    pytest.param(_record("1", _wid("a", "b")), _record("1", _wid("a", "a", "x")), ("wikipedia_id",),
                 _metrics(0.5, 0, 0, 0, 0), id="repeated-guess-id-rprec"),
    # guess a, a, b -> distinct a, b; rank: a (partial), b completes {a, b} in its place -> [hit].
    # p@1 = 1, p@2 = 1/2, r@2 = 1/1, Rprec = 2/2.
    pytest.param(_record("1", _wid("a", "b")), _record("1", _wid("a", "a", "b")), ("wikipedia_id",),
                 _metrics(1, 1, 0.5, 1, 1), id="repeated-guess-id-rank"),
    # gold lists page a twice: ids [a], R = 1; first guess a -> Rprec 1. rank [hit, miss].
    pytest.param(_record("1", _wid("a", "a")), _record("1", _wid("a", "x")), ("wikipedia_id",),
                 _metrics(1, 1, 0.5, 1, 1), id="repeated-gold-id"),
    # R counts distinct ids: outputs [a, a, b] and [b, a] both have R = 2 and one evidence set {a, b};
    # Rprec = max(1/2, 1/2) with guesses [a, x]; rank: a (partial), x (miss), b completes -> [miss, hit].
    pytest.param(_record("1", _wid("a", "a", "b"), _wid("b", "a")), _record("1", _wid("a", "x", "b")),
                 ("wikipedia_id",), _metrics(0.5, 0, 0.5, 1, 1), id="r-counts-distinct-ids"),
    # ids are stripped before repeats are dropped: gold [a, b], guess [a, a, b] -> [a, b] -> rank [hit].
    pytest.param(_record("1", _wid(" a", "b ")), _record("1", _wid("a ", " a", "b")), ("wikipedia_id",),
                 _metrics(1, 1, 0.5, 1, 1), id="whitespace-in-ids"),
    # values are made strings first: 12 and "12" are one id; query ids 5 and " 5" are one query.
    # guess [12] vs gold [12, 34]: Rprec 1/2; rank: 12 (partial) -> no hit.
    pytest.param(_record(5, _wid(12, 34)), _record(" 5", _wid("12", 12)), ("wikipedia_id",),
                 _metrics(0.5, 0, 0, 0, 0), id="ids-made-strings"),
    # a gold entry without wikipedia_id: out of R (ids [a], Rprec 1/1) but in the evidence set {a, ""},
    # which a cannot complete -> rank [partial] -> no hit.
    pytest.param(_record("1", [{"wikipedia_id": "a"}, {"title": "T"}]), _record("1", _wid("a")), ("wikipedia_id",),
                 _metrics(1, 0, 0, 0, 0), id="gold-entry-missing-rank-key"),
    # rank keys wikipedia_id+start_paragraph_id; gold b lacks start_paragraph_id: ids [a+1] (Rprec 1/1),
    # evidence set {a+1, b}: guess a+1 (partial), b+2 (miss) -> no hit.
    pytest.param(_record("1", [{"wikipedia_id": "a", "start_paragraph_id": 1}, {"wikipedia_id": "b"}]),
                 _record("1", [{"wikipedia_id": "a", "start_paragraph_id": 1},
                               {"wikipedia_id": "b", "start_paragraph_id": 2}]),
                 ("wikipedia_id", "start_paragraph_id"), _metrics(1, 0, 0, 0, 0),
                 id="gold-entry-missing-second-key"),
    # a guess entry without wikipedia_id is skipped: guess [a] -> Rprec 1, rank [hit].
    pytest.param(_record("1", _wid("a")), _record("1", [{"title": "no id"}, {"wikipedia_id": "a"}]),
                 ("wikipedia_id",), _metrics(1, 1, 0.5, 1, 1), id="guess-entry-missing-rank-key"),
    # answer-only outputs are ignored in both files: guess [b, a]; gold {a}: Rprec max(0, 0/1) = 0;
    # rank [miss, hit].
    pytest.param(_record("1", "x", _wid("a")), _record("1", "x", _wid("b", "a")), ("wikipedia_id",),
                 _metrics(0, 0, 0.5, 1, 1), id="outputs-without-provenance"),
    # gold without any provenance: no evidence set, every metric 0.
    pytest.param(_record("1", "x"), _record("1", _wid("a")), ("wikipedia_id",),
                 _metrics(0, 0, 0, 0, 0), id="gold-without-provenance"),
    # an empty provenance list is an evidence set of its own that no guess completes:
    # 2 sets; guess [a, x] -> rank [hit, miss]; r@2 = 1/2; Rprec max(0, 1/1).
    pytest.param(_record("1", [], _wid("a")), _record("1", _wid("a", "x")), ("wikipedia_id",),
                 _metrics(1, 1, 0.5, 0.5, 1), id="empty-gold-provenance"),
    # an empty guess scores 0 on every metric.
    pytest.param(_record("1", _wid("a")), _record("1", []), ("wikipedia_id",),
                 _metrics(0, 0, 0, 0, 0), id="empty-guess"),
]


@pytest.mark.parametrize("gold, guess, rank_keys, expected", OFFICIAL_CASES)
def test_ids_are_normalised_as_the_official_scorer_does(tmp_path, gold, guess, rank_keys, expected):
    got = evaluate(_file(tmp_path / "gold.jsonl", [gold]), _file(tmp_path / "guess.jsonl", [guess]),
                   ks=[1, 2], rank_keys=rank_keys)
    assert got == pytest.approx(expected, abs=1e-12)


def test_a_prediction_without_an_output_with_provenance_is_an_error(tmp_path):
    gold = _file(tmp_path / "gold.jsonl", [_record("1", _wid("a"))])
    guess = _file(tmp_path / "guess.jsonl", [_record("1", "just an answer")])
    with pytest.raises(KiltFormatError, match=r"guess\.jsonl:1: prediction 1 must have exactly one output with "
                                              r"provenance, got 0"):
        evaluate(gold, guess)
