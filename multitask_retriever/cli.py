"""The `mtr` command: one subcommand per stage of the pipeline.

    mtr chunk / bm25 / kilt-subset / evaluate          the KILT layer
    mtr encode / index / retrieve (alias search)       the inference path
    mtr train / mine-negatives                         multitask dual-encoder training
    mtr train-reranker / pipeline                      reranking
    mtr benchmark-quality                              every system on a KILT folder, scored

Subcommands import their heavy modules (models, FAISS) only when they run. Each checks its
outputs against its inputs (safeio.outputs.check_outputs) before any work: no command writes over one
of its own inputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import field_like
from .rerank import METHODS as RERANK_METHODS
from .rerank.fusion import METHODS as FUSION_METHODS, Fusion

if TYPE_CHECKING:
    from kilt.hits import SearchBackend


@dataclass(frozen=True)
class Command:
    """One subcommand: its handler, the dataclass declaring its own flags (beside the handler),
    the config dataclasses (`module.Class` in this package) whose fields are flags too, its
    help line (or a function giving it), and extra `add_parser` options (or None)."""

    handler: Callable[[argparse.Namespace], int | None]
    args: type | None = None
    help: str | Callable[[], str] = ""
    configs: tuple[str, ...] = ()
    parser_options: Callable[[], dict[str, Any]] | None = None


#: every subcommand name (aliases too) -> its Command, in the order `mtr --help` lists them
COMMANDS: dict[str, Command] = {}


def command(name: str, args: type | None = None, help: str | Callable[[], str] = "", aliases: tuple[str, ...] = (),
            configs: tuple[str, ...] = (), parser_options: Callable[[], dict[str, Any]] | None = None):
    """Register the decorated handler as subcommand `name` (and `aliases`) with its flags."""
    def register(fn):
        spec = Command(fn, args, help, configs, parser_options)
        for key in (name, *aliases):
            COMMANDS[key] = spec
        return fn

    return register


def arg(default: Any = dataclasses.MISSING, help: str | Callable[[], str] = "", **meta: Any) -> Any:
    """A field of a command's arguments dataclass: its default (none: a required flag) and
    metadata for `config.add_config_arguments(..., command=True)`: help, a range (min, above,
    max, below), positional, aliases, choices (a list or a function giving it), metavar."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=default.copy, metadata={"help": help, **meta})
    return dataclasses.field(default=default, metadata={"help": help, **meta})


def _force() -> Any:
    """The --force switch of commands that search an index."""
    return arg(False, "search an index with another encoder or passage file than it was built from")


def _prompt_styles() -> list[str]:
    """--query-prompts' choices: unset, or one of the encoder's prompt styles."""
    from .encoder import PROMPT_STYLES

    return ["", *PROMPT_STYLES]


def _query_prompts() -> Any:
    """The --query-prompts flag of commands that encode queries."""
    return arg("", choices=_prompt_styles, metavar="STYLE", help=lambda: (
        f"replace the encoder's saved query prompts: {' | '.join(_prompt_styles()[1:])} (none: the plain query, "
        "as benchmark-quality's zero-shot system reads it) [the encoder's]"))


def _kilt_files(data_dir: str | Path) -> list[Path]:
    """The task files and knowledge source of a KILT folder (none when it is absent): the inputs
    a command reading that folder may not write over."""
    from kilt.tasks import find_task_files

    from .data import KNOWLEDGE_SOURCES

    folder = Path(data_dir)
    if not data_dir or not folder.is_dir():
        return []
    return [*(path for splits in find_task_files(folder).values() for path in splits.values()),
            *(folder / name for name in KNOWLEDGE_SOURCES)]


# --------------------------------------------------------------------------- KILT layer
@dataclass(kw_only=True)
class ChunkArgs:
    """`mtr chunk`: a knowledge source into a passage file."""

    knowledge_source: str = arg(help="KILT knowledge source (.jsonl or .jsonl.gz)", positional=True)
    out: str = arg(help="passage file to write (JSONL)", positional=True)
    words: int = arg(100, "words per passage", min=1)
    skip_invalid: bool = arg(False, "skip malformed pages (counted and reported) instead of stopping at the first")


@command("chunk", ChunkArgs, "split a KILT knowledge source into 100-word passages")
def _chunk(args) -> None:
    from safeio.outputs import check_outputs
    from kilt.passages import write_passages

    check_outputs(files=[args.out], inputs=[args.knowledge_source])
    n = write_passages(args.knowledge_source, args.out, words=args.words, skip_invalid=args.skip_invalid)
    print(f"wrote {n} passages to {args.out}")


