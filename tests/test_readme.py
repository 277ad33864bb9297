"""The README's Python API example runs as written from a fresh clone, offline, with the packaged
models and the bundled data; the README names every module and never its development setting."""
from __future__ import annotations

import re
import shutil

from conftest import REPO


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


def test_the_python_api_example_runs_offline_and_finds_shakespeare(tmp_path, monkeypatch, capsys):
    blocks = [b for b in _python_blocks() if "Pipeline(" in b]
    assert len(blocks) == 1, "the README has one Python API example"
    (tmp_path / "data").symlink_to(REPO / "data")  # the clone's folders, without writing into it
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = [line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 5 and printed[0][1] == "William Shakespeare"
    assert [float(score) for score, _ in printed] == sorted((float(score) for score, _ in printed), reverse=True)


def test_the_layout_names_every_module():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("## Layout")
    layout = text[start:text.index("\n## ", start)]
    named = set(re.findall(r"[\w]+\.py|[\w]+/", layout))
    for package in ("safeio", "kilt", "multitask_retriever"):
        for path in (REPO / package).iterdir():
            if path.name.startswith("__") or path.name == "__pycache__":
                continue
            name = path.name + "/" if path.is_dir() else path.name
            assert name in named, f"README layout lacks {package}/{name}"


def test_the_readme_speaks_of_the_toolkit_not_of_its_development():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for word in ("../shared", "issue", " here "):
        assert word not in text, word
