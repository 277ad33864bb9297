"""What every benchmark records: the machine it ran on, and its result file written atomically."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
from pathlib import Path


def machine_info() -> dict:
    """Platform, CPUs, threads, library versions and GPU (if any) of this machine."""
    import faiss
    import torch
    import transformers

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads(), "faiss_omp_threads": faiss.omp_get_max_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "faiss": faiss.__version__,
            "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if importlib.util.find_spec("sentence_transformers") is not None:
        import sentence_transformers

        info["sentence_transformers"] = sentence_transformers.__version__
    return info


def write_result(path: Path, data: dict) -> None:
    """Write JSON atomically (safeio.atomic.atomic_write: a temporary file, then rename)."""
    from safeio.atomic import atomic_write

    with atomic_write(path) as f:
        json.dump(data, f, indent=2)
        f.write("\n")