@dataclass(kw_only=True)
class BM25Args:
    """`mtr bm25`: BM25 predictions for task files."""

    passages: str = arg(help="passage file from `mtr chunk`", positional=True)
    task_files: list[str] = arg(help="KILT task files (queries)", positional=True)
    out_dir: str = arg(help="where prediction files go")
    k: int = arg(100, "pages per query", min=1)


@command("bm25", BM25Args, "BM25 page rankings for KILT task files")
def _bm25(args) -> None:
    from kilt.bm25 import BM25Retriever
    from safeio.outputs import check_outputs
    from kilt.passages import PassageStore
    from kilt.predict import predict_file

    out_dir = Path(args.out_dir)
    outs = [out_dir / (Path(f).name.removesuffix("-kilt.jsonl").removesuffix(".jsonl") + "-bm25.jsonl")
            for f in args.task_files]
    check_outputs(files=outs, inputs=[args.passages, *args.task_files])
    retriever = BM25Retriever.cached(PassageStore(args.passages), progress=True)
    for task_file, out in zip(args.task_files, outs):
        n = predict_file(lambda queries, task: retriever.search_pages(queries, k=args.k), task_file, out)
        print(f"{task_file}: {n} predictions -> {out}")


@dataclass(kw_only=True)
class KiltSubsetArgs:
    """`mtr kilt-subset`: a miniature KILT folder from the full files."""

    kilt_dir: str = arg(help="folder with the official <task>-<split>-kilt.jsonl files", positional=True)
    knowledge_source: str = arg(help="kilt_knowledgesource.json", positional=True)
    out_dir: str = arg(positional=True)
    queries: int = arg(100, "queries per task and split", min=1)
    distractors: int = arg(10000, "random extra pages", min=0)
    tasks: str = arg("", "comma-separated task names [all present]")
    seed: int = arg(0, min=0)


@command("kilt-subset", KiltSubsetArgs, "a miniature benchmark from full KILT files, deterministic")
def _kilt_subset(args) -> None:
    from kilt.subset import make_subset

    # make_subset checks its inputs and output folder (safeio.outputs.check_outputs) before reading anything
    summary = make_subset(args.kilt_dir, args.knowledge_source, args.out_dir,
                          queries_per_split=args.queries, distractors=args.distractors, seed=args.seed,
                          tasks=args.tasks.split(",") if args.tasks else None)
    print(json.dumps(summary, indent=1, default=str))


def _evaluate_parser() -> dict[str, Any]:
    """The flags and description of `python -m kilt.eval`, which the KILT layer declares."""
    from kilt.eval import DESCRIPTION, build_parser as eval_parser

    return {"description": DESCRIPTION, "parents": [eval_parser(add_help=False)]}


@command("evaluate", None, "KILT retrieval metrics (same as python -m kilt.eval)", parser_options=_evaluate_parser)
def _evaluate(args) -> int:
    from kilt.eval import run

    return run(args)


# --------------------------------------------------------------------------- inference path
@dataclass(kw_only=True)
class EncodeArgs:
    """`mtr encode`: a passage file into vector shards."""

    encoder: str = arg(help="DualEncoder folder or Hugging Face name")
    passages: str = arg(help="passage file from `mtr chunk`")
    out_dir: str = arg(help="shard folder (resumes where it stopped)")
    overwrite: bool = arg(False, "encode every shard again, discarding the shards --out-dir holds (never an input)")
    shard_size: int = arg(100_000, min=1)
    batch_size: int = arg(128, min=1)
    device: str = arg("auto")


@command("encode", EncodeArgs, "encode a passage file into resumable shards")
def _encode(args) -> None:
    from safeio.outputs import check_outputs

    from .devices import process_device
    from .encoder import DualEncoder
    from .encoding import encode_corpus

    check_outputs(folders=[args.out_dir], inputs=[args.encoder, args.passages])
    encoder = DualEncoder.from_pretrained(args.encoder).to(process_device(args.device))
    out = encode_corpus(encoder, args.passages, args.out_dir, shard_size=args.shard_size,
                        batch_size=args.batch_size, overwrite=args.overwrite)
    print(f"encoded shards in {out}")


@dataclass(kw_only=True)
class IndexArgs:
    """`mtr index` (with IndexConfig's flags): shards into an index."""

    shards: str = arg(help="folder written by `mtr encode`")
    out: str = arg(help="index folder to write")


