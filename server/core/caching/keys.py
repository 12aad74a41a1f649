"""Which requests may be cached, and the digests and Redis keys that name their answers."""

from __future__ import annotations

import hashlib

import orjson

from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import Message, Parameters, QueryInput

# Bumped whenever the digest's input changes shape, so old entries are never misread.
KEY_VERSION = "v1"


def is_cacheable(query: QueryInput) -> bool:
    """Only answers that a repeat of the request could have produced are served from cache.

    Greedy decoding (temperature 0) or a fixed seed make the answer (nearly) repeatable;
    anything else needs the caller's explicit opt-in.
    """
    params = query.params
    return params.temperature == 0 or params.seed is not None or query.cache.allow_nondeterministic


def request_digest(messages: tuple[Message, ...], params: Parameters, kind: str = "exact") -> str:
    """A digest of everything that changes the output: the turns and the sampling parameters.

    The request id, route key, task type and cache options change nothing in the answer
    and stay out; the deployment is added by the key (see `entry_key`).
    """
    blob = orjson.dumps(
        [
            KEY_VERSION,
            kind,
            params.temperature,
            params.max_tokens,
            params.top_p,
            params.stop,
            params.seed,
            [(m.role.value, m.content) for m in messages],
        ]
    )
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def deployment_id(deployment: Deployment) -> str:
    """Names the model that answers; a change of upstream model makes old answers unreachable."""
    return f"{deployment.name}|{deployment.provider_name}|{deployment.config.upstream}"


def entry_key(prefix: str, digest: str, deployment: Deployment) -> str:
    """`<prefix>{<digest>}:<deployment>`: the hash tag is the request digest.

    Every candidate deployment's key for one request lands in the same Redis Cluster
    slot, so one MGET looks them all up.
    """
    return f"{prefix}{{{digest}}}:{deployment_id(deployment)}"


def vector_set_key(prefix: str, context_digest: str, deployment: Deployment) -> str:
    """The Redis hash holding the prompt vectors of one model, parameter set and history."""
    return f"{prefix}sem:{{{context_digest}}}:{deployment_id(deployment)}"


def semantic_answer_key(set_key: str, digest: str) -> str:
    """An answer behind a vector; shares its set's hash tag, so the same slot."""
    return f"{set_key}:a:{digest}"
