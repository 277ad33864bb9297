"""DualEncoder: one shared transformer that embeds task-prompted queries and titled passages.

The representation follows TACO for T5 (the first decoder hidden state, unnormalised, dot
product) and sentence-transformers for encoder-only checkpoints (masked mean pooling,
L2-normalised when the checkpoint ships a Normalize module, as all-MiniLM-L6-v2 does).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import string
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, BatchEncoding, PretrainedConfig
from transformers.utils import cached_file

from kilt.tasks import TASKS, check_queries, keeps_end, mention_span, mention_window
from safeio.atomic import atomic_directory
from safeio.text import read_text

from .config import check_fields
from .devices import DTYPE_HELP, STORAGE_HELP, check_dtype_name, check_storage_dtype, resolve_dtype, stored_state

CONFIG_NAME = "mtr_encoder.json"
POOLINGS = ("auto", "mean", "cls", "first_decoder")
# encoder-decoder families whose encoder stack loads on its own (for mean / cls pooling)
_ENCODER_ONLY_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
# texts tokenised, length-sorted and encoded together: bounds memory on corpus shards
_SORT_WINDOW_BATCHES = 64
# a smaller first window, so that the model starts soon and the next window is tokenised meanwhile
_FIRST_WINDOW_BATCHES = 4
# threads tokenising ahead of a CUDA model (one beside a CPU model, which uses every core)
_CUDA_TOKENIZE_THREADS = 4


# named query prompt styles: "short" is "<prompt>: {query}"; "taco-t5" the official TACO code's
# "<TASK NAME> <extra_id_1> {query}" (the T5 sentinel after the upper-case task name)
PROMPT_STYLES = ("short", "taco-t5", "none")


def query_prompts_for(style: str) -> dict[str, str]:
    """One query template per registered KILT task in a named style (see PROMPT_STYLES); "none"
    is the plain query, as a pretrained model that never saw prompts reads it."""
    if style == "short":
        return {name: f"{task.prompt}: {{query}}" for name, task in TASKS.items()}
    if style == "taco-t5":
        return {name: f"{task.taco_name} <extra_id_1> {{query}}" for name, task in TASKS.items()}
    if style == "none":
        return {name: "{query}" for name in TASKS}
    raise ValueError(f"unknown prompt style {style!r}; known: {', '.join(PROMPT_STYLES)}")


def _default_query_prompts() -> dict[str, str]:
    """The "short" style: one "<prompt>: {query}" template per KILT task."""
    return query_prompts_for("short")


def _template_parts(template: str, fields: set[str], required: set[str]) -> list[tuple[str, str | None]]:
    """(literal, field) pieces of a str.format template; ValueError unless its fields are valid."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"bad template {template!r}: {e}") from None
    names = [name for _, name, _, _ in parsed if name is not None]
    plain = all(not spec and conversion is None for _, _, spec, conversion in parsed)
    if not plain or set(names) - fields or not required <= set(names) or len(names) != len(set(names)):
        raise ValueError(
            f"template {template!r} must use each of {sorted(required)} once"
            f" and no fields other than {sorted(fields)} (no format specs)"
        )
    return [(literal, name) for literal, name, _, _ in parsed]


def _split_query_template(template: str) -> tuple[str, str]:
    """The literal text before and after "{query}" (format escapes resolved)."""
    parts = _template_parts(template, {"query"}, {"query"})
    at = next(i for i, (_, name) in enumerate(parts) if name == "query")
    prefix = "".join(literal for literal, _ in parts[: at + 1])
    suffix = "".join(literal for literal, _ in parts[at + 1 :])
    return prefix, suffix