@command("index", IndexArgs, "build a FAISS index from encoded shards", configs=("indexing.IndexConfig",))
def _index(args) -> None:
    from safeio.outputs import check_outputs

    from .config import config_from_args
    from .indexing import Index, IndexConfig

    check_outputs(folders=[args.out], inputs=[args.shards])
    index = Index.from_shards(args.shards, config_from_args(IndexConfig, args))
    index.save(args.out)
    print(f"saved {args.out}")


@dataclass(kw_only=True)
class RetrieveArgs:
    """`mtr retrieve` / `mtr search`: dense predictions for a task file."""

    encoder: str = arg()
    index: str = arg(help="folder written by `mtr index`")
    passages: str = arg()
    queries: str = arg(help="KILT task file")
    out: str = arg(help="KILT prediction file to write")
    task: str | None = arg(None, "task prompt [from the file name]")
    k: int = arg(100, min=1)
    device: str = arg("auto", "auto | cpu | cuda: where the encoder runs and the index searches")
    nprobe: int | None = arg(None, "IVF cells visited per query [as the index was saved]")
    hnsw_ef_search: int | None = arg(None, "HNSW search beam width [as saved]")
    backend: str | None = arg(None, "faiss | torch: search with another backend [as saved]")
    query_prompts: str = _query_prompts()
    force: bool = _force()


@command("retrieve", RetrieveArgs, "top-k pages for every query of a KILT task file", aliases=("search",))
def _retrieve(args) -> None:
    from safeio.outputs import check_outputs

    from .retriever import load_retriever

    check_outputs(files=[args.out], inputs=[args.queries, args.passages, args.index, args.encoder])
    overrides = {name: getattr(args, name) for name in ("nprobe", "hnsw_ef_search", "backend")
                 if getattr(args, name) is not None}
    retriever = load_retriever(args.encoder, args.index, args.passages, device=args.device, force=args.force,
                               query_prompts=args.query_prompts, **overrides)
    n = retriever.predict(args.queries, args.out, task=args.task, k=args.k)
    print(f"{args.queries}: {n} predictions -> {args.out}")


# --------------------------------------------------------------------------- dual-encoder training
def _train_help() -> str:
    """`mtr train`'s help line, naming the training methods."""
    from .trainer import methods

    return f"train the dual encoder on KILT tasks ({', '.join(methods())})"


@dataclass(kw_only=True)
class TrainArgs:
    """`mtr train` (with TrainConfig's flags)."""

    config: list[str] = arg([], "YAML/JSON with TrainConfig fields; repeatable, later files and flags override "
                            "earlier", metavar="FILE")
    resume: bool = arg(False, "continue the run in --output-dir from its checkpoint")


@command("train", TrainArgs, _train_help, configs=("trainer.TrainConfig",))
def _train(args) -> None:
    from safeio.outputs import check_outputs

    from .config import config_from_args, load_config_file
    from .training import train
    from .trainer import TrainConfig

    cfg = config_from_args(TrainConfig, args, [load_config_file(path) for path in args.config])
    check_outputs(folders=[cfg.output_dir] if cfg.output_dir else [], inputs=[
        *args.config, *_kilt_files(cfg.data.dir), cfg.data.passages, cfg.data.negatives, cfg.model.name_or_path])
    result = train(cfg, resume=args.resume)
    rounds = f" in each of {cfg.data.negative_rounds + 1} rounds" if cfg.data.negative_rounds else ""
    print(f"trained {cfg.method} for {result.step} steps{rounds}; model: {result.model_path}")


@dataclass(kw_only=True)
class MineNegativesArgs:
    """`mtr mine-negatives`: hard negatives from BM25 or a trained encoder."""

    data_dir: str = arg(help="KILT folder with <task>-train-kilt.jsonl files")
    passages: str = arg(help="passage file from `mtr chunk`")
    out: str = arg(help="JSONL to write (TrainConfig.negatives / --negatives)")
    tasks: str = arg("", "comma-separated task names [all with a train file]")
    split: str = arg("train")
    encoder: str | None = arg(None, "DualEncoder folder for ANCE-style negatives [BM25]")
    index: str | None = arg(None, "folder written by `mtr index` for --encoder")
    depth: int = arg(100, "passages retrieved per query", min=1)
    keep: int = arg(30, "hard negatives kept per query", min=0)
    max_queries: int = arg(0, "cap on queries per task (0 = all)", min=0)
    device: str = arg("auto")
    force: bool = _force()


