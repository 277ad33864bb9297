"""Hostile outputs (issue 23): no `mtr` command writes over one of its own inputs (the same file,
a folder holding one, a file inside an input folder, through links), no two outputs of one
command collide, and only regular files are replaced. Each refusal is one line, exit code 2,
before any model, index or data is loaded, and leaves every file as it was. A failed
kilt-subset leaves the earlier subset as it was, with no temporary folder beside it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kilt.passages import write_passages
from multitask_retriever.cli import main
from safeio.outputs import InputOverwriteError, OutputError, check_outputs

REFUSAL = "refusing to write over an input (no option allows it: choose another output)"
COLLISION = "each output needs a path of its own"


def _state(path: Path) -> bytes | str:
    """A regular file's bytes, else what the path is (a FIFO is never opened)."""
    if path.is_symlink():
        return f"link to {os.readlink(path)}"
    if path.is_file():
        return path.read_bytes()
    return "folder" if path.is_dir() else "special file"


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every path under ``folder`` and its state."""
    return {str(path.relative_to(folder)): _state(path) for path in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------- the guard itself
@pytest.mark.parametrize("setup, files, folders, inputs, error, message", [
    pytest.param(lambda t: (t / "in.txt").write_text("x"), ["in.txt"], [], ["in.txt"], InputOverwriteError,
                 "{t}/in.txt: is the input {t}/in.txt; " + REFUSAL, id="file is an input"),
    pytest.param(lambda t: (t / "in.txt").write_text("x"), [], [""], ["in.txt"], InputOverwriteError,
                 "{t}: holds the input {t}/in.txt; " + REFUSAL, id="folder holds an input"),
    pytest.param(lambda t: (t / "index").mkdir(), ["index/ids.npy"], [], ["index"], InputOverwriteError,
                 "{t}/index/ids.npy: lies inside the input {t}/index; " + REFUSAL, id="file inside an input folder"),
    pytest.param(lambda t: (t / "index").mkdir(), [], ["index/sub"], ["index"], InputOverwriteError,
                 "{t}/index/sub: lies inside the input {t}/index; " + REFUSAL, id="folder inside an input folder"),
    pytest.param(lambda t: ((t / "in.txt").write_text("x"), (t / "link").symlink_to(t / "in.txt")), ["link"], [],
                 ["in.txt"], InputOverwriteError, "{t}/link: is the input {t}/in.txt; " + REFUSAL,
                 id="link to an input"),
    pytest.param(lambda t: ((t / "index").mkdir(), (t / "alias").symlink_to(t / "index")), ["alias/ids.npy"], [],
                 ["index"], InputOverwriteError, "{t}/alias/ids.npy: lies inside the input {t}/index; " + REFUSAL,
                 id="file inside a link to an input folder"),
    pytest.param(lambda t: ((t / "index").mkdir(), (t / "alias").symlink_to(t / "index")), ["index/ids.npy"], [],
                 ["alias"], InputOverwriteError, "{t}/index/ids.npy: lies inside the input {t}/alias; " + REFUSAL,
                 id="file inside an input given by a link"),
    pytest.param(lambda t: (t / "sub").mkdir(), ["out.txt", "sub/../out.txt"], [], [], OutputError,
                 "{t}/out.txt: is another output of the same command, {t}/sub/../out.txt; " + COLLISION,
                 id="two outputs are one file"),
    pytest.param(lambda t: None, ["run/log.txt"], ["run"], [], OutputError,
                 "{t}/run/log.txt: lies inside another output of the same command, {t}/run; " + COLLISION,
                 id="an output inside another"),
    pytest.param(lambda t: os.mkfifo(t / "fifo"), ["fifo"], [], [], OutputError,
                 "{t}/fifo: exists and is a FIFO; only a regular file is replaced", id="FIFO"),
    pytest.param(lambda t: ((t / "in.txt").write_text("x"), os.mkfifo(t / "fifo"), (t / "link").symlink_to("fifo")),
                 ["link"], [], ["in.txt"], OutputError,
                 "{t}/link: exists and is a FIFO; only a regular file is replaced", id="link to a FIFO"),
    pytest.param(lambda t: (t / "folder").mkdir(), ["folder"], [], [], OutputError,
                 "{t}/folder: exists and is a folder; only a regular file is replaced", id="folder for a file"),
    pytest.param(lambda t: (t / "file").write_text("x"), [], ["file"], [], OutputError,
                 "{t}/file: exists and is a regular file, not a folder", id="file for a folder"),
])
def test_the_guard_refuses(tmp_path, setup, files, folders, inputs, error, message):
    setup(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(error) as raised:
        check_outputs(files=[tmp_path / p for p in files], folders=[tmp_path / p for p in folders],
                      inputs=[tmp_path / p for p in inputs])
    assert str(raised.value) == message.format(t=tmp_path)
    assert _snapshot(tmp_path) == before


def test_the_guard_refuses_a_character_device_as_output():
    with pytest.raises(OutputError) as raised:
        check_outputs(files=["/dev/null"])
    assert str(raised.value) == "/dev/null: exists and is a character device; only a regular file is replaced"


def test_the_guard_lets_earlier_outputs_be_replaced(tmp_path, monkeypatch):
    """A regular file or folder an earlier run wrote, beside the inputs, is fine; so are absent
    inputs and inputs not given (None or "", which must not stand for the current folder)."""
    (tmp_path / "in.txt").write_text("x")
    (tmp_path / "out.txt").write_text("earlier")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    check_outputs(files=["out.txt"], folders=["run"], inputs=["in.txt", "absent.txt", None, ""])


# --------------------------------------------------------------------------- every command
@pytest.fixture(scope="module")
def passages(mini_kilt, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    write_passages(mini_kilt / "knowledge_source.jsonl", path, progress=False)
    return path


@pytest.fixture
def world(mini_kilt, passages, tmp_path) -> Path:
    """A KILT folder, a passage file, a config file, and stand-ins for saved folders: every
    refusal must come before they are read."""
    shutil.copytree(mini_kilt, tmp_path / "kilt")
    shutil.copy(passages, tmp_path / "passages.jsonl")
    (tmp_path / "train.yaml").write_text("steps: 1\n")
    for folder, name in (("index", "ids.npy"), ("encoder", "config.json"), ("reranker", "model.safetensors"),
                         ("shards", "manifest.json")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text(f"a saved {name}")
    return tmp_path


RETRIEVE = "retrieve --encoder {w}/encoder --index {w}/index --passages {w}/passages.jsonl " \
           "--queries {w}/kilt/nq-dev-kilt.jsonl --out"
PIPELINE = "pipeline --passages {w}/passages.jsonl --reranker {w}/reranker --queries {w}/kilt/nq-dev-kilt.jsonl --out"
MINE = "mine-negatives --data-dir {w}/kilt --passages {w}/passages.jsonl --tasks nq --out"


@pytest.mark.parametrize("setup, argv, message", [
    pytest.param(None, RETRIEVE + " {w}/index/ids.npy",
                 "{w}/index/ids.npy: lies inside the input {w}/index; " + REFUSAL, id="retrieve into the index"),
    pytest.param(None, PIPELINE + " {w}/reranker/model.safetensors",
                 "{w}/reranker/model.safetensors: lies inside the input {w}/reranker; " + REFUSAL,
                 id="pipeline into the reranker"),
    pytest.param(None, MINE + " {w}/passages.jsonl",
                 "{w}/passages.jsonl: is the input {w}/passages.jsonl; " + REFUSAL, id="mine-negatives over passages"),
    pytest.param(None, MINE + " {w}/kilt/nq-train-kilt.jsonl",
                 "{w}/kilt/nq-train-kilt.jsonl: is the input {w}/kilt/nq-train-kilt.jsonl; " + REFUSAL,
                 id="mine-negatives over a training file"),
    pytest.param(None, "index --shards {w}/shards --out {w}/shards",
                 "{w}/shards: is the input {w}/shards; " + REFUSAL, id="index over its shards"),
    pytest.param(None, "index --shards {w}/shards --out {w}/shards/index",
                 "{w}/shards/index: lies inside the input {w}/shards; " + REFUSAL, id="index into its shards"),
    pytest.param(None, "encode --encoder {w}/encoder --passages {w}/passages.jsonl --out-dir {w}",
                 "{w}: holds the input {w}/encoder; " + REFUSAL, id="encode into a folder holding its inputs"),
    pytest.param(None, "train --config {w}/train.yaml --output-dir {w}",
                 "{w}: holds the input {w}/train.yaml; " + REFUSAL, id="train into a folder holding its config"),
    pytest.param(None, "train --model-name-or-path {w}/encoder --output-dir {w}/encoder/run",
                 "{w}/encoder/run: lies inside the input {w}/encoder; " + REFUSAL, id="train into its start model"),
    pytest.param(None, "train-reranker --method zero-shot --data-dir {w}/kilt --tasks nq --passages "
                       "{w}/passages.jsonl --output-dir {w}",
                 "{w}: holds the input {w}/passages.jsonl; " + REFUSAL, id="train-reranker into its data"),
    pytest.param(None, "benchmark-quality {w}/kilt --config {w}/train.yaml --out {w}/train.yaml",
                 "{w}/train.yaml: is the input {w}/train.yaml; " + REFUSAL, id="benchmark-quality over its config"),
    pytest.param(lambda w: (w / "link.jsonl").symlink_to(w / "kilt" / "knowledge_source.jsonl"),
                 "chunk {w}/kilt/knowledge_source.jsonl {w}/link.jsonl",
                 "{w}/link.jsonl: is the input {w}/kilt/knowledge_source.jsonl; " + REFUSAL,
                 id="chunk through a link to its input"),
    pytest.param(lambda w: (w / "alias").symlink_to(w / "index"), RETRIEVE + " {w}/alias/ids.npy",
                 "{w}/alias/ids.npy: lies inside the input {w}/index; " + REFUSAL,
                 id="retrieve through a link to the index"),
    pytest.param(lambda w: shutil.copytree(w / "kilt", w / "copy"),
                 "bm25 {w}/passages.jsonl {w}/kilt/nq-dev-kilt.jsonl {w}/copy/nq-dev-kilt.jsonl --out-dir {w}/preds",
                 "{w}/preds/nq-dev-bm25.jsonl: is another output of the same command, {w}/preds/nq-dev-bm25.jsonl; "
                 + COLLISION, id="bm25 predictions of two same-named task files"),
    pytest.param(None, "benchmark-quality {w}/kilt --systems bm25 --quiet --out {w}/report.md",
                 "{w}/report.md: is another output of the same command, {w}/report.md; " + COLLISION,
                 id="benchmark-quality report named like its table"),
    pytest.param(lambda w: os.mkfifo(w / "fifo"), "chunk {w}/kilt/knowledge_source.jsonl {w}/fifo",
                 "{w}/fifo: exists and is a FIFO; only a regular file is replaced", id="chunk into a FIFO"),
    pytest.param(lambda w: os.mkfifo(w / "fifo"), MINE + " {w}/fifo",
                 "{w}/fifo: exists and is a FIFO; only a regular file is replaced", id="mine-negatives into a FIFO"),
    pytest.param(lambda w: (w / "preds").mkdir(), RETRIEVE + " {w}/preds",
                 "{w}/preds: exists and is a folder; only a regular file is replaced", id="retrieve into a folder"),
    pytest.param(None, "index --shards {w}/shards --out {w}/passages.jsonl",
                 "{w}/passages.jsonl: exists and is a regular file, not a folder", id="index over a file"),
])
def test_a_command_refuses_a_hostile_output_before_any_work(world, setup, argv, message, capsys):
    if setup:
        setup(world)
    before = _snapshot(world)
    command = argv.split()[0]
    assert main(argv.format(w=world).split()) == 2
    assert capsys.readouterr().err == f"mtr {command}: error: {message.format(w=world)}\n"
    assert _snapshot(world) == before


def test_encode_has_the_overwrite_flag_its_errors_name(tiny_bert, passages, tmp_path, capsys):
    argv = ["encode", "--encoder", str(tiny_bert), "--passages", str(passages), "--out-dir", str(tmp_path / "shards"),
            "--shard-size", "1000", "--device", "cpu"]
    assert main([*argv, "--batch-size", "32"]) == 0
    capsys.readouterr()
    assert main([*argv, "--batch-size", "16"]) == 2
    assert capsys.readouterr().err.strip().endswith("use another folder or overwrite=True (mtr encode --overwrite)")
    assert main([*argv, "--batch-size", "16", "--overwrite"]) == 0
    assert '"batch_size": 16' in (tmp_path / "shards" / "manifest.json").read_text()


# --------------------------------------------------------------------------- kilt-subset
SUBSET = "kilt-subset {w}/kilt {ks} {w}/subset --queries 3 --distractors 3 --seed 1"


@pytest.fixture
def subset(world) -> dict[str, bytes | str]:
    """An earlier subset in world/subset (seed 0); returns its snapshot."""
    assert main(f"kilt-subset {world}/kilt {world}/kilt/knowledge_source.jsonl {world}/subset "
                f"--queries 2 --distractors 2".split()) == 0
    return _snapshot(world / "subset")


def _bad_source(w: Path) -> None:
    lines = (w / "kilt" / "knowledge_source.jsonl").read_text().splitlines()
    (w / "bad.jsonl").write_text("\n".join(lines) + "\n{not json\n")


@pytest.mark.parametrize("setup, ks, message", [
    pytest.param(None, "{w}/missing.jsonl", "{w}/missing.jsonl: knowledge source not found", id="source missing"),
    pytest.param(_bad_source, "{w}/bad.jsonl",
                 "{w}/bad.jsonl:{n}: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
                 id="source corrupt after the gold pages"),
    pytest.param(lambda w: (w / "subset" / "notes.txt").write_text("mine"), "{w}/kilt/knowledge_source.jsonl",
                 "{w}/subset: holds files that are not part of a KILT subset (notes.txt); write the subset to a "
                 "folder of its own", id="subset folder holds other files"),
])
def test_a_failed_kilt_subset_leaves_the_earlier_subset_as_it_was(world, subset, setup, ks, message, capsys):
    if setup:
        setup(world)
    before = _snapshot(world / "subset")
    capsys.readouterr()
    assert main(SUBSET.format(w=world, ks=ks.format(w=world)).split()) == 2
    n = len((world / "kilt" / "knowledge_source.jsonl").read_text().splitlines()) + 1
    err = capsys.readouterr().err  # progress bars where reading began, then the error
    assert "Traceback" not in err and err.splitlines()[-1] == f"mtr kilt-subset: error: {message.format(w=world, n=n)}"
    assert _snapshot(world / "subset") == before
    assert sorted(p.name for p in world.iterdir() if p.name.startswith(".")) == []  # no temporary folder left


def test_kilt_subset_replaces_an_earlier_subset_whole(world, subset):
    assert main(SUBSET.format(w=world, ks=world / "kilt" / "knowledge_source.jsonl").split() + ["--tasks", "nq"]) == 0
    assert sorted(p.name for p in (world / "subset").iterdir()) == [
        "knowledge_source.jsonl", "nq-dev-kilt.jsonl", "nq-train-kilt.jsonl"]
    assert len((world / "subset" / "nq-dev-kilt.jsonl").read_text().splitlines()) == 3
    assert sorted(p.name for p in world.iterdir() if p.name.startswith(".")) == []



def test_kilt_subset_through_a_link_replaces_the_folder_it_points_to(world, subset):
    (world / "link").symlink_to("subset")
    assert main(f"kilt-subset {world}/kilt {world}/kilt/knowledge_source.jsonl {world}/link --tasks nq".split()) == 0
    assert os.readlink(world / "link") == "subset"
    assert sorted(p.name for p in (world / "subset").iterdir()) == [
        "knowledge_source.jsonl", "nq-dev-kilt.jsonl", "nq-train-kilt.jsonl"]
    assert sorted(p.name for p in world.iterdir() if p.name.startswith(".")) == []
