"""Cut a miniature benchmark out of full KILT: a seeded sample of queries per task and
split, every page their provenance points to, and random distractor pages.

Everything streams: each task file and the knowledge source (5.9M pages, 35 GiB) are read
once, and only the sampled records are held in memory (reservoir sampling).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm

from safeio.atomic import atomic_directory, atomic_write
from safeio.outputs import check_outputs

from .io import iter_jsonl
from .tasks import find_task_files, parse_task_filename

KNOWLEDGE_SOURCE_NAME = "knowledge_source.jsonl"


def _reservoir(items: Iterable[tuple[int, dict]], n: int, rng: random.Random) -> list[tuple[int, dict]]:
    """A uniform sample of ``n`` items (all if fewer) in one pass, returned in input order."""
    sample: list[tuple[int, dict]] = []
    for seen, item in enumerate(items):
        if len(sample) < n:
            sample.append(item)
        else:
            slot = rng.randint(0, seen)
            if slot < n:
                sample[slot] = item
    return sorted(sample, key=lambda item: item[0])


def _provenance_pages(record: dict) -> list[str]:
    """wikipedia_ids of all provenance entries of a task record (none for test inputs), made
    strings and stripped as `kilt.io` and `kilt.eval` read them."""
    return [str(p["wikipedia_id"]).strip() for out in record.get("output") or []
            for p in out.get("provenance") or [] if "wikipedia_id" in p]


def _task_files(kilt_dir_or_files: str | Path | Sequence[str | Path],
                tasks: Sequence[str] | None) -> list[tuple[str, str, Path]]:
    """(task, split, path) of the task files to sample, in a stable order."""
    if isinstance(kilt_dir_or_files, (str, Path)) and Path(kilt_dir_or_files).is_dir():
        found = find_task_files(kilt_dir_or_files)
        files = [(task, split, Path(path)) for task, splits in found.items() for split, path in splits.items()]
    else:
        paths = [kilt_dir_or_files] if isinstance(kilt_dir_or_files, (str, Path)) else kilt_dir_or_files
        files = []
        for path in map(Path, paths):
            parsed = parse_task_filename(path.name)
            if parsed is None:
                raise ValueError(f"{path} is not named like a KILT task file (e.g. nq-dev-kilt.jsonl)")
            if not path.is_file():
                raise FileNotFoundError(f"task file {path} does not exist")
            files.append((*parsed, path))
    if tasks is not None:
        missing = sorted(set(tasks) - {task for task, _, _ in files})
        if missing:
            known = ", ".join(sorted({task for task, _, _ in files})) or "none"
            raise ValueError(f"no task files for {', '.join(missing)} (found: {known})")
        files = [f for f in files if f[0] in tasks]
    if not files:
        raise ValueError(f"no KILT task files found in {kilt_dir_or_files}")
    return sorted(files, key=lambda f: f[2].name)


def _check_subset_folder(out_dir: Path) -> None:
    """Refuse an existing ``out_dir`` that holds anything but a subset's files: it is replaced whole."""
    if not out_dir.is_dir():
        return
    foreign = sorted(p.name for p in out_dir.iterdir()
                     if p.name != KNOWLEDGE_SOURCE_NAME and parse_task_filename(p.name) is None)
    if foreign:
        raise ValueError(f"{out_dir}: holds files that are not part of a KILT subset ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); write the subset to a folder of its own")


def make_subset(kilt_dir_or_files: str | Path | Sequence[str | Path], knowledge_source: str | Path,
                out_dir: str | Path, queries_per_split: int = 100, distractors: int = 10_000,
                seed: int = 0, tasks: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Write a miniature KILT into ``out_dir``: the task files under their own names, with
    ``queries_per_split`` sampled queries each, and ``knowledge_source.jsonl`` holding
    their provenance pages plus ``distractors`` other pages, in knowledge-source order.

    Inputs and ``out_dir`` are checked before anything is read; the subset is built in a
    temporary folder that then replaces ``out_dir`` whole, so a failure leaves an earlier
    subset there as it was. The same ``seed`` gives the same subset. Returns a summary: query
    counts per file, page counts, and provenance pages the knowledge source lacks.
    """
    if queries_per_split < 1 or distractors < 0:
        raise ValueError("queries_per_split must be >= 1 and distractors >= 0")
    files = _task_files(kilt_dir_or_files, tasks)
    knowledge_source, out_dir = Path(knowledge_source), Path(out_dir)
    if not knowledge_source.is_file():
        raise FileNotFoundError(f"{knowledge_source}: knowledge source not found")
    open(knowledge_source, "rb").close()  # unreadable: fail now, not after sampling
    check_outputs(folders=[out_dir], inputs=[knowledge_source, *(path for _, _, path in files)])
    _check_subset_folder(out_dir)
    with atomic_directory(out_dir) as tmp:
        summary = _write_subset(files, knowledge_source, tmp, queries_per_split, distractors, seed, progress)
    return {"out_dir": str(out_dir), **summary}


def _write_subset(files: list[tuple[str, str, Path]], knowledge_source: Path, out_dir: Path,
                  queries_per_split: int, distractors: int, seed: int, progress: bool) -> dict:
    """`make_subset`'s work, into the empty folder ``out_dir``; the summary less its folder."""
    gold: set[str] = set()
    queries: dict[str, int] = {}
    for task, split, path in files:
        rng = random.Random(f"{seed}/{path.name}")
        records = iter_jsonl(path)
        sample = _reservoir(tqdm(records, desc=f"sampling {path.name}", unit=" queries",
                                 disable=not progress), queries_per_split, rng)
        with atomic_write(out_dir / path.name) as f:
            for _, record in sample:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                gold.update(_provenance_pages(record))
        queries[path.name] = len(sample)

    found: list[tuple[int, dict]] = []
    rng = random.Random(f"{seed}/knowledge_source")

    def others():
        for lineno, page in tqdm(iter_jsonl(knowledge_source), desc="scanning knowledge source",
                                 unit=" pages", disable=not progress):
            if str(page.get("wikipedia_id")).strip() in gold:
                found.append((lineno, page))
            else:
                yield lineno, page

    extra = _reservoir(others(), distractors, rng)
    pages = sorted(found + extra, key=lambda item: item[0])
    with atomic_write(out_dir / KNOWLEDGE_SOURCE_NAME) as f:
        for _, page in pages:
            f.write(json.dumps(page, ensure_ascii=False) + "\n")
    missing = sorted(gold - {str(page["wikipedia_id"]).strip() for _, page in found})
    return {
        "queries": queries,
        "gold_pages": len(found),
        "distractor_pages": len(extra),
        "missing_pages": missing,
    }
