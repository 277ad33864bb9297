"""Each documented script flow runs end to end on the miniature KILT, with tiny models:

1. full KILT: download_kilt.sh (its files replaced by the fixtures) -> train.sh -> build_index.sh
   -> retrieve.sh with KILT scoring;
2. rerank.sh with a cross-encoder and with Q-PEFT-A;
3. quickstart.sh, with a few cheap systems.

The scripts run as a user runs them (bash, from any folder) with MTR_NO_SETUP=1, so that
scripts/_env.sh neither creates a venv nor installs anything, and `mtr`, `python` and
`accelerate` on PATH are wrappers running this checkout's code with this interpreter.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO

SCRIPTS = REPO / "scripts"


@pytest.fixture(scope="session")
def script_env(tmp_path_factory) -> dict[str, str]:
    bin_dir = tmp_path_factory.mktemp("bin")
    wrappers = {"mtr": "-m multitask_retriever.cli", "python": "", "accelerate": "-m accelerate.commands.accelerate_cli"}
    for name, module in wrappers.items():
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" {module} "$@"\n')
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
            "MTR_NO_SETUP": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
            "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def run_script(env: dict[str, str], script: str, *args: str | Path, **variables: str | Path) -> str:
    """Run scripts/<script> from outside the checkout; its stdout, or a failure showing its output."""
    proc = subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], capture_output=True, text=True,
                          env={**env, **{k: str(v) for k, v in variables.items()}}, cwd="/", timeout=900)
    assert proc.returncode == 0, (f"{script} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                                  f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout


def kilt_scores(stdout: str) -> dict[str, float]:
    """R-precision per task from the table `python -m kilt.eval` (and `mtr evaluate`) prints."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["task", "Rprec"])
    rows = [line.split() for line in lines[header + 2:]]
    return {row[0]: float(row[1]) for row in rows if len(row) > 2 and re.fullmatch(r"[0-9.]+", row[1])}


