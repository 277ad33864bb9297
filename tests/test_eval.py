"""kilt.eval: the official KILT retrieval metrics, to the last bit, and clear errors."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from kilt.eval import evaluate, main, per_query, query_metrics
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


def test_an_evidence_set_counts_once_where_its_last_page_is_ranked():
    gold = [["a", "b"], ["c"]]  # two evidence sets: {a, b} and {c}
    metrics = query_metrics(["a", "x", "b", "c"], gold, ks=[1, 2, 3, 4])
    # rank: a -> partial set, x -> miss, b -> completes {a, b} (moves to the end), c -> hit = [F, T, T]
    assert metrics["precision@1"] == 0.0
    assert metrics["precision@2"] == 0.5 and metrics["recall@2"] == 0.5
    assert metrics["precision@3"] == pytest.approx(2 / 3) and metrics["recall@3"] == 1.0
    assert metrics["success_rate@2"] == 1.0
    assert metrics["Rprec"] == 0.5  # best over outputs: {a, b} has 1 of its 2 in the first 2


def test_rprecision_is_the_best_over_evidence_sets():
    assert query_metrics(["c", "a"], [["a", "b"], ["c"]], ks=[1])["Rprec"] == 1.0
    assert query_metrics(["z"], [["a"]], ks=[1])["Rprec"] == 0.0


def test_no_prediction_scores_zero_on_every_metric():
    assert set(query_metrics([], [["a"]], ks=[1, 5]).values()) == {0.0}


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
    ([_gold("1", ["a"])], [{"id": "1", "output": [{"provenance": [{"title": "A"}]}]}],
     r"guess\.jsonl:1: provenance without wikipedia_id"),
    ([_gold("1", ["a"])], [{"id": "1", "output": []}], r"guess\.jsonl:1: prediction 1 must have exactly one output"),
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
    assert ndcg(["a", "x", "b"], [["a"], ["b"]], k=10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)), abs=1e-12)
    assert ndcg(["a", "b"], [["a", "b"]], k=10) == 1.0  # one two-page set, completed at rank 1
    assert ndcg(["x", "a"], [["a"]], k=1) == 0.0
    assert ndcg([], [["a"]], k=10) == 0.0


def test_ndcg_is_only_added_on_request(tmp_path):
    gold = _file(tmp_path / "g.jsonl", [_gold("q1", ["a"])])
    guess = _file(tmp_path / "p.jsonl", [_guess("q1", ["x", "a"])])
    assert "ndcg@10" not in per_query(gold, guess)["q1"]
    assert per_query(gold, guess, ndcg_ks=(10,))["q1"]["ndcg@10"] == pytest.approx(1 / math.log2(3), abs=1e-12)
