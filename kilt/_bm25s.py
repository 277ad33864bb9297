"""bm25s, imported with jax hidden: bm25s.selection imports jax when it is installed, and jax
then claims most of a GPU's memory. Every kilt module takes bm25s from here."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def _jax_hidden() -> Iterator[None]:
    """Make `import jax` fail inside the block, unless jax is imported already."""
    hide = "jax" not in sys.modules
    if hide:
        sys.modules["jax"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if hide and sys.modules.get("jax", 0) is None:
            del sys.modules["jax"]


with _jax_hidden():
    import bm25s
    from bm25s.scoring import _select_idf_scorer as select_idf, _select_tfc_scorer as select_tfc
    from bm25s.tokenization import Tokenizer

__all__ = ["bm25s", "Tokenizer", "select_idf", "select_tfc"]
