"""Normalised chat types shared by the core and every provider adapter.

They sit at the bottom of the import graph: nothing here imports grpc, httpx or
any other llmproxy module. Hot-path types are slotted dataclasses, not pydantic.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"
    OTHER = "other"


class CacheMode(enum.StrEnum):
    DEFAULT = "default"
    BYPASS = "bypass"
    REFRESH = "refresh"


class CacheStatus(enum.StrEnum):
    MISS = "miss"
    HIT = "hit"
    SEMANTIC_HIT = "semantic_hit"
    BYPASS = "bypass"
    REFRESH = "refresh"


@dataclass(slots=True, frozen=True)
class Message:
    role: Role
    content: str


@dataclass(slots=True, frozen=True)
class Parameters:
    """Sampling parameters; None means "the provider's default"."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(slots=True, frozen=True)
class CacheOptions:
    mode: CacheMode = CacheMode.DEFAULT
    allow_nondeterministic: bool = False
    semantic: bool = False


@dataclass(slots=True, frozen=True)
class ChatRequest:
    """What an adapter turns into its provider's wire request."""

    model: str  # the provider's own model name (upstream_model)
    messages: tuple[Message, ...]
    params: Parameters = Parameters()
    request_id: str = ""
    # Extra headers to forward upstream (e.g. W3C traceparent).
    headers: tuple[tuple[str, str], ...] = ()
    # The model's configured output cap, for APIs that require max_tokens (Anthropic).
    max_output_tokens: int | None = None


@dataclass(slots=True, frozen=True)
class QueryInput:
    """A caller's request after validation, before routing."""

    messages: tuple[Message, ...]
    model: str = "auto"
    task_type: str = ""
    params: Parameters = Parameters()
    request_id: str = ""
    cache: CacheOptions = CacheOptions()
    route_key: str = ""


@dataclass(slots=True, frozen=True)
class CallContext:
    """Who is calling and by when; filled from gRPC metadata by the API layer."""

    key_id: str = "anonymous"
    # Seconds left before the caller's deadline, None when there is none.
    deadline_s: float | None = None
    route_key: str = ""
    traceparent: str = ""
    # time.perf_counter() when the RPC arrived, so timings include the API layer.
    started_at: float = 0.0


# --- Provider stream events ----------------------------------------------------


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    estimated: bool = False
    # Replayed from the gateway's own cache (or shared from another caller's in-flight
    # call): the counts are the original answer's, but no upstream tokens were spent,
    # so the cost of this answer is zero.
    from_cache: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class TextDelta:
    """All text received since the previous event (coalesced per network read)."""

    text: str
    # On an adapter's first delta: returns the text received since, without waiting. The
    # executor sends the start event first; what arrived during that write joins this delta.
    more: Callable[[], str] | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Finish:
    """The last event of every successful provider stream."""

    reason: FinishReason
    raw_reason: str = ""
    usage: Usage | None = None


ProviderEvent = TextDelta | Finish


# --- Events the core yields to the API layer ------------------------------------


@dataclass(slots=True, frozen=True)
class Attempt:
    model: str
    provider: str
    error_reason: str = ""
    duration_ms: int = 0


@dataclass(slots=True)
class Started:
    model: str
    provider: str


@dataclass(slots=True)
class Completed:
    model: str
    provider: str
    usage: Usage
    finish_reason: FinishReason
    raw_finish_reason: str
    response_time_ms: int
    time_to_first_token_ms: int
    proxy_overhead_us: int
    attempts: list[Attempt] = field(default_factory=list)
    cache_status: CacheStatus = CacheStatus.MISS
    cache_similarity: float = 0.0
    cost_usd: float = 0.0


QueryEvent = Started | TextDelta | Completed