@command("mine-negatives", MineNegativesArgs, "training queries with hard negatives from BM25 or a trained model")
def _mine_negatives(args) -> None:
    from safeio.outputs import check_outputs
    from kilt.passages import PassageStore

    from .data import build_training_examples, task_train_files
    from .examples import write_training_examples

    files = task_train_files(args.data_dir, args.tasks.split(",") if args.tasks else (), args.split)
    check_outputs(files=[args.out], inputs=[args.passages, *files.values(), args.encoder, args.index])
    store = PassageStore(args.passages)
    if args.encoder:
        if not args.index:
            raise ValueError("--encoder needs --index (an index of that encoder's passage vectors)")
        from .retriever import load_retriever

        backend = load_retriever(args.encoder, args.index, args.passages, device=args.device, force=args.force)
    else:
        from kilt.bm25 import BM25Retriever

        backend = BM25Retriever.cached(store, progress=True)
    examples = build_training_examples(files, store, backend, depth=args.depth,
                                       keep=args.keep, max_queries=args.max_queries)
    n = write_training_examples(args.out, examples)
    print(f"wrote {n} training queries with hard negatives to {args.out} (use it as --negatives)")


# --------------------------------------------------------------------------- reranking
def _option_values(pairs: list[str]) -> dict:
    """--option KEY=VALUE pairs, values read as JSON where they parse (numbers, booleans, lists)."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            values[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            values[key.replace("-", "_")] = value
    return values


@dataclass(kw_only=True)
class FirstStageArgs:
    """The first stage of reranking commands (`_first_stage`): dense or BM25 candidates."""

    passages: str = arg(help="passage file from `mtr chunk`")
    encoder: str | None = arg(None, "DualEncoder folder for dense candidates [BM25]")
    index: str | None = arg(None, "folder written by `mtr index` for --encoder")
    device: str = arg("auto", "auto | cpu | cuda: the encoder, its index and the reranker")
    query_prompts: str = _query_prompts()
    force: bool = _force()


def _first_stage(args: argparse.Namespace) -> SearchBackend:
    """Our dense Retriever (--encoder/--index) or BM25 over the passage file, returning Hits."""
    if args.encoder:
        if not args.index:
            raise ValueError("--encoder needs --index (an index of that encoder's passage vectors)")
        from .retriever import load_retriever

        return load_retriever(args.encoder, args.index, args.passages, device=args.device, force=args.force,
                              query_prompts=args.query_prompts)
    from kilt.bm25 import BM25Retriever
    from kilt.passages import PassageStore

    return BM25Retriever.cached(PassageStore(args.passages), progress=True)


def _losses() -> list[str]:
    """--loss's choices: every rerank loss."""
    from .rerank.losses import LOSSES

    return list(LOSSES)


def _distill_losses() -> list[str]:
    """--distill-loss's choices: the losses that read teacher scores."""
    from .rerank.losses import distill_losses

    return distill_losses()


@dataclass(kw_only=True)
class TrainRerankerArgs(FirstStageArgs):
    """`mtr train-reranker` (with RerankTrainConfig's flags; --loss is its own)."""

    method: str = arg(choices=list(RERANK_METHODS))
    data_dir: str = arg(help="KILT folder with <task>-train-kilt.jsonl files")
    tasks: str = arg("", "comma-separated task names [all with a train file]")
    model: str = arg("", "start model: the LM of an LLM method [packaged SmolLM2-135M] or the cross-encoder's "
                     "encoder [packaged all-MiniLM-L6-v2]", aliases=("--llm",))
    option: list[str] = arg([], "method config field, e.g. num_clues=8 or layer=6 (repeatable)", metavar="KEY=VALUE")
    stages: str = arg("contrastive", "contrastive,distill in order; one stage trains in --output-dir, several each "
                      "in --output-dir/<i>-<stage>")
    teacher: str | None = arg(None, "teacher scores/rankings JSONL for the distill stage")
    distill_loss: str = arg("ranknet", "the distill stage's loss", choices=_distill_losses)
    depth: int = arg(30, "candidates retrieved per query", min=1)
    num_negatives: int | None = arg(None, "hard negatives kept per query [all]", min=0)
    max_queries: int = arg(0, "cap on training queries per task (0 = all)", min=0)
    resume: bool = arg(False, "continue the run in --output-dir")
    loss: str | None = arg(None, "the contrastive stage's loss [the method's own: Reranker.training_loss]",
                           choices=_losses)


@command("train-reranker", TrainRerankerArgs,
         f"train a reranker ({', '.join(RERANK_METHODS)}) on retrieved candidates",
         configs=("rerank.train.RerankTrainConfig",))
