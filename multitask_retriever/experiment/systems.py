"""System names: ``<retriever>[+<reranker>][@<fusion>]``, with cross-encoder training schedules
such as ``cross-encoder.distill.contrastive`` and fusions ``@fused`` (fitted interpolation) and ``@rrf``."""
from __future__ import annotations

from typing import Iterable

from ..rerank import METHODS
from ..rerank.losses import distill_losses
from ..specialization import COMBINERS, SCALES

#: BM25, the untrained encoder, the encoder fine-tuned with each gradient combiner, and TACO at
#: each update scale (taco.mean, taco.official; plain taco takes the configured one)
RETRIEVERS = ("bm25", "zero-shot", *COMBINERS, *(f"taco.{scale}" for scale in SCALES))
RERANKERS = tuple(METHODS)
CE_STAGES = ("contrastive", "distill")
#: how a reranked system's final order may combine both scores (none: the reranker's order)
FUSIONS = ("fused", "rrf")


def split_fusion(name: str) -> tuple[str, str | None]:
    """(the system without its fusion, the fusion or None): ``taco+cross-encoder@fused``."""
    base, sep, fusion = name.partition("@")
    if not sep:
        return name, None
    if fusion not in FUSIONS or "+" not in base:
        raise ValueError(f"bad fusion in {name!r}: a reranked system takes @{' or @'.join(FUSIONS)}")
    return base, fusion


def cross_encoder_schedule(reranker: str) -> list[str] | None:
    """The training stages a cross-encoder reranker name asks for: ``cross-encoder`` is one
    contrastive stage, ``cross-encoder.distill.contrastive`` distillation then contrastive
    (Pezzuti et al.'s schedules); None for any other reranker. Unknown stages are errors."""
    if reranker == "cross-encoder":
        return ["contrastive"]
    if not reranker.startswith("cross-encoder."):
        return None
    stages = reranker.split(".")[1:]
    bad = [s for s in stages if s not in CE_STAGES]
    if bad or not stages:
        raise ValueError(f"unknown cross-encoder stage {(bad or [''])[0]!r} in {reranker!r}; stages: "
                         f"{', '.join(CE_STAGES)} joined by dots, e.g. cross-encoder.contrastive.distill")
    return stages


def schedule_name(stages: list[str]) -> str:
    """The reranker name of a cross-encoder schedule; single-stage contrastive is ``cross-encoder``."""
    return "cross-encoder" if stages == ["contrastive"] else "cross-encoder." + ".".join(stages)


def check_teacher(teacher: str) -> str:
    """The canonical name of a distillation teacher: any trained reranker, an LLM reranker or a
    cross-encoder schedule that does not itself distil (it would need a teacher of its own),
    alone or fused with the retriever's scores (`<reranker>@fused`)."""
    base, sep, fusion = teacher.partition("@")
    if sep:
        if fusion != "fused":
            raise ValueError(f"bad teacher {teacher!r}: a fused teacher is <reranker>@fused")
        return check_teacher(base) + "@fused"
    try:
        stages = cross_encoder_schedule(teacher)
    except ValueError:
        stages = None
    if stages is not None and "distill" not in stages:
        return schedule_name(stages)
    if teacher in RERANKERS:
        return teacher
    raise ValueError(f"bad teacher {teacher!r}: a reranker ({', '.join(RERANKERS)}) or a cross-encoder schedule "
                     f"without a distill stage (e.g. cross-encoder.contrastive), optionally @fused")


def parse_system(name: str, tasks: Iterable[str], teacher: str, distill_loss: str) -> tuple[str, str | None]:
    """(retriever, reranker or None) of a system name, the schedule spelled canonically;
    unknown names, and a bad teacher or distillation loss for a distill stage, are ValueErrors."""
    retriever, _, reranker = split_fusion(name)[0].partition("+")
    single = retriever.removeprefix("single-")
    if retriever not in RETRIEVERS and not (retriever.startswith("single-") and single in tasks):
        raise ValueError(f"unknown system {name!r}; known: {', '.join(RETRIEVERS)}, single-<task> for a task "
                         f"with files here, and <retriever>+<reranker>")
    if reranker and reranker not in RERANKERS and cross_encoder_schedule(reranker) is None:
        raise ValueError(f"unknown reranker {reranker!r} in {name!r}; known: {', '.join(RERANKERS)}, "
                         f"and cross-encoder.<stage>[.<stage>] schedules of {', '.join(CE_STAGES)}")
    stages = cross_encoder_schedule(reranker) if reranker else None
    if stages is not None:
        reranker = schedule_name(stages)
    if "distill" in (stages or []):
        check_teacher(teacher)
        if distill_loss not in distill_losses():
            raise ValueError(f"unknown distill_loss {distill_loss!r}; known: {', '.join(distill_losses())}")
    return retriever, reranker or None
