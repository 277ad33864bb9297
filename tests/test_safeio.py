"""safeio: output checks refuse outputs over inputs; atomic writes of files and folders leave the
old version or the new one, with a plain open's mode, and the next write removes what a killed one left."""
from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

from safeio.atomic import atomic_directory, atomic_write, remove_orphans_in
from safeio.identity import file_version
from safeio.lock import FolderBusyError, FolderLock
from safeio.outputs import InputOverwriteError, check_outputs
from safeio.text import TextFormatError, decode_utf8, read_json_object, read_text


# --------------------------------------------------------------------------- outputs never replace inputs
@pytest.fixture
def task_file(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "nq-dev.jsonl"
    path.write_text('{"id": "a", "input": "q"}\n')
    return path


@pytest.mark.parametrize("output, what", [
    (lambda f: f, "is"),                                  # the same path
    (lambda f: f.parent / "." / f.name, "is"),            # another spelling of it
    (lambda f: f.parent / "same-name.jsonl", "is"),       # a hard link (same inode); made below
    (lambda f: f.parent / "link.jsonl", "is"),            # a symbolic link to it; made below
    (lambda f: f.parent, "holds"),                        # a folder replaced whole that holds it
])
def test_an_output_that_would_replace_an_input_is_refused(task_file, output, what):
    os.link(task_file, task_file.parent / "same-name.jsonl")
    (task_file.parent / "link.jsonl").symlink_to(task_file)
    out = output(task_file)
    with pytest.raises(InputOverwriteError) as error:
        check_outputs(files=[out], inputs=[task_file])
    assert str(error.value) == (f"{out}: {what} the input {task_file}; refusing to write over an input "
                                f"(no option allows it: choose another output)")


def test_a_folder_output_may_not_hold_a_file_of_an_inputs_name(task_file):
    # `bm25 ... data/nq-dev.jsonl --out-dir data` would write data/nq-dev.jsonl
    with pytest.raises(InputOverwriteError, match=r"nq-dev\.jsonl: is the input"):
        check_outputs(files=[task_file.parent / name for name in ("nq-dev.jsonl",)], inputs=[task_file])


def test_outputs_beside_their_inputs_are_fine(task_file, tmp_path):
    check_outputs(files=[task_file.parent / "nq-dev-predictions.jsonl"], folders=[tmp_path / "index"],
                  inputs=[task_file, tmp_path / "not-there.jsonl"])


# --------------------------------------------------------------------------- atomic writes
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_atomic_write_gives_the_mode_a_plain_open_gives(tmp_path, umask_027):
    with atomic_write(tmp_path / "out.txt") as f:
        f.write("x")
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o640  # 0666 less the umask 027


def test_atomic_directory_gives_the_mode_mkdir_gives(tmp_path, umask_027):
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "a").write_text("x")
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o750  # 0777 less the umask 027


