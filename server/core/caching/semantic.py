"""The semantic cache: serves the answer of the nearest earlier prompt above a threshold.

Only the last turn may differ, and only when it is the user's: the system prompt,
the earlier turns and the sampling parameters are part of the set's key and must
match exactly, so an agent conversation never gets the answer of another history.

Mean-pooled sentence embeddings barely see word order ("convert a string to an
integer" and "convert an integer to a string" score 0.996), so a match whose words
are the same as the prompt's but in another order is refused whatever its score.
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
import time
from dataclasses import dataclass

import numpy as np

from llmproxy.server.core.caching.embedder import Embedder
from llmproxy.server.core.caching.entry import CachedAnswer
from llmproxy.server.core.caching.keys import request_digest, semantic_answer_key, vector_set_key
from llmproxy.server.core.caching.redis_tier import RedisTier
from llmproxy.server.core.caching.vectors import Nearest, VectorIndex
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import QueryInput, Role

log = logging.getLogger(__name__)
# Packed vector-set member: expiry (wall clock), word signature, then the float32 vector.
_HEADER = struct.Struct("<dQQ")
_WORDS = re.compile(r"\w+")

Signature = tuple[int, int]


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def word_signature(text: str) -> Signature:
    """(hash of the bag of words, hash of the word sequence)."""
    words = _WORDS.findall(text.lower())
    return _hash64(" ".join(sorted(words))), _hash64(" ".join(words))


def reordered(a: Signature, b: Signature) -> bool:
    """The same words in another order: the embedding cannot tell these apart."""
    return a[0] == b[0] and a[1] != b[1]


def pack(vector: np.ndarray, expires_at: float, signature: Signature) -> bytes:
    return _HEADER.pack(expires_at, *signature) + vector.astype("<f4").tobytes()


def expiry_of(packed: bytes) -> float:
    return _HEADER.unpack_from(packed)[0]


def signature_of(packed: bytes) -> Signature:
    _, bag, sequence = _HEADER.unpack_from(packed)
    return bag, sequence


def unpack(packed: bytes) -> np.ndarray:
    return np.frombuffer(packed, dtype="<f4", offset=_HEADER.size)


def semantic_text(query: QueryInput) -> str | None:
    """The turn that may match semantically: the last one, when it is the user's."""
    last = query.messages[-1] if query.messages else None
    return last.content if last is not None and last.role is Role.USER else None


@dataclass(slots=True)
class Probe:
    """What one lookup learnt, kept to store the answer under the same vector later."""

    context: str
    vector: np.ndarray | None
    signature: Signature
    answer: CachedAnswer | None = None
    similarity: float = 0.0


class SemanticCache:
    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        redis: RedisTier | None,
        *,
        threshold: float,
        ttl_s: float,
        prefix: str,
        max_per_set: int,
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.redis = redis
        self.threshold = threshold
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.max_per_set = max_per_set
        self._failed = False

    def _accept(self, found: Nearest | None, probe: Probe) -> bool:
        return (
            found is not None
            and found.similarity >= self.threshold
            and not reordered(found.signature, probe.signature)
        )

    async def probe(self, query: QueryInput, candidates: list[Deployment]) -> Probe | None:
        """The nearest earlier prompt for the first candidate that has one above the threshold."""
        text = semantic_text(query)
        if text is None:
            return None
        try:
            vector = await self.embedder.embed(text)
        except Exception:
            # A broken model must not break requests: log once, then go on without it.
            if not self._failed:
                log.exception("semantic cache embedding failed; serving without it")
                self._failed = True
            return None
        context = request_digest(query.messages[:-1], query.params, "semantic")
        probe = Probe(context, vector, word_signature(text))
        if vector is None:
            return probe
        for deployment in candidates:
            set_key = vector_set_key(self.prefix, context, deployment)
            found = self.index.nearest(set_key, vector)
            if not self._accept(found, probe) and self.redis is not None:
                found = await self._nearest_shared(set_key, vector)
            if found is not None and self._accept(found, probe):
                probe.answer, probe.similarity = found.answer, found.similarity
                return probe
        return probe

    async def _nearest_shared(self, set_key: str, vector: np.ndarray) -> Nearest | None:
        assert self.redis is not None
        members = await self.redis.vectors(set_key)
        now = time.time()
        expired = [f for f, packed in members.items() if expiry_of(packed) <= now]
        self.redis.forget_later(set_key, expired)
        live = [(f, p) for f, p in members.items() if expiry_of(p) > now]
        if not live:
            return None
        similarities = np.stack([unpack(p) for _, p in live]) @ vector
        best = int(np.argmax(similarities))
        if similarities[best] < self.threshold:
            return None
        field, packed = live[best]
        data = await self.redis.get(semantic_answer_key(set_key, field.decode()))
        answer = CachedAnswer.decode(data) if data is not None else None
        if answer is None:
            return None
        signature = signature_of(packed)
        # Keep it locally too, for the rest of its life.
        left = expiry_of(packed) - now
        self.index.add(set_key, field.decode(), unpack(packed), answer, left, signature)
        return Nearest(answer, float(similarities[best]), signature)

    def store(
        self, probe: Probe, deployment: Deployment, digest: str, answer: CachedAnswer, data: bytes
    ) -> None:
        if probe.vector is None:
            return
        set_key = vector_set_key(self.prefix, probe.context, deployment)
        self.index.add(set_key, digest, probe.vector, answer, self.ttl_s, probe.signature)
        if self.redis is not None:
            self.redis.add_vector_later(
                set_key,
                digest,
                pack(probe.vector, time.time() + self.ttl_s, probe.signature),
                semantic_answer_key(set_key, digest),
                data,
                self.ttl_s,
                self.max_per_set,
                expiry_of,
            )
