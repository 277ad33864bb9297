"""`mtr benchmark-quality` ends by naming the best system's models and printing the `mtr pipeline`
and `mtr evaluate` commands that reuse them; the commands run as printed and give the table's figure."""
from __future__ import annotations

import json
import shlex

from kilt.eval import evaluate
from multitask_retriever.cli import main as mtr
from multitask_retriever.experiment.report import reuse_commands


def _printed_commands(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith(("mtr pipeline", "mtr evaluate"))]


def test_the_printed_commands_run_and_reproduce_the_table(mini_kilt, tmp_path, capsys):
    report = tmp_path / "result.json"
    assert mtr(["benchmark-quality", str(mini_kilt), "--out", str(report), "--work-dir", str(tmp_path / "work"),
                "--systems", "zero-shot", "--tasks", "nq", "--k", "20", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "models of the best system, zero-shot: passages " in out and "encoder minilm" in out
    pipeline, evaluation = _printed_commands(out)
    assert mtr(shlex.split(pipeline)[1:]) == 0
    assert mtr(shlex.split(evaluation)[1:]) == 0
    gold, guess = shlex.split(evaluation)[2:]
    table = json.loads(report.read_text())["systems"]["zero-shot"]["per_task"]["nq"]["Rprec"]
    assert evaluate(gold, guess)["Rprec"] == table


def _doc(models: dict, fusion: dict | None = None) -> dict:
    system = {"avg": {"Rprec": 0.9}, "models": models, **({"fusion": fusion} if fusion else {})}
    return {"systems": {"taco+cross-encoder@fused": system, "bm25": {"avg": {"Rprec": 0.8}, "models": {"passages": "p"}}},
            "config": {"k": 20, "rerank_k": 5}, "data": {"tasks": ["nq"], "dev_files": {"nq": "d/nq-dev-kilt.jsonl"}}}


def test_a_fused_reranker_is_reused_with_its_fitted_weights():
    models = {"passages": "p.jsonl", "encoder": "m", "index": "i", "query_prompts": "", "reranker": "r"}
    where, pipeline, evaluation = reuse_commands(_doc(models, {"method": "interpolate", "alpha": 0.5}), "out")
    assert where == "taco+cross-encoder@fused: passages p.jsonl, encoder m, index i, reranker r"
    assert pipeline == ("mtr pipeline --passages p.jsonl --encoder m --index i --reranker r --rerank-k 5 "
                        "--fusion fitted --queries d/nq-dev-kilt.jsonl --out out/nq-dev-predictions.jsonl --k 20")
    assert evaluation == "mtr evaluate d/nq-dev-kilt.jsonl out/nq-dev-predictions.jsonl"


def test_bm25_is_reused_without_an_encoder():
    doc = _doc({"passages": "p.jsonl"})
    _, pipeline, _ = reuse_commands(doc, "out", system="bm25")
    assert pipeline.startswith("mtr pipeline --passages p --rerank-k 0 --queries")
