"""Getting KILT data: kilt.subset on mini_kilt as if it were full KILT, and the download
script's dry run."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kilt.io import iter_jsonl, read_task_file
from kilt.subset import make_subset
from kilt.tasks import TASKS, find_task_files

REPO = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> list[dict]:
    return [record for _, record in iter_jsonl(path)]


@pytest.fixture(scope="module")
def subset(mini_kilt, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("subset")
    summary = make_subset(mini_kilt, mini_kilt / "knowledge_source.jsonl", out,
                          queries_per_split=3, distractors=5, seed=1, progress=False)
    return out, summary


def test_subset_keeps_n_queries_of_every_task_file_unchanged_and_in_order(mini_kilt, subset):
    out, summary = subset
    names = sorted(p.name for splits in find_task_files(mini_kilt).values() for p in splits.values())
    assert sorted(summary["queries"]) == names
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["knowledge_source.jsonl"])
    for name in names:
        source, sampled = _lines(mini_kilt / name), _lines(out / name)
        assert len(sampled) == summary["queries"][name] == 3
        positions = [source.index(record) for record in sampled]
        assert positions == sorted(positions)


def test_subset_knowledge_source_has_all_gold_pages_plus_the_distractors(mini_kilt, subset):
    out, summary = subset
    gold = {page for path in out.glob("*-kilt.jsonl") for e in read_task_file(path) for page in e.gold_pages}
    pages = _lines(out / "knowledge_source.jsonl")
    ids = [p["wikipedia_id"] for p in pages]
    assert gold <= set(ids)
    assert len(ids) == len(set(ids)) == len(gold) + 5
    assert (summary["gold_pages"], summary["distractor_pages"], summary["missing_pages"]) == (len(gold), 5, [])
    source = _lines(mini_kilt / "knowledge_source.jsonl")
    assert pages == [p for p in source if p["wikipedia_id"] in set(ids)]


def test_subset_is_deterministic_for_a_seed(mini_kilt, subset, tmp_path):
    out, _ = subset
    make_subset(mini_kilt, mini_kilt / "knowledge_source.jsonl", tmp_path / "same",
                queries_per_split=3, distractors=5, seed=1, progress=False)
    make_subset(mini_kilt, mini_kilt / "knowledge_source.jsonl", tmp_path / "other",
                queries_per_split=3, distractors=5, seed=2, progress=False)
    files = sorted(p.name for p in out.iterdir())
    assert all((tmp_path / "same" / f).read_bytes() == (out / f).read_bytes() for f in files)
    assert any((tmp_path / "other" / f).read_bytes() != (out / f).read_bytes() for f in files)


def test_subset_of_chosen_tasks_or_files(mini_kilt, tmp_path):
    summary = make_subset(mini_kilt, mini_kilt / "knowledge_source.jsonl", tmp_path / "a",
                          queries_per_split=100, distractors=0, tasks=["fever"], progress=False)
    assert summary["queries"] == {"fever-dev-kilt.jsonl": 9, "fever-train-kilt.jsonl": 15}
    summary = make_subset([mini_kilt / "nq-dev-kilt.jsonl"], mini_kilt / "knowledge_source.jsonl",
                          tmp_path / "b", queries_per_split=2, distractors=0, progress=False)
    assert summary["queries"] == {"nq-dev-kilt.jsonl": 2}


def test_subset_names_what_it_cannot_find(mini_kilt, tmp_path):
    with pytest.raises(ValueError, match=r"no task files for eli5 \(found: fever, hotpotqa"):
        make_subset(mini_kilt, mini_kilt / "knowledge_source.jsonl", tmp_path, tasks=["eli5"], progress=False)
    with pytest.raises(ValueError, match="knowledge_source.jsonl is not named like a KILT task file"):
        make_subset([mini_kilt / "knowledge_source.jsonl"], mini_kilt / "knowledge_source.jsonl", tmp_path,
                    progress=False)


def test_subset_reports_provenance_pages_missing_from_the_knowledge_source(mini_kilt, tmp_path):
    source = tmp_path / "ks.jsonl"
    pages = _lines(mini_kilt / "knowledge_source.jsonl")
    source.write_text("".join(json.dumps(p) + "\n" for p in pages if p["wikipedia_title"] != "Magna Carta"))
    magna = next(p["wikipedia_id"] for p in pages if p["wikipedia_title"] == "Magna Carta")
    summary = make_subset([mini_kilt / "nq-dev-kilt.jsonl"], source, tmp_path / "out",
                          queries_per_split=100, distractors=0, progress=False)
    assert summary["missing_pages"] == [magna]


def _download(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "download_kilt.sh"), *args],
                          capture_output=True, text=True, timeout=30)


def test_download_dry_run_lists_every_registered_task_file():
    run = _download("--dry-run", "/data/kilt")
    assert run.returncode == 0, run.stderr
    urls = {line.split(" -> ")[0] for line in run.stdout.splitlines()}
    assert "http://dl.fbaipublicfiles.com/KILT/kilt_knowledgesource.json" in urls
    for task in TASKS.values():
        for name in task.files.values():
            assert f"http://dl.fbaipublicfiles.com/KILT/{name}" in urls, task.name


def test_download_dry_run_restricted_to_tasks():
    run = _download("--dry-run", "--tasks", "nq,fever", "--no-knowledge-source", "out")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"http://dl.fbaipublicfiles.com/KILT/{name} -> out/{name}"
        for name in ["nq-train-kilt.jsonl", "nq-dev-kilt.jsonl", "nq-test_without_answers-kilt.jsonl",
                     "fever-train-kilt.jsonl", "fever-dev-kilt.jsonl", "fever-test_without_answers-kilt.jsonl"]
    ]


def test_download_rejects_unknown_tasks_and_has_help():
    run = _download("--dry-run", "--tasks", "nq,squad")
    assert (run.returncode, run.stdout) == (2, "")
    assert "unknown task: squad" in run.stderr
    assert "--dry-run" in _download("--help").stdout