@dataclass
class EncoderConfig:
    """How a DualEncoder turns text into vectors; saved as mtr_encoder.json beside the weights."""

    model_name_or_path: str = field(default="t5-base", metadata={"help": "Hugging Face name or local folder"})
    pooling: str = field(default="auto", metadata={
        "help": "auto | mean | cls | first_decoder; auto: the sentence-transformers pooling if the checkpoint "
                "has one, else first_decoder for encoder-decoders (TACO), else mean"})
    normalize: bool | None = field(default=None, metadata={
        "help": "L2-normalise embeddings; unset: only if the checkpoint is a sentence-transformers model "
                "with a Normalize module (TACO's T5 uses raw dot products)"})
    query_max_length: int = field(default=64, metadata={"help": "query tokens, prompt and special tokens included",
                                                        "min": 1})
    passage_max_length: int = field(default=160, metadata={"help": "passage tokens, template included", "min": 1})
    query_prompts: dict[str, str] = field(default_factory=_default_query_prompts, metadata={
        "help": "task -> template with {query}; default: '<task prompt>: {query}' for every KILT task"})
    default_query_template: str = field(default="{query}", metadata={"help": "query template when no task is given"})
    passage_template: str = field(default="Title: {title} Text: {text}", metadata={
        "help": "passage template with {text} and optionally {title}"})
    query_truncation_side: str = field(default="left", metadata={
        "help": "which end of an over-long query is cut (left keeps a dialogue's latest turn); "
                "the prompt itself is never cut"})
    passage_truncation_side: str = field(default="right", metadata={"help": "which end of a long passage is cut"})
    dtype: str = field(default="auto", metadata={
        "help": "inference compute dtype: " + DTYPE_HELP + ". A half type encodes with half-precision "
                "weights; the float32 weights are restored afterwards"})
    storage_dtype: str = field(default="float32", metadata={"help": STORAGE_HELP})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        check_dtype_name(self.dtype)
        check_storage_dtype(self.storage_dtype)
        for name in ("query_truncation_side", "passage_truncation_side"):
            if getattr(self, name) not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right', got {getattr(self, name)!r}")
        for template in [self.default_query_template, *self.query_prompts.values()]:
            _split_query_template(template)
        _template_parts(self.passage_template, {"title", "text"}, {"text"})


