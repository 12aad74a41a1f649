"""The in-process vector index: prompt embeddings per model, parameters and history."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from llmproxy.server.core.caching.entry import CachedAnswer


class Nearest(NamedTuple):
    answer: CachedAnswer
    similarity: float
    # The matched prompt's word signature (see semantic.word_signature).
    signature: tuple[int, int]


class _VectorSet:
    """Rows of one matrix, so a lookup is one matrix-vector product."""

    __slots__ = ("answers", "expires", "ids", "matrix", "signatures")

    def __init__(self, dim: int) -> None:
        self.ids: list[str] = []
        self.answers: list[CachedAnswer] = []
        self.signatures: list[tuple[int, int]] = []
        self.expires: list[float] = []
        self.matrix = np.empty((0, dim), dtype=np.float32)

    def remove(self, index: int) -> None:
        del self.ids[index], self.answers[index], self.expires[index], self.signatures[index]
        self.matrix = np.delete(self.matrix, index, axis=0)


class VectorIndex:
    """Bounded by `max_entries` across all sets; the oldest entry goes first.

    Vectors are unit length (the embedder normalises them), so the dot product is
    the cosine similarity.
    """

    def __init__(
        self, dim: int, max_entries: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.dim = dim
        self.max_entries = max_entries
        self._clock = clock
        self._sets: dict[str, _VectorSet] = {}
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def nearest(self, set_key: str, vector: np.ndarray) -> Nearest | None:
        vset = self._sets.get(set_key)
        if vset is None:
            return None
        now = self._clock()
        for i in range(len(vset.ids) - 1, -1, -1):
            if vset.expires[i] <= now:
                self._order.pop((set_key, vset.ids[i]), None)
                vset.remove(i)
        if not vset.ids:
            del self._sets[set_key]
            return None
        similarities = vset.matrix @ vector
        best = int(np.argmax(similarities))
        return Nearest(vset.answers[best], float(similarities[best]), vset.signatures[best])

    def add(
        self,
        set_key: str,
        entry_id: str,
        vector: np.ndarray,
        answer: CachedAnswer,
        ttl_s: float,
        signature: tuple[int, int],
    ) -> None:
        if ttl_s <= 0:
            return
        vset = self._sets.get(set_key)
        if vset is None:
            vset = self._sets[set_key] = _VectorSet(self.dim)
        if (set_key, entry_id) in self._order:
            vset.remove(vset.ids.index(entry_id))
            del self._order[(set_key, entry_id)]
        vset.ids.append(entry_id)
        vset.answers.append(answer)
        vset.signatures.append(signature)
        vset.expires.append(self._clock() + ttl_s)
        vset.matrix = np.vstack((vset.matrix, vector.reshape(1, -1).astype(np.float32)))
        self._order[(set_key, entry_id)] = None
        while len(self._order) > self.max_entries:
            (old_set, old_id), _ = self._order.popitem(last=False)
            victim = self._sets[old_set]
            victim.remove(victim.ids.index(old_id))
            if not victim.ids:
                del self._sets[old_set]