def _train_reranker(args) -> None:
    from kilt.io import read_task_file
    from safeio.outputs import check_outputs
    from kilt.passages import PassageStore

    from .config import config_from_args
    from .data import task_train_files
    from .rerank import make_reranker
    from .rerank.examples import attach_teacher_scores, examples_from_search, read_teacher_file
    from .rerank.train import RerankTrainConfig, train_reranker, train_stages
    from .training_loop import seed_everything

    if not args.output_dir:
        raise ValueError("--output-dir is required (checkpoints, log and final reranker)")
    config = config_from_args(RerankTrainConfig, args)  # bad settings stop before any retrieval
    files = task_train_files(args.data_dir, args.tasks.split(",") if args.tasks else (), "train")
    check_outputs(folders=[args.output_dir],
                  inputs=[args.passages, *files.values(), args.encoder, args.index, args.model, args.teacher])
    backend, store = _first_stage(args), PassageStore(args.passages)
    queries = {task: read_task_file(path)[: args.max_queries or None] for task, path in files.items()}
    examples = examples_from_search(queries, backend, store, args.depth, num_negatives=args.num_negatives)
    print(f"{len(examples)} training queries with a retrieved gold passage")
    seed_everything(config.seed)  # a new head or module is drawn from the global RNG
    reranker = make_reranker(args.method, args.model, **_option_values(args.option))
    print(f"{args.method}: {reranker.num_trainable_parameters():,} trainable parameters")
    config = dataclasses.replace(config, loss=args.loss or reranker.training_loss)
    stages = []
    for name in args.stages.split(","):
        if name == "contrastive":
            stages.append((name, examples, config))
        elif name == "distill":
            if not args.teacher:
                raise ValueError("the distill stage needs --teacher (a teacher score or ranking file)")
            teacher = attach_teacher_scores(examples, read_teacher_file(args.teacher))
            stages.append((name, teacher, dataclasses.replace(config, loss=args.distill_loss)))
        else:
            raise ValueError(f"unknown stage {name!r}; known: contrastive, distill")
    if len(stages) == 1:
        _, stage_examples, stage_config = stages[0]
        result = train_reranker(reranker, stage_examples, stage_config, resume=args.resume)
        print(f"trained {result.step} steps (last loss {result.loss:.4f}); reranker: {result.model_path}")
        return
    results = train_stages(reranker, stages, config.output_dir, resume=args.resume)
    last = list(results.values())[-1]
    print(f"trained stages {', '.join(results)}; reranker: {last.model_path}")


@dataclass(kw_only=True)
class PipelineArgs(FirstStageArgs):
    """`mtr pipeline`: first stage, reranker and fusion into predictions."""

    reranker: str | None = arg(None, "folder saved by train-reranker [no reranking]")
    queries: str = arg(help="KILT task file")
    out: str = arg(help="KILT prediction file to write")
    task: str | None = arg(None, "task prompt [from the file name]")
    k: int = arg(100, min=1)
    rerank_k: int = arg(20, "passages reranked per query (0: none)", min=0)
    fusion: str = arg("fitted", "final order of the reranked passages: fitted (the reranker folder's fusion.json "
                      "from benchmark-quality, else the reranker's order), none (the reranker's order), "
                      "interpolate (--alpha) or rrf", choices=["fitted", *FUSION_METHODS])
    alpha: float = field_like(Fusion, "alpha", help="the reranker's weight for --fusion interpolate")


@command("pipeline", PipelineArgs, "retrieve, rerank the top rerank-k, write KILT predictions")
def _pipeline(args) -> None:
    from .devices import resolve_device
    from .pipeline import Pipeline
    from .rerank import load_reranker

    from safeio.outputs import check_outputs

    from .rerank.fusion import FUSION_NAME

    check_outputs(files=[args.out], inputs=[args.queries, args.passages, args.index, args.encoder, args.reranker])
    if args.rerank_k < 0 or args.k < 1:
        raise ValueError(f"--k must be >= 1 and --rerank-k >= 0, got {args.k} and {args.rerank_k}")
    reranker = load_reranker(args.reranker).to(resolve_device(args.device)) if args.reranker else None
    fusion = Fusion(args.fusion, alpha=args.alpha) if args.fusion != "fitted" else (
        Fusion.load(args.reranker) if args.reranker and (Path(args.reranker) / FUSION_NAME).is_file() else Fusion())
    pipe = Pipeline(_first_stage(args), reranker, fusion)
    n = pipe.predict(args.queries, args.out, task=args.task, k=args.k, rerank_k=args.rerank_k if reranker else 0)
    print(f"{args.queries}: {n} predictions -> {args.out}")