def _sentence_transformers_modules(name_or_path: str) -> list[dict[str, Any]] | None:
    """modules.json of a sentence-transformers checkpoint (local or hub), None for plain models."""
    path = cached_file(name_or_path, "modules.json", _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    if path is None:
        return None
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _sentence_transformers_pooling(name_or_path: str, modules: list[dict[str, Any]]) -> str:
    """Our pooling name for a sentence-transformers Pooling module (mean or cls)."""
    pooling = [m for m in modules if m.get("type", "").endswith(".Pooling")]
    if not pooling:
        raise ValueError(f"{name_or_path}: sentence-transformers modules.json has no Pooling module; pass pooling=")
    path = cached_file(name_or_path, f"{pooling[0]['path']}/config.json")
    settings = json.loads(Path(path).read_text(encoding="utf-8"))
    modes = {key.removeprefix("pooling_mode_") for key, on in settings.items()
             if key.startswith("pooling_mode_") and on is True}
    if modes == {"mean_tokens"}:
        return "mean"
    if modes == {"cls_token"}:
        return "cls"
    raise ValueError(f"{name_or_path}: sentence-transformers pooling {sorted(modes)} is not supported; "
                     f"pass pooling='mean' or 'cls' to use the bare transformer")


def _is_encoder_only_checkpoint(hf_config: PretrainedConfig) -> bool:
    """True for encoder-only checkpoints, including T5EncoderModel saves of T5 configs."""
    architectures = hf_config.architectures or []
    saved_encoder_only = bool(architectures) and all(a.endswith("EncoderModel") for a in architectures)
    return not hf_config.is_encoder_decoder or saved_encoder_only


def _resolve(config: EncoderConfig, hf_config: PretrainedConfig) -> EncoderConfig:
    """Replace pooling="auto" and normalize=None by what the checkpoint implies."""
    modules = None
    if config.pooling == "auto" or config.normalize is None:
        modules = _sentence_transformers_modules(config.model_name_or_path)
    pooling, normalize = config.pooling, config.normalize
    if pooling == "auto":
        if modules is not None:
            pooling = _sentence_transformers_pooling(config.model_name_or_path, modules)
        else:
            pooling = "mean" if _is_encoder_only_checkpoint(hf_config) else "first_decoder"
    if normalize is None:
        normalize = modules is not None and any(m.get("type", "").endswith(".Normalize") for m in modules)
    return dataclasses.replace(config, pooling=pooling, normalize=normalize)


def _load_backbone(name_or_path: str, hf_config: PretrainedConfig, pooling: str) -> nn.Module:
    """T5Model-style encoder-decoder for first_decoder pooling, the encoder stack otherwise."""
    if pooling == "first_decoder":
        if _is_encoder_only_checkpoint(hf_config):
            raise ValueError(f"{name_or_path}: first_decoder pooling needs an encoder-decoder checkpoint "
                             f"(got {hf_config.architectures or hf_config.model_type})")
        return AutoModel.from_pretrained(name_or_path, dtype=torch.float32)
    class_name = _ENCODER_ONLY_CLASSES.get(hf_config.model_type)
    if class_name is not None:
        import transformers

        return getattr(transformers, class_name).from_pretrained(name_or_path, dtype=torch.float32)
    if hf_config.is_encoder_decoder:
        raise ValueError(f"{name_or_path}: {pooling} pooling over a {hf_config.model_type} encoder-decoder "
                         f"is supported for {sorted(_ENCODER_ONLY_CLASSES)} only; use first_decoder")
    return AutoModel.from_pretrained(name_or_path, dtype=torch.float32)


class DualEncoder(nn.Module):
    """A shared backbone that embeds queries (with task prompts) and passages into one space.

    Build it with `from_pretrained`; the constructor takes an already loaded backbone and
    tokenizer with a resolved config (pooling not "auto", normalize not None).
    """

    def __init__(self, backbone: nn.Module, tokenizer, config: EncoderConfig) -> None:
        super().__init__()
        if config.pooling == "auto" or config.normalize is None:
            raise ValueError("DualEncoder needs a resolved config; use DualEncoder.from_pretrained")
        if not tokenizer.is_fast:
            raise ValueError(f"{config.model_name_or_path}: DualEncoder needs a fast (tokenizers) tokenizer "
                             f"for prompt-preserving truncation")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{config.model_name_or_path}: the tokenizer has no padding token")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config

    # ----------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **overrides: Any) -> "DualEncoder":
        """Load a Hugging Face checkpoint or a folder written by `save_pretrained`.

        `overrides` are EncoderConfig fields; they win over a saved mtr_encoder.json.
        """
        from .models import named_weight_errors, resolve_model_name

        name_or_path = resolve_model_name(name_or_path)
        known = {f.name for f in dataclasses.fields(EncoderConfig)} - {"model_name_or_path"}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields {sorted(unknown)}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        saved = Path(name_or_path) / CONFIG_NAME
        if saved.is_file():
            try:
                values = json.loads(read_text(saved))
            except json.JSONDecodeError as e:
                raise ValueError(f"{saved}:{e.lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(values, dict) or set(values) - known - {"model_name_or_path"}:
                raise ValueError(f"{saved}: not a DualEncoder config (fields: {', '.join(sorted(known))})")
        values.update(overrides)
        values["model_name_or_path"] = name_or_path
        hf_config = AutoConfig.from_pretrained(name_or_path)
        config = _resolve(EncoderConfig(**values), hf_config)
        limit = getattr(hf_config, "max_position_embeddings", None)
        for name in ("query_max_length", "passage_max_length"):
            if limit is not None and getattr(config, name) > limit:
                raise ValueError(f"{name} {getattr(config, name)} is above {name_or_path}'s {limit} positions")
        with named_weight_errors(name_or_path):
            backbone = _load_backbone(name_or_path, hf_config, config.pooling)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        return cls(backbone, tokenizer, config)

    def save_pretrained(self, path: str | Path) -> None:
        """Write backbone, tokenizer and mtr_encoder.json into `path`, replacing it only once complete."""
        with atomic_directory(path) as tmp:
            self.backbone.save_pretrained(tmp, state_dict=stored_state(self.backbone, self.config.storage_dtype))
            self.tokenizer.save_pretrained(tmp)
            (tmp / CONFIG_NAME).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n",
                                           encoding="utf-8")

    # ----------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        """Embedding size (the backbone's hidden size)."""
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Trade compute for memory in training (passed to the backbone)."""
        self.backbone.gradient_checkpointing_enable(**kwargs)

    # ----------------------------------------------------------------- text formatting
    def query_template(self, task: str | None) -> str:
        """The template for `task`'s queries; ValueError for a task without a prompt."""
        if task is None:
            return self.config.default_query_template
        if task not in self.config.query_prompts:
            raise ValueError(f"no query prompt for task {task!r}; configured: "
                             f"{', '.join(sorted(self.config.query_prompts)) or '(none)'}")
        return self.config.query_prompts[task]

    def format_query(self, text: str, task: str | None) -> str:
        return self.query_template(task).format(query=text)

    def format_passage(self, title: str, text: str) -> str:
        return self.config.passage_template.format(title=title, text=text)

    # ----------------------------------------------------------------- tokenisation
    def _tokenize(self, texts: list[str], max_length: int, side: str, padding: bool) -> BatchEncoding:
        if not texts:
            raise ValueError("no texts to tokenize")
        self.tokenizer.truncation_side = side
        return self.tokenizer(texts, truncation=True, max_length=max_length, padding=padding,
                              padding_side="right", return_token_type_ids=False,
                              return_tensors="pt" if padding else None)

    def _fit_queries(self, texts: Sequence[str], task: str | None) -> list[str]:
        """Formatted queries, over-long ones shortened by whole words so that the prompt survives.

        A query with a marked entity mention keeps the mention and context on both sides of it.
        """
        texts = check_queries(texts)
        if not texts:
            return []
        prefix, suffix = _split_query_template(self.query_template(task))
        formatted = [prefix + t + suffix for t in texts]
        encoded = self.tokenizer(formatted, add_special_tokens=False, return_offsets_mapping=True)
        room = self.config.query_max_length - self.tokenizer.num_special_tokens_to_add(pair=False)
        for i, (text, offsets) in enumerate(zip(texts, encoded["offset_mapping"])):
            if len(offsets) > room:
                mention = mention_span(text)
                if mention is not None:
                    kept = _keep_mention(text, len(prefix), offsets, encoded.word_ids(i), room, mention)
                else:
                    keep = "end" if self.config.query_truncation_side == "left" else "start"
                    kept = _keep_words(text, len(prefix), offsets, encoded.word_ids(i), room,
                                       keep_end=keeps_end(task, keep))
                if kept is None:
                    raise ValueError(f"the template for task {task!r} alone exceeds query_max_length "
                                     f"({self.config.query_max_length} tokens)")
                formatted[i] = prefix + kept + suffix
        return formatted

    def tokenize_queries(self, texts: Sequence[str], task: str | None) -> BatchEncoding:
        """Prompted, truncated, padded (to the longest) query batch for `embed`."""
        return self._tokenize(self._fit_queries(texts, task), self.config.query_max_length,
                              self.config.query_truncation_side, padding=True)

    def tokenize_passages(self, titles: Sequence[str], texts: Sequence[str]) -> BatchEncoding:
        """Templated, truncated, padded (to the longest) passage batch for `embed`."""
        if len(titles) != len(texts):
            raise ValueError(f"{len(titles)} titles but {len(texts)} texts")
        return self._tokenize([self.format_passage(a, b) for a, b in zip(titles, texts)],
                              self.config.passage_max_length, self.config.passage_truncation_side, padding=True)

    # ----------------------------------------------------------------- embedding
    def embed(self, batch: BatchEncoding | dict[str, torch.Tensor]) -> torch.Tensor:
        """Pooled (and, if configured, L2-normalised) embeddings [B, dim], with gradient."""
        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        if self.config.pooling == "first_decoder":
            start = torch.full((input_ids.shape[0], 1), self.backbone.config.decoder_start_token_id,
                               dtype=input_ids.dtype, device=input_ids.device)
            out = self.backbone(input_ids=input_ids, attention_mask=mask, decoder_input_ids=start, use_cache=False)
            pooled = out.last_hidden_state[:, 0]
        else:
            hidden = self.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
            if self.config.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        pooled = pooled.float()
        return F.normalize(pooled, dim=-1) if self.config.normalize else pooled

    def forward(self, batch: BatchEncoding | dict[str, torch.Tensor]) -> torch.Tensor:
        """Same as `embed`; lets DDP / accelerate wrappers call the model directly."""
        return self.embed(batch)

    def _inference_tokenizer(self, max_length: int, side: str) -> "_InferenceTokenizer":
        """The private tokenizer copy `_encode` uses for this length and side (made once, kept)."""
        cache = self.__dict__.setdefault("_inference_tokenizers", {})
        made = cache.get((max_length, side))
        if made is None or made.source is not self.tokenizer or made.vocab_size != len(self.tokenizer):
            made = cache[(max_length, side)] = _InferenceTokenizer(self.tokenizer, max_length, side)
        return made

    def _encode(self, texts: list[str], max_length: int, side: str, batch_size: int, progress: bool,
                dtype: npt.DTypeLike, desc: str) -> np.ndarray:
        """Embed texts in length-sorted batches (longest first) and return rows in input order.

        Texts go in windows of `batch_size` x _SORT_WINDOW_BATCHES (the first one smaller);
        threads tokenise the next window while the model embeds this one. A batch holds at most
        `batch_size` x (the window's longest text) tokens, so shorter texts come in larger
        batches. On CUDA, batches are copied from pinned memory without waiting; a
        half-precision compute dtype runs on half-precision weights.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"dtype must be float32 or float16, got {dtype}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = np.empty((len(texts), self.dim), dtype=dtype)
        if not texts:
            return out
        tokenize = self._inference_tokenizer(max_length, side)
        device = self.device
        threads = min(_CUDA_TOKENIZE_THREADS, os.cpu_count() or 1) if device.type == "cuda" else 1
        out_dtype = torch.float16 if dtype == np.float16 else torch.float32
        first = batch_size * _FIRST_WINDOW_BATCHES
        bounds = [0, *range(first, len(texts), batch_size * _SORT_WINDOW_BATCHES), len(texts)]
        windows = list(zip(bounds[:-1], bounds[1:]))
        was_training = self.training
        self.eval()
        try:
            with ThreadPoolExecutor(threads, thread_name_prefix="mtr-tokenize") as pool, \
                    _weights_in(self.backbone, resolve_dtype(self.config.dtype, device)), torch.inference_mode(), \
                    tqdm(total=len(texts), desc=desc, unit="text", disable=not progress) as bar:
                ahead = _tokenize_ahead(pool, tokenize, texts[: windows[0][1]], threads)
                for i, (start, _) in enumerate(windows):
                    flat, lengths = _joined(ahead)
                    if i + 1 < len(windows):
                        ahead = _tokenize_ahead(pool, tokenize, texts[slice(*windows[i + 1])], threads)
                    rows, vectors = [], []
                    for batch_rows, ids, mask in _token_batches(flat, lengths, batch_size,
                                                                self.tokenizer.pad_token_id):
                        batch = {"input_ids": _to_device(ids, device), "attention_mask": _to_device(mask, device)}
                        vectors.append(self.embed(batch).to(out_dtype))
                        rows.append(batch_rows)
                        bar.update(len(batch_rows))
                    out[start + np.concatenate(rows)] = torch.cat(vectors).cpu().numpy()
        finally:
            self.train(was_training)
        return out

    def encode_queries(self, texts: Sequence[str], task: str | None = None, batch_size: int = 64,
                       progress: bool = False, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """Inference embeddings [len(texts), dim] of queries with `task`'s prompt."""
        return self._encode(self._fit_queries(texts, task), self.config.query_max_length,
                            self.config.query_truncation_side, batch_size, progress, dtype, "Encoding queries")

    def encode_passages(self, passages: Sequence[Any], batch_size: int = 64, progress: bool = False,
                        dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """Inference embeddings [len(passages), dim] of Passage objects or (title, text) pairs."""
        texts = [self.format_passage(*_title_text(p, i)) for i, p in enumerate(passages)]
        return self._encode(texts, self.config.passage_max_length, self.config.passage_truncation_side,
                            batch_size, progress, dtype, "Encoding passages")


class _InferenceTokenizer:
    """A private copy of a fast tokenizer's backend that truncates at one length and side, unpadded.

    Nothing changes it once made, so threads may tokenise with it at once (calls through
    transformers reset the shared backend's truncation and padding every time).
    """

    def __init__(self, tokenizer: Any, max_length: int, side: str) -> None:
        self.source, self.vocab_size = tokenizer, len(tokenizer)
        backend = copy.deepcopy(tokenizer.backend_tokenizer)
        backend.no_padding()
        backend.enable_truncation(max_length, direction=side)
        backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        self._backend = backend

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(the texts' token ids, special tokens included, concatenated; the token count of each text)."""
        encode = getattr(self._backend, "encode_batch_fast", None) or self._backend.encode_batch  # fast: no offsets
        ids = [encoding.ids for encoding in encode(list(texts))]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum())), lengths


def _tokenize_ahead(pool: ThreadPoolExecutor, tokenize: _InferenceTokenizer, texts: list[str],
                    pieces: int) -> list[Future]:
    """Tokenisation of `texts` started in `pieces` parts on `pool`."""
    step = -(-len(texts) // pieces)
    return [pool.submit(tokenize, texts[i : i + step]) for i in range(0, len(texts), step)]


def _joined(parts: list[Future]) -> tuple[np.ndarray, np.ndarray]:
    done = [part.result() for part in parts]
    return np.concatenate([ids for ids, _ in done]), np.concatenate([lengths for _, lengths in done])


def _token_batches(ids: np.ndarray, lengths: np.ndarray, batch_size: int,
                   pad_id: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, input_ids, attention_mask) batches of right-padded texts, longest first.

    `ids` are the texts' tokens concatenated, `lengths` their counts. A batch holds at most
    `batch_size` x (the longest text) tokens, padding included.
    """
    offsets = np.cumsum(lengths) - lengths
    order = np.argsort(-lengths, kind="stable")
    budget = batch_size * max(1, int(lengths[order[0]]))
    at = 0
    while at < len(order):
        width = max(1, int(lengths[order[at]]))
        rows = order[at : at + budget // width]
        mask = np.arange(width) < lengths[rows, None]
        batch = np.full(mask.shape, pad_id, dtype=np.int64)
        batch[mask] = ids[(offsets[rows, None] + np.arange(width))[mask]]
        yield rows, batch, mask.astype(np.int64)
        at += len(rows)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """`array` as a tensor on `device`; to CUDA through pinned memory, without waiting for the copy."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


@contextmanager
def _weights_in(model: nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Run `model` with its float32 weights in `dtype` (no-op for float32), then restore them exactly.

    The modules transformers keeps in float32 for float16 (`_keep_in_fp32_modules`, e.g. T5's
    `wo`, which overflows otherwise) stay in float32; the models' code casts around them.
    """
    if dtype == torch.float32:
        yield
        return
    keep = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        keep |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    saved: dict[nn.Parameter, torch.Tensor] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dtype == torch.float32 and keep.isdisjoint(name.split(".")):
                saved[param] = param.data
                param.data = param.data.to(dtype)
    try:
        yield
    finally:
        for param, data in saved.items():
            param.data = data


def _keep_words(text: str, start: int, offsets: list[tuple[int, int]], words: list[int | None], room: int,
                keep_end: bool) -> str | None:
    """The longest end (or start) of `text` whose tokens fit in `room` beside the template's tokens.

    `text` sits at character `start` of the tokenised string; `offsets` and `words` are that
    string's token spans and word ids. The cut falls between words where it can, so the kept
    words tokenise as they did in the full string. None if the template alone fills `room`.
    """
    end = start + len(text)
    in_text = [j for j, (s, e) in enumerate(offsets) if e > start and s < end]
    budget = room - (len(offsets) - len(in_text))
    if budget <= 0:
        return None
    if keep_end:
        first = len(in_text) - budget
        while first < len(in_text) - 1 and words[in_text[first]] == words[in_text[first - 1]]:
            first += 1
        return text[max(offsets[in_text[first]][0], start) - start :]
    stop = budget
    while stop > 1 and words[in_text[stop]] == words[in_text[stop - 1]]:
        stop -= 1
    return text[: min(offsets[in_text[stop - 1]][1], end) - start]


def _keep_mention(text: str, start: int, offsets: list[tuple[int, int]], words: list[int | None], room: int,
                  mention: tuple[int, int]) -> str | None:
    """The part of `text` around its marked mention whose tokens fit in `room` beside the template's.

    Keeps every token of the mention (markers included) and splits the tokens left over evenly
    between the context on its left and on its right, a short side's unused share going to the
    other; a mention too long by itself keeps its start. Cuts fall between words, as in
    `_keep_words`. None if the template alone fills `room`.
    """
    end = start + len(text)
    in_text = [j for j, (s, e) in enumerate(offsets) if e > start and s < end]
    budget = room - (len(offsets) - len(in_text))
    if budget <= 0:
        return None
    lo, hi = start + mention[0], start + mention[1]
    first, stop = mention_window([offsets[j] for j in in_text], (lo, hi), budget)  # positions in in_text
    inside = [k for k, j in enumerate(in_text) if offsets[j][1] > lo and offsets[j][0] < hi]

    def same_word(k: int) -> bool:
        """Whether token k continues the word of token k - 1 (so no cut may fall before it)."""
        return 0 < k < len(in_text) and words[in_text[k]] == words[in_text[k - 1]]

    # move the cuts inwards to word boundaries, never into the mention (unless it alone is too long)
    floor = inside[-1] + 1 if stop > inside[-1] else first + 1
    while first < inside[0] and same_word(first):
        first += 1
    while stop > floor and same_word(stop):
        stop -= 1
    return text[max(offsets[in_text[first]][0], start) - start : min(offsets[in_text[stop - 1]][1], end) - start]


def _title_text(passage: Any, position: int) -> tuple[str, str]:
    """(title, text) of a Passage-like object or a pair."""
    if hasattr(passage, "title") and hasattr(passage, "text"):
        return passage.title, passage.text
    if isinstance(passage, (tuple, list)) and len(passage) == 2:
        return passage[0], passage[1]
    raise TypeError(f"passage {position} is a {type(passage).__name__}: expected a Passage or a (title, text) pair")
