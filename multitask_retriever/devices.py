"""Where models run and in which precision: the one meaning of ``device="auto"`` and ``dtype="auto"``."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = ("auto", *DTYPES)
DTYPE_HELP = ("auto (bfloat16 on CUDA and on CPUs with native bfloat16 arithmetic, float16 on older GPUs, "
              "else float32) | " + " | ".join(DTYPES))
STORAGE_HELP = ("dtype of the saved weights: float32, or float16 / bfloat16 for half the disk (they load "
                "back as float32)")


def resolve_device(name: str = "auto") -> str:
    """``auto``: ``cuda`` when torch sees a GPU, else ``cpu``; any other torch device name as given.
    A CUDA device where torch sees none is a ValueError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} but torch sees no CUDA device")
    return name


def process_device(name: str = "auto", state: Any = None) -> str:
    """This process's device: under a multi-process launch (`accelerate launch`) ``auto`` and
    ``cuda`` mean the GPU accelerate gave the process (cuda:<local rank>), not GPU 0 for all;
    otherwise `resolve_device(name)`. `state` is accelerate's PartialState (default: this process's)."""
    if name not in ("auto", "cuda"):
        return resolve_device(name)
    if state is None:
        from .distributed import distributed_state

        state = distributed_state()
    device = torch.device(state.device)
    if state.num_processes > 1 and device.type == "cuda":
        return str(device)
    return resolve_device(name)


def check_dtype_name(name: str, option: str = "dtype") -> None:
    """A ValueError naming `option` unless `name` is auto or a key of DTYPES."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"{option} must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16), where bfloat16
    inference runs 2-3x faster than float32; elsewhere it is emulated and slower."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype: ``auto`` is bfloat16 on CUDA where supported, else float16 there;
    bfloat16 on a CPU with native bfloat16 arithmetic; float32 on every other device. Other
    names as DTYPES maps them."""
    check_dtype_name(name)
    if name != "auto":
        return DTYPES[name]
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


MIXED_PRECISIONS = ("no", "fp16", "bf16", "auto")


def resolve_mixed_precision(name: str, device: torch.device | str) -> str:
    """accelerate's mixed_precision for a training run: ``auto`` is bf16 where `resolve_dtype`
    computes in bfloat16 (recent GPUs, CPUs with native bfloat16), fp16 on older GPUs, else no."""
    if name not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, got {name!r}")
    if name != "auto":
        return name
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(resolve_dtype("auto", device), "no")


def check_storage_dtype(name: str) -> None:
    """A ValueError unless `name` is a dtype weights can be stored in (a key of DTYPES)."""
    if name not in DTYPES:
        raise ValueError(f"storage_dtype must be one of {', '.join(DTYPES)}, got {name!r}")


def stored_state(module: torch.nn.Module, name: str) -> dict[str, torch.Tensor] | None:
    """`module`'s floating-point weights cast to the storage dtype `name` for `save_pretrained`
    (the live weights stay as they are); None when they are kept as they are (float32)."""
    dtype = DTYPES[name]
    if dtype == torch.float32:
        return None
    return {key: value.to(dtype) if value.is_floating_point() else value
            for key, value in module.state_dict().items()}


def autocast(device: torch.device | str, name: str = "auto") -> ContextManager:
    """Autocast to `resolve_dtype(name, device)` on `device`; nothing when that is float32."""
    device = torch.device(device)
    dtype = resolve_dtype(name, device)
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)