def assert_predictions(gold: Path, pred: Path, k: int) -> None:
    """One prediction per query of `gold`, in order, each with 1 to k retrieved pages."""
    ids = [json.loads(line)["id"] for line in gold.read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [r["id"] for r in rows] == ids
    for row in rows:
        pages = row["output"][0]["provenance"]
        assert 1 <= len(pages) <= k and all(p["wikipedia_id"] for p in pages)


# --------------------------------------------------------------------------- 1. full KILT
def fake_download(env, mini_kilt: Path, data: Path, tasks: list[str]) -> None:
    """download_kilt.sh's file list (--dry-run), filled from the fixtures: the knowledge source under
    KILT's name, train and dev files as they are, test files as dev files without their outputs."""
    listing = run_script(env, "download_kilt.sh", "--dry-run", "--tasks", ",".join(tasks), data)
    targets = [Path(line.split(" -> ")[1]) for line in listing.splitlines()]
    data.mkdir(parents=True)
    for target in targets:
        if target.name == "kilt_knowledgesource.json":
            shutil.copy(mini_kilt / "knowledge_source.jsonl", target)
        elif "-test_without_answers-" in target.name:
            dev = mini_kilt / target.name.replace("-test_without_answers-", "-dev-")
            rows = [json.loads(line) for line in dev.read_text().splitlines() if line.strip()]
            target.write_text("".join(json.dumps({"id": r["id"], "input": r["input"]}) + "\n" for r in rows))
        else:
            shutil.copy(mini_kilt / target.name, target)
    assert len(targets) == 1 + 3 * len(tasks) and all(t.is_file() for t in targets)


@pytest.mark.parametrize("processes", [1, 2])
def test_full_kilt_flow_train_build_index_retrieve(processes, script_env, mini_kilt, tiny_t5, tmp_path):
    """As the runbook runs it: one process, or a launch of several (2 CPU processes here, as 8 GPUs)."""
    data, run, build, pred = tmp_path / "data" / "kilt", tmp_path / "run", tmp_path / "build", tmp_path / "pred"
    # the runbook's launch; script_env's ACCELERATE_USE_CPU runs its processes on CPUs (gloo)
    launch = {"ACCELERATE_ARGS": f"--multi_gpu --num_processes {processes}"} if processes > 1 else {}
    fake_download(script_env, mini_kilt, data, ["nq", "fever"])
    # the recipe of train-kilt-taco.yaml, sized down: tiny T5, 2 tasks, 2 steps, 2 queries per task,
    # one self-mined negative round after the BM25 one
    config = yaml.safe_load((SCRIPTS / "configs" / "train-kilt-taco.yaml").read_text())
    config["model"].update(name_or_path=str(tiny_t5), task_query_max_lengths={"nq": 16, "fever": 24},
                           query_max_length=32, passage_max_length=64)
    config["data"].update(dir=str(data), passages=str(data / "passages.jsonl"), tasks=["nq", "fever"],
                          per_task_batch_size=2, n_negatives=1, negative_rounds=1)
    config["optim"].update(steps=2, lr=1e-4, mixed_precision="no")
    config.update(save_every=0, progress=False, output_dir=str(tmp_path / "unused"))
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    out = run_script(script_env, "train.sh", "--config", config_file, "--output-dir", run, **launch)
    assert "wrote 94 passages" in out and (data / "passages.jsonl").is_file()  # chunked from KILT's file first
    model = run / "round-1" / "final" / "model"
    assert f"trained taco for 2 steps in each of 2 rounds; model: {model}" in out
    assert (run / "round-1" / "negatives.jsonl").is_file()  # mined by round 0's model
    assert len((run / "round-1" / "train_log.jsonl").read_text().splitlines()) == 2
    state = torch.load(run / "round-1" / "final" / "trainer_state.pt", weights_only=True)
    assert state["data"]["num_processes"] == processes
    assert not (tmp_path / "unused").exists()
    from multitask_retriever.encoder import DualEncoder

    loaded = DualEncoder.from_pretrained(model)
    assert loaded.config.pooling == "first_decoder" and loaded.format_query("q", "nq") == "NQ <extra_id_1> q"

    out = run_script(script_env, "build_index.sh", "--encoder", model, "--out", build, "--passages",
                     data / "passages.jsonl", "--batch-size", "32", "--shard-size", "40", *(["--launch"] if launch else []),
                     **launch)
    assert json.loads((build / "index" / "index_meta.json").read_text())
    assert json.loads((build / "shards" / "manifest.json").read_text())["num_shards"] == 3  # 94 passages
    next_step = out.strip().splitlines()[-1]
    assert next_step == (f"done: scripts/retrieve.sh --encoder {model} --build-dir {build} "
                         f"--passages {data / 'passages.jsonl'} --out-dir PRED_DIR TASK_FILE...")

    # the next step as build_index.sh printed it
    args = next_step.removeprefix("done: scripts/retrieve.sh ").split()[:-3]
    files = [data / f"{task}-{split}-kilt.jsonl" for task in ("nq", "fever") for split in ("dev", "test_without_answers")]
    out = run_script(script_env, "retrieve.sh", *args, "--out-dir", pred, "--k", "10", *files)
    for f in files:
        assert_predictions(f, pred / f"{f.stem}-pred.jsonl", k=10)
    assert f"({data / 'nq-test_without_answers-kilt.jsonl'} has no gold provenance: not scored)" in out
    scores = kilt_scores(out)
    assert set(scores) == {"nq", "fever", "average"} and all(0.0 <= s <= 1.0 for s in scores.values())


# --------------------------------------------------------------------------- 2. reranking
@pytest.mark.parametrize("method", ["cross-encoder", "qpeft-a"])
def test_rerank_flow(method, script_env, mini_kilt, tiny_bert, tiny_llama, tmp_path):
    out_dir = tmp_path / "rerank"
    model = {"MODEL_PATH": tiny_bert} if method == "cross-encoder" else {"MTR_LLM": tiny_llama}
    out = run_script(script_env, "rerank.sh", method, mini_kilt, out_dir, STEPS="2", TASK="nq", **model)
    reranker = out_dir / "train" / "final" / "reranker"  # what the pipeline step reads
    assert "trained 2 steps" in out and f"reranker: {reranker}" in out
    assert json.loads((reranker / "mtr_reranker.json").read_text())
    assert len((out_dir / "train" / "train_log.jsonl").read_text().splitlines()) == 2
    assert_predictions(mini_kilt / "nq-dev-kilt.jsonl", out_dir / "nq-dev-predictions.jsonl", k=100)
    scores = kilt_scores(out)
    assert set(scores) == {"nq"} and 0.0 <= scores["nq"] <= 1.0


# --------------------------------------------------------------------------- 3. quickstart
def test_quickstart_with_cheap_systems(script_env, tiny_llama, mini_kilt, tmp_path):
    """The default quickstart (data/kilt-mini, MiniLM fine-tuned) takes minutes; here its cheapest
    systems on the fixtures, one with an LLM reranker (Q-PEFT-A over the tiny Llama), through
    --data and --systems, which write their own report and end with commands that reuse the models."""
    systems = ["bm25", "zero-shot", "bm25+qpeft-a"]
    out = run_script(script_env, "quickstart.sh", "--data", mini_kilt, "--systems", ",".join(systems),
                     "--llm", tiny_llama, "--out", tmp_path / "quickstart")
    result = json.loads((tmp_path / "quickstart" / "mini_kilt-custom.json").read_text())
    assert list(result["systems"]) == systems
    for system in systems:
        avg = result["systems"][system]["avg"]
        assert 0.0 <= avg["Rprec"] <= 1.0 and 0.0 <= avg["recall@5"] <= 1.0
        assert f"| {system} |" in out
    assert result["systems"]["bm25"]["avg"]["Rprec"] > 0.5  # BM25 is strong on the hand-written fixtures
    assert (tmp_path / "quickstart" / "mini_kilt-custom.md").is_file()
    assert "  mtr pipeline --passages " in out and "  mtr evaluate " in out


def _lone_quickstart(tmp_path: Path) -> Path:
    """quickstart.sh alone in a folder: it cannot source _env.sh there, so what runs is what it
    does before any setup."""
    (tmp_path / "scripts").mkdir()
    return Path(shutil.copy(SCRIPTS / "quickstart.sh", tmp_path / "scripts"))


def test_quickstart_help_comes_before_any_setup(tmp_path):
    proc = subprocess.run(["bash", str(_lone_quickstart(tmp_path)), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: scripts/quickstart.sh")


@pytest.mark.parametrize("flag, folder, says", [
    ("--data", "missing", "--data {}: no such folder"),
    ("--data", "empty", "--data {}: no knowledge_source.jsonl[.gz] or kilt_knowledgesource.json in it"),
    ("--real", "pages-only", "--real {}: no <task>-train-kilt.jsonl files in it"),
])
def test_quickstart_checks_its_data_folder_before_any_work(flag, folder, says, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "pages-only").mkdir()
    (tmp_path / "pages-only" / "kilt_knowledgesource.json").write_text("")
    proc = subprocess.run(["bash", str(_lone_quickstart(tmp_path)), flag, folder], capture_output=True, text=True,
                          cwd=tmp_path, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "quickstart: " + says.format(tmp_path / folder)


def test_quickstart_fast_reads_kilts_own_file_names_and_writes_its_own_report(script_env, mini_kilt, tmp_path):
    data = tmp_path / "kilt"
    shutil.copytree(mini_kilt, data)
    (data / "knowledge_source.jsonl").rename(data / "kilt_knowledgesource.json")
    out = tmp_path / "quickstart"
    (out).mkdir()
    (out / "kilt.json").write_text("the full run's report")
    run_script(script_env, "quickstart.sh", "--data", data, "--fast", "--out", out)
    assert list(json.loads((out / "kilt-fast.json").read_text())["systems"]) == ["bm25", "zero-shot"]
    assert (out / "kilt.json").read_text() == "the full run's report"