# --------------------------------------------------------------------------- benchmark
@dataclass(kw_only=True)
class BenchmarkQualityArgs:
    """`mtr benchmark-quality` (with ExperimentConfig's flags; data_dir is its own)."""

    data_dir: str = arg(help="folder with knowledge_source.jsonl[.gz] and <task>-{train,dev}-kilt.jsonl",
                        positional=True)
    out: str = arg(help="result JSON (a .md table and a .png chart go beside it)")
    config: list[str] = arg([], "YAML/JSON with ExperimentConfig fields; repeatable, later files and flags override "
                            "earlier (the committed CPU runs: scripts/configs/cpu.yaml, then the run's file)",
                            metavar="FILE")
    quiet: bool = arg(False, "no progress bars")


@command("benchmark-quality", BenchmarkQualityArgs, "build and score every system on a KILT folder",
         configs=("experiment.ExperimentConfig",))
def _benchmark_quality(args) -> None:
    from safeio.outputs import check_outputs

    from .config import config_from_args, load_config_file
    from .experiment import Experiment, ExperimentConfig, SeedStudy, markdown_table, seed_study_table, write_report
    from .experiment.report import report_files, reuse_commands

    cfg = config_from_args(ExperimentConfig, args, [load_config_file(path) for path in args.config],
                           data_dir=args.data_dir)
    # the stage cache (cfg.work_path) is written into stage by stage, never replaced whole, and may be the data folder
    check_outputs(files=report_files(args.out), inputs=[*args.config, *_kilt_files(args.data_dir), cfg.knowledge_source,
                                                        cfg.encoder, cfg.cross_encoder, cfg.llm])
    if cfg.seeds:
        doc = SeedStudy(cfg, cfg.seeds, progress=not args.quiet).run()
        paths = write_report(doc, args.out)
        print(seed_study_table(doc))
    else:
        doc = Experiment(cfg, progress=not args.quiet).run()
        paths = write_report(doc, args.out)
        print(markdown_table(doc))
    print("wrote " + ", ".join(map(str, paths)))
    if not cfg.seeds:
        where, *commands = reuse_commands(doc, Path(args.out).with_name(Path(args.out).stem + "-predictions"))
        print(f"\nmodels of the best system, {where}\nto rank the dev queries with it and score them:")
        print("\n".join(f"  {line}" for line in commands))


# --------------------------------------------------------------------------- parser
def _config_class(path: str) -> type:
    """The dataclass `module.Class` of this package that `path` names."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def build_parser() -> argparse.ArgumentParser:
    """`mtr` with one subparser per registered command: its own flags from its arguments
    dataclass, then one per field of its config dataclasses (those it declares itself aside)."""
    from .config import add_config_arguments

    parser = argparse.ArgumentParser(prog="mtr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, spec in COMMANDS.items():
        p = sub.add_parser(name, help=spec.help() if callable(spec.help) else spec.help,
                           **(spec.parser_options() if spec.parser_options else {}))
        own: set[str] = set()
        if spec.args is not None:
            add_config_arguments(p, spec.args, command=True)
            own = {f.name for f in dataclasses.fields(spec.args)}
        for path in spec.configs:
            add_config_arguments(p, _config_class(path), skip=own)
    return parser


#: the options that name a model to load
_MODEL_OPTIONS = ("encoder", "model", "model_name_or_path", "llm", "cross_encoder", "init_from")


def _offline_if_local(args) -> None:
    """Hugging Face's offline mode when every model the command names is packaged or a local
    folder: nothing is fetched, so a missing network costs no retries."""
    from .models import is_packaged

    named = [v for v in (getattr(args, name, None) for name in _MODEL_OPTIONS) if isinstance(v, str) and v]
    if named and all(is_packaged(v) or Path(v).expanduser().exists() for v in named):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit status: 0, or 2 for a bad flag (argparse's usage and
    error) or a bad input (one line naming it, no traceback)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2)
        return int(e.code or 0)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:
        logging.getLogger("bm25s").setLevel(logging.WARNING)
    handler = COMMANDS[args.command].handler
    _offline_if_local(args)
    try:
        return int(handler(args) or 0)
    except (OSError, ValueError) as e:  # missing, unwritable or existing files; bad values and formats
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"mtr {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
