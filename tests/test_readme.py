"""The README's Python API example runs as written, offline, with the embedded default models."""
from __future__ import annotations

import re
import shutil

from conftest import REPO


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


def test_the_python_api_example_runs_offline(mini_kilt, tmp_path, monkeypatch, capsys):
    blocks = [b for b in _python_blocks() if "Pipeline(" in b]
    assert len(blocks) == 1, "the README has one Python API example"
    shutil.copy(mini_kilt / "knowledge_source.jsonl", tmp_path / "knowledge_source.jsonl")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    ranked = namespace["ranked"]
    assert len(ranked.hits) > 0 and len(ranked.rerank_scores) == min(20, len(ranked.hits))
    assert str(ranked.pages[:5]) in capsys.readouterr().out


def test_the_layout_names_every_module():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):text.index("## Python API")]
    named = set(re.findall(r"[\w]+\.py|[\w]+/", layout))
    for package in ("safeio", "kilt", "multitask_retriever"):
        for path in (REPO / package).iterdir():
            if path.name.startswith("__") or path.name == "__pycache__":
                continue
            name = path.name + "/" if path.is_dir() else path.name
            assert name in named, f"README layout lacks {package}/{name}"
