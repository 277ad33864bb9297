"""Where models run and in which precision: the one meaning of ``device="auto"`` and ``dtype="auto"``."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = ("auto", *DTYPES)


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
        from accelerate import PartialState

        state = PartialState()
    device = torch.device(state.device)
    if state.num_processes > 1 and device.type == "cuda":
        return str(device)
    return resolve_device(name)


def check_dtype_name(name: str, option: str = "dtype") -> None:
    """A ValueError naming `option` unless `name` is auto or a key of DTYPES."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"{option} must be one of {', '.join(DTYPE_NAMES)}, got {name!r}")


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype: ``auto`` is bfloat16 on CUDA where supported, else float16 there, and
    float32 on every other device; other names as DTYPES maps them."""
    check_dtype_name(name)
    if name != "auto":
        return DTYPES[name]
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast(device: torch.device | str, name: str = "auto") -> ContextManager:
    """Autocast to `resolve_dtype(name, device)` on `device`; nothing when that is float32."""
    device = torch.device(device)
    dtype = resolve_dtype(name, device)
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)
