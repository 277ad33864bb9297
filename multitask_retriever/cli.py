"""The `mtr` command: one subcommand per stage of the pipeline.

    mtr chunk / bm25 / kilt-subset / evaluate          the KILT layer
    mtr encode / index / retrieve (alias search)       the inference path
    mtr train / mine-negatives                         multitask dual-encoder training
    mtr train-reranker / pipeline                      reranking
    mtr benchmark-quality                              every system on a KILT folder, scored

Subcommands import their heavy modules (models, FAISS) only when they run. Each checks its
outputs against its inputs (kilt.io.check_outputs) before any work: no command writes over one
of its own inputs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


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
@command("chunk")
def _chunk(args) -> None:
    from kilt.io import check_outputs
    from kilt.passages import write_passages

    check_outputs(files=[args.out], inputs=[args.knowledge_source])
    n = write_passages(args.knowledge_source, args.out, words=args.words, skip_invalid=args.skip_invalid)
    print(f"wrote {n} passages to {args.out}")


@command("bm25")
def _bm25(args) -> None:
    from kilt.bm25 import BM25Retriever
    from kilt.io import check_outputs
    from kilt.passages import PassageStore
    from kilt.predict import predict_file

    out_dir = Path(args.out_dir)
    outs = [out_dir / (Path(f).name.removesuffix("-kilt.jsonl").removesuffix(".jsonl") + "-bm25.jsonl")
            for f in args.task_files]
    check_outputs(files=outs, inputs=[args.passages, *args.task_files])
    retriever = BM25Retriever.build(PassageStore(args.passages))
    for task_file, out in zip(args.task_files, outs):
        n = predict_file(lambda queries, task: retriever.search_pages(queries, k=args.k), task_file, out)
        print(f"{task_file}: {n} predictions -> {out}")


@command("kilt-subset")
def _kilt_subset(args) -> None:
    from kilt.subset import make_subset

    # make_subset checks its inputs and output folder (kilt.io.check_outputs) before reading anything
    summary = make_subset(args.kilt_dir, args.knowledge_source, args.out_dir,
                          queries_per_split=args.queries, distractors=args.distractors, seed=args.seed,
                          tasks=args.tasks.split(",") if args.tasks else None)
    print(json.dumps(summary, indent=1, default=str))


@command("evaluate")
def _evaluate(args) -> int:
    from kilt.eval import run

    return run(args)


# --------------------------------------------------------------------------- inference path
@command("encode")
def _encode(args) -> None:
    from kilt.io import check_outputs

    from .devices import resolve_device
    from .encoder import DualEncoder
    from .encoding import encode_corpus

    check_outputs(folders=[args.out_dir], inputs=[args.encoder, args.passages])
    encoder = DualEncoder.from_pretrained(args.encoder).to(resolve_device(args.device))
    out = encode_corpus(encoder, args.passages, args.out_dir, shard_size=args.shard_size,
                        batch_size=args.batch_size, overwrite=args.overwrite)
    print(f"encoded shards in {out}")


@command("index")
def _index(args) -> None:
    from kilt.io import check_outputs

    from .config import config_from_args
    from .indexing import Index, IndexConfig

    check_outputs(folders=[args.out], inputs=[args.shards])
    index = Index.from_shards(args.shards, config_from_args(IndexConfig, args))
    index.save(args.out)
    print(f"saved {args.out}")


@command("retrieve")
def _retrieve(args) -> None:
    from kilt.io import check_outputs

    from .retriever import load_retriever

    check_outputs(files=[args.out], inputs=[args.queries, args.passages, args.index, args.encoder])
    overrides = {name: getattr(args, name) for name in ("nprobe", "hnsw_ef_search", "backend")
                 if getattr(args, name) is not None}
    retriever = load_retriever(args.encoder, args.index, args.passages, device=args.device, force=args.force,
                               query_prompts=args.query_prompts, **overrides)
    n = retriever.predict(args.queries, args.out, task=args.task, k=args.k)
    print(f"{args.queries}: {n} predictions -> {args.out}")


# --------------------------------------------------------------------------- dual-encoder training
@command("train")
def _train(args) -> None:
    from kilt.io import check_outputs

    from .config import config_from_args, load_config_file
    from .rounds import train
    from .trainer import TrainConfig

    cfg = config_from_args(TrainConfig, args, [load_config_file(path) for path in args.config])
    check_outputs(folders=[cfg.output_dir] if cfg.output_dir else [], inputs=[
        *args.config, *_kilt_files(cfg.data_dir), cfg.passages, cfg.negatives, cfg.model_name_or_path])
    result = train(cfg, resume=args.resume)
    rounds = f" in each of {cfg.negative_rounds + 1} rounds" if cfg.negative_rounds else ""
    print(f"trained {cfg.method} for {result.step} steps{rounds}; model: {result.model_path}")


@command("mine-negatives")
def _mine_negatives(args) -> None:
    from kilt.io import check_outputs
    from kilt.passages import PassageStore

    from .data import build_training_examples, task_train_files, write_training_examples

    files = task_train_files(args.data_dir, args.tasks.split(",") if args.tasks else (), args.split)
    check_outputs(files=[args.out], inputs=[args.passages, *files.values(), args.encoder, args.index])
    backend = "bm25"
    if args.encoder:
        if not args.index:
            raise ValueError("--encoder needs --index (an index of that encoder's passage vectors)")
        from .retriever import load_retriever

        backend = load_retriever(args.encoder, args.index, args.passages, device=args.device, force=args.force)
    examples = build_training_examples(files, PassageStore(args.passages), backend, depth=args.depth,
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


def _first_stage(args):
    """Our dense Retriever (--encoder/--index) or BM25 over the passage file, returning Hits."""
    if args.encoder:
        if not args.index:
            raise ValueError("--encoder needs --index (an index of that encoder's passage vectors)")
        from .retriever import load_retriever

        return load_retriever(args.encoder, args.index, args.passages, device=args.device, force=args.force,
                              query_prompts=args.query_prompts)
    from kilt.bm25 import BM25Retriever
    from kilt.passages import PassageStore

    return BM25Retriever.build(PassageStore(args.passages))


@command("train-reranker")
def _train_reranker(args) -> None:
    from kilt.io import check_outputs, read_task_file
    from kilt.passages import PassageStore

    from .config import config_from_args
    from .data import task_train_files
    from .rerank import make_reranker
    from .rerank.examples import attach_teacher_scores, examples_from_candidates, read_teacher_file
    from .rerank.train import RerankTrainConfig, train_reranker, train_stages
    from .training_loop import seed_everything

    if not args.output_dir:
        raise ValueError("--output-dir is required (checkpoints, log and final reranker)")
    config = config_from_args(RerankTrainConfig, args)  # bad settings stop before any retrieval
    files = task_train_files(args.data_dir, args.tasks.split(",") if args.tasks else (), "train")
    check_outputs(folders=[args.output_dir],
                  inputs=[args.passages, *files.values(), args.encoder, args.index, args.model, args.teacher])
    backend, store = _first_stage(args), PassageStore(args.passages)
    examples = []
    for task, path in files.items():
        queries = read_task_file(path)[: args.max_queries or None]
        hits = backend.search([e.input for e in queries], task=task, k=args.depth)
        examples += examples_from_candidates(queries, hits, store, num_negatives=args.num_negatives, task=task)
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
        print(f"trained {result['step']} steps (last loss {result['loss']:.4f}); reranker: {result['reranker_path']}")
        return
    results = train_stages(reranker, stages, config.output_dir, resume=args.resume)
    last = list(results.values())[-1]
    print(f"trained stages {', '.join(results)}; reranker: {last['reranker_path']}")


@command("pipeline")
def _pipeline(args) -> None:
    from .devices import resolve_device
    from .pipeline import Pipeline
    from .rerank import load_reranker

    from kilt.io import check_outputs

    from .rerank.fusion import FUSION_NAME, Fusion

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
@command("benchmark-quality")
def _benchmark_quality(args) -> None:
    from kilt.io import check_outputs

    from .config import config_from_args, load_config_file
    from .experiment import Experiment, ExperimentConfig, SeedStudy, markdown_table, seed_study_table, write_report
    from .experiment.report import report_files

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


# --------------------------------------------------------------------------- parser
def force_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="search an index with another encoder or passage file than it was built from")


def query_prompts_argument(p: argparse.ArgumentParser) -> None:
    from .encoder import PROMPT_STYLES

    p.add_argument("--query-prompts", default="", choices=["", *PROMPT_STYLES], metavar="STYLE",
                   help=f"replace the encoder's saved query prompts: {' | '.join(PROMPT_STYLES)} (none: the plain "
                        "query, as benchmark-quality's zero-shot system reads it) [the encoder's]")


def build_parser() -> argparse.ArgumentParser:
    from kilt.eval import DESCRIPTION as EVAL_DESCRIPTION, build_parser as eval_parser

    from .config import add_config_arguments, bounded
    from .rerank.fusion import METHODS as FUSION_METHODS, Fusion

    parser = argparse.ArgumentParser(prog="mtr", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("chunk", help="split a KILT knowledge source into 100-word passages")
    p.add_argument("knowledge_source", help="KILT knowledge source (.jsonl or .jsonl.gz)")
    p.add_argument("out", help="passage file to write (JSONL)")
    p.add_argument("--words", type=bounded(int, min=1), default=100, help="words per passage [100]")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed pages (counted and reported) instead of stopping at the first")

    p = sub.add_parser("bm25", help="BM25 page rankings for KILT task files")
    p.add_argument("passages", help="passage file from `mtr chunk`")
    p.add_argument("task_files", nargs="+", help="KILT task files (queries)")
    p.add_argument("--out-dir", required=True, help="where prediction files go")
    p.add_argument("--k", type=bounded(int, min=1), default=100, help="pages per query [100]")

    p = sub.add_parser("kilt-subset", help="a miniature benchmark from full KILT files, deterministic")
    p.add_argument("kilt_dir", help="folder with the official <task>-<split>-kilt.jsonl files")
    p.add_argument("knowledge_source", help="kilt_knowledgesource.json")
    p.add_argument("out_dir")
    p.add_argument("--queries", type=bounded(int, min=1), default=100, help="queries per task and split [100]")
    p.add_argument("--distractors", type=bounded(int, min=0), default=10000, help="random extra pages [10000]")
    p.add_argument("--tasks", default="", help="comma-separated task names [all present]")
    p.add_argument("--seed", type=bounded(int, min=0), default=0)

    sub.add_parser("evaluate", help="KILT retrieval metrics (same as python -m kilt.eval)",
                   description=EVAL_DESCRIPTION, parents=[eval_parser(add_help=False)])

    p = sub.add_parser("encode", help="encode a passage file into resumable shards")
    p.add_argument("--encoder", required=True, help="DualEncoder folder or Hugging Face name")
    p.add_argument("--passages", required=True, help="passage file from `mtr chunk`")
    p.add_argument("--out-dir", required=True, help="shard folder (resumes where it stopped)")
    p.add_argument("--overwrite", action="store_true",
                   help="encode every shard again, discarding the shards --out-dir holds (never an input)")
    p.add_argument("--shard-size", type=bounded(int, min=1), default=100_000)
    p.add_argument("--batch-size", type=bounded(int, min=1), default=128)
    p.add_argument("--device", default="auto")

    from .indexing import IndexConfig

    p = sub.add_parser("index", help="build a FAISS index from encoded shards")
    p.add_argument("--shards", required=True, help="folder written by `mtr encode`")
    p.add_argument("--out", required=True, help="index folder to write")
    add_config_arguments(p, IndexConfig)

    for name in ("retrieve", "search"):
        p = sub.add_parser(name, help="top-k pages for every query of a KILT task file")
        p.add_argument("--encoder", required=True)
        p.add_argument("--index", required=True, help="folder written by `mtr index`")
        p.add_argument("--passages", required=True)
        p.add_argument("--queries", required=True, help="KILT task file")
        p.add_argument("--out", required=True, help="KILT prediction file to write")
        p.add_argument("--task", default=None, help="task prompt [from the file name]")
        p.add_argument("--k", type=bounded(int, min=1), default=100)
        p.add_argument("--device", default="auto",
                       help="auto | cpu | cuda: where the encoder runs and the index searches")
        p.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query [as the index was saved]")
        p.add_argument("--hnsw-ef-search", type=int, default=None, help="HNSW search beam width [as saved]")
        p.add_argument("--backend", default=None, help="faiss | torch: search with another backend [as saved]")
        query_prompts_argument(p)
        force_argument(p)

    from .trainer import TrainConfig, methods

    p = sub.add_parser("train", help=f"train the dual encoder on KILT tasks ({', '.join(methods())})")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML/JSON with TrainConfig fields; repeatable, later files and flags override earlier")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its checkpoint")
    add_config_arguments(p, TrainConfig)

    p = sub.add_parser("mine-negatives", help="training queries with hard negatives from BM25 or a trained model")
    p.add_argument("--data-dir", required=True, help="KILT folder with <task>-train-kilt.jsonl files")
    p.add_argument("--passages", required=True, help="passage file from `mtr chunk`")
    p.add_argument("--out", required=True, help="JSONL to write (TrainConfig.negatives / --negatives)")
    p.add_argument("--tasks", default="", help="comma-separated task names [all with a train file]")
    p.add_argument("--split", default="train")
    p.add_argument("--encoder", default=None, help="DualEncoder folder for ANCE-style negatives [BM25]")
    p.add_argument("--index", default=None, help="folder written by `mtr index` for --encoder")
    p.add_argument("--depth", type=bounded(int, min=1), default=100, help="passages retrieved per query [100]")
    p.add_argument("--keep", type=bounded(int, min=0), default=30, help="hard negatives kept per query [30]")
    p.add_argument("--max-queries", type=bounded(int, min=0), default=0, help="cap on queries per task (0 = all)")
    p.add_argument("--device", default="auto")
    force_argument(p)

    def first_stage_arguments(p) -> None:
        p.add_argument("--passages", required=True, help="passage file from `mtr chunk`")
        p.add_argument("--encoder", default=None, help="DualEncoder folder for dense candidates [BM25]")
        p.add_argument("--index", default=None, help="folder written by `mtr index` for --encoder")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda: the encoder, its index and the reranker")
        query_prompts_argument(p)
        force_argument(p)

    from .rerank import METHODS
    from .rerank.losses import LOSSES, distill_losses
    from .rerank.train import RerankTrainConfig

    p = sub.add_parser("train-reranker", help=f"train a reranker ({', '.join(METHODS)}) on retrieved candidates")
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--data-dir", required=True, help="KILT folder with <task>-train-kilt.jsonl files")
    first_stage_arguments(p)
    p.add_argument("--tasks", default="", help="comma-separated task names [all with a train file]")
    p.add_argument("--model", "--llm", default="", help="start model: the LM of an LLM method [packaged "
                   "SmolLM2-135M] or the cross-encoder's encoder [packaged all-MiniLM-L6-v2]")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method config field, e.g. num_clues=8 or layer=6 (repeatable)")
    p.add_argument("--stages", default="contrastive", help="contrastive,distill in order; one stage trains in "
                   "--output-dir, several each in --output-dir/<i>-<stage>")
    p.add_argument("--teacher", default=None, help="teacher scores/rankings JSONL for the distill stage")
    p.add_argument("--distill-loss", default="ranknet", choices=distill_losses(), help="the distill stage's loss")
    p.add_argument("--depth", type=bounded(int, min=1), default=30, help="candidates retrieved per query [30]")
    p.add_argument("--num-negatives", type=bounded(int, min=0), default=None,
                   help="hard negatives kept per query [all]")
    p.add_argument("--max-queries", type=bounded(int, min=0), default=0,
                   help="cap on training queries per task (0 = all)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    add_config_arguments(p, RerankTrainConfig, skip={"loss"})
    p.add_argument("--loss", default=None, choices=list(LOSSES),
                   help="the contrastive stage's loss [the method's own: Reranker.training_loss]")

    p = sub.add_parser("pipeline", help="retrieve, rerank the top rerank-k, write KILT predictions")
    first_stage_arguments(p)
    p.add_argument("--reranker", default=None, help="folder saved by train-reranker [no reranking]")
    p.add_argument("--queries", required=True, help="KILT task file")
    p.add_argument("--out", required=True, help="KILT prediction file to write")
    p.add_argument("--task", default=None, help="task prompt [from the file name]")
    p.add_argument("--k", type=bounded(int, min=1), default=100)
    p.add_argument("--rerank-k", type=bounded(int, min=0), default=20,
                   help="passages reranked per query (0: none) [20]")
    p.add_argument("--fusion", default="fitted", choices=["fitted", *FUSION_METHODS],
                   help="final order of the reranked passages: fitted (the reranker folder's fusion.json from "
                        "benchmark-quality, else the reranker's order), none (the reranker's order), "
                        "interpolate (--alpha) or rrf [fitted]")
    p.add_argument("--alpha", type=float, default=Fusion.alpha, help="the reranker's weight for --fusion interpolate")

    from .experiment import ExperimentConfig

    p = sub.add_parser("benchmark-quality", help="build and score every system on a KILT folder")
    p.add_argument("data_dir", help="folder with knowledge_source.jsonl[.gz] and <task>-{train,dev}-kilt.jsonl")
    p.add_argument("--out", required=True, help="result JSON (a .md table and a .png chart go beside it)")
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help="YAML/JSON with ExperimentConfig fields; repeatable, later files and flags override "
                        "earlier (the committed CPU runs: scripts/configs/cpu.yaml, then the run's file)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(p, ExperimentConfig, skip={"data_dir"})
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
    handler = COMMANDS["retrieve" if args.command == "search" else args.command]
    _offline_if_local(args)
    try:
        return int(handler(args) or 0)
    except (OSError, ValueError) as e:  # missing, unwritable or existing files; bad values and formats
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"mtr {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
