"""The stages `SystemBuilder` composes, one responsibility each, all cached in the work folder:

    context.py     what every stage reads: config, input files, stage cache, device
    keys.py        the library configs stages train with, and their stage keys
    corpus.py      passages and the BM25 index
    splits.py      training queries held out for fusion (grouped), and their key
    encoders.py    training data and fine-tuned dual encoders (incl. the naive base)
    retrievers.py  search backends: BM25, or a dense index of an encoder
    rerankers.py   LLM rerankers and cross-encoder schedules
    teacher.py     a teacher's scores of the retriever's training candidates
    fusion.py      fusion weights fitted on held-out training queries
    scores.py      reranker scores of dev candidates, kept for the reranker's other fusions
"""
from .context import StageContext
from .corpus import CorpusStages
from .encoders import EncoderStages
from .fusion import FusionStage
from .rerankers import RerankerStages
from .retrievers import RetrieverStages
from .splits import HoldOut
from .teacher import TeacherStage

__all__ = ["CorpusStages", "EncoderStages", "FusionStage", "HoldOut", "RerankerStages", "RetrieverStages",
           "StageContext", "TeacherStage"]