def _killed_while_writing(target: Path, directory: bool) -> list[str]:
    """Run a write of `target` in another process and kill it mid-write; the names it left."""
    opener = "atomic_directory" if directory else "atomic_write"
    code = (f"import os, signal; from safeio.atomic import {opener}; w = {opener}({str(target)!r}); w.__enter__(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == -9
    return sorted(os.listdir(target.parent))


@pytest.mark.parametrize("directory", [False, True], ids=["file", "folder"])
def test_the_next_write_removes_what_a_killed_write_left(tmp_path, directory):
    target = tmp_path / "out"
    left = _killed_while_writing(target, directory)
    assert len(left) == 1 and left[0].startswith(".out.") and left[0].endswith(".tmp")
    (tmp_path / ".out.abcd_123.tmp").write_text("an earlier version's temporary name")
    (tmp_path / ".out.offsets.npy.abcd_123.tmp").write_text("a temporary file of another target")
    (tmp_path / f".out.{os.getppid()}.abcd_123.tmp").write_text("a running process's")
    if directory:
        with atomic_directory(target) as tmp:
            (tmp / "a").write_text("x")
    else:
        with atomic_write(target) as f:
            f.write("x")
    assert sorted(os.listdir(tmp_path)) == [f".out.{os.getppid()}.abcd_123.tmp", ".out.offsets.npy.abcd_123.tmp",
                                            "out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["one-step-swap", "two-renames"])
def test_atomic_directory_replaces_a_folder_whole_or_not_at_all(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr("safeio.atomic._exchange", lambda a, b: False)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "old").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(folder) as tmp:
            (tmp / "new").write_text("half")
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == ["folder"] and os.listdir(folder) == ["old"]
    with atomic_directory(folder) as tmp:
        (tmp / "new").write_text("new")
    assert os.listdir(tmp_path) == ["folder"] and os.listdir(folder) == ["new"]

def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]




def _folder(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "file").write_text(content)
    return path


def test_a_folder_caught_between_its_two_renames_is_put_back(tmp_path):
    _folder(tmp_path / ".model.a1a1a1a1.old", "previous")  # killed after moving model/ aside
    _folder(tmp_path / ".model.b2b2b2b2.tmp", "half")
    _folder(tmp_path / "final", "kept")
    _folder(tmp_path / ".final.c3c3c3c3.old", "replaced")  # killed before deleting the replaced one
    removed = remove_orphans_in(tmp_path)
    assert sorted(p.name for p in removed) == [".final.c3c3c3c3.old", ".model.b2b2b2b2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final", "model"]
    assert (tmp_path / "model" / "file").read_text() == "previous"
    assert (tmp_path / "final" / "file").read_text() == "kept"


# --------------------------------------------------------------------------- text and identity
def test_bytes_that_are_not_utf8_are_named_by_file_line_and_byte(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(TextFormatError) as error:
        read_text(path)
    assert str(error.value) == f"{path}:2: not UTF-8 (byte 0xe9 at byte 7 of the line); save the file as UTF-8"


def test_a_format_names_its_own_error_for_undecodable_bytes():
    class CsvError(ValueError):
        pass

    with pytest.raises(CsvError, match=r"^t\.csv:3: not UTF-8 \(byte 0xff at byte 2 of the line\)"):
        decode_utf8(b"a\xff", "t.csv", lineno=3, error=CsvError)


def test_a_json_file_must_hold_an_object(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("[1]\n")
    with pytest.raises(ValueError, match=r"meta\.json:1: expected a JSON object"):
        read_json_object(path)


def test_a_file_version_is_its_resolved_path_size_and_mtime(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("abc")
    os.utime(path, ns=(0, 1_000_000_007))
    assert file_version(tmp_path / "." / "in.txt") == {"path": str(path.resolve()), "size": 3,
                                                       "mtime_ns": 1_000_000_007}


def test_safeio_imports_neither_kilt_nor_the_retriever():
    code = ("import sys, safeio.atomic, safeio.identity, safeio.outputs, safeio.text; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kilt', 'multitask_retriever')))")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True)
    assert run.stdout == "[]\n"


# --------------------------------------------------------------------------- one writer per folder
def _hold_lock(folder: Path) -> subprocess.Popen:
    """A second process that takes `folder`'s writer lock and keeps it until killed."""
    code = ("import sys, time; from safeio.lock import FolderLock; FolderLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_folder_another_process_writes_in_is_refused_naming_it(tmp_path):
    proc = _hold_lock(tmp_path / "out")
    try:
        with pytest.raises(FolderBusyError, match=rf"^{re.escape(str(tmp_path / 'out'))}: another process "
                                                  rf"\(pid {proc.pid}\) is writing here"):
            FolderLock(tmp_path / "out").acquire()
    finally:
        proc.kill()
        proc.wait()
    with FolderLock(tmp_path / "out"):  # the lock went with the process
        assert (tmp_path / "out" / ".mtr-lock").read_text() == str(os.getpid())
    assert not (tmp_path / "out" / ".mtr-lock").exists()  # a released lock leaves no file


def test_a_second_training_run_on_the_same_folder_is_refused_before_it_trains(tmp_path):
    """Two `mtr train` started on one output folder without `accelerate launch` would each think
    itself the main process and write the same files: the second stops at once."""
    from multitask_retriever.rerank.train import RerankTrainConfig
    from multitask_retriever.training_loop import TrainingLoop

    proc = _hold_lock(tmp_path / "run")
    try:
        loop = TrainingLoop(RerankTrainConfig(output_dir=str(tmp_path / "run")))
        with pytest.raises(FolderBusyError, match="another process"):
            loop.start()
    finally:
        proc.kill()
        proc.wait()
