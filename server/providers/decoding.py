"""The SSE stream decoder shared by adapters whose events each update a stream state.

Anthropic, Gemini and Cohere differ only in how one event changes their state
(`parse_event`) and in what ends a complete stream; this module owns the rest:
framing, joining the text of one read, and refusing a stream cut off before its
terminator.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

import orjson

from llmproxy.server.domain import Finish
from llmproxy.server.errors import UpstreamProtocolError, UpstreamUnavailableError
from llmproxy.server.providers.sse import SSEEvent, SSEParser


class StreamState(Protocol):
    """What an adapter's events have said so far; `done` once its terminator came."""

    done: bool

    def finish(self) -> Finish: ...


S = TypeVar("S", bound=StreamState)
S_contra = TypeVar("S_contra", bound=StreamState, contravariant=True)


class EventParser(Protocol[S_contra]):
    def __call__(self, event: SSEEvent, state: S_contra, *, provider: str) -> str:
        """Apply one event to `state`; return the answer text it carries ("" for none)."""


def load_event(data: str, *, provider: str, what: str) -> dict[str, Any]:
    """One event's JSON object; anything else is the upstream breaking the protocol."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"{provider}: malformed {what}", provider=provider)
    return obj


class SSEDecoder(Generic[S]):
    """Pure: SSE bytes in as they arrive, answer text and the closing Finish out.

    `terminator` names the event that ends a complete stream (for the error when a
    stream stops without it). With `stop_at_done`, events after it in the same read
    are ignored; without, they are still applied (Gemini has no terminator of its
    own, so nothing after its last chunk is discarded unread).
    """

    __slots__ = ("_parse", "_parser", "_provider", "_state", "_stop_at_done", "_terminator")

    def __init__(
        self,
        provider: str,
        state: S,
        parse_event: EventParser[S],
        terminator: str,
        *,
        stop_at_done: bool = True,
    ) -> None:
        self._parser = SSEParser()
        self._state = state
        self._parse = parse_event
        self._provider = provider
        self._terminator = terminator
        self._stop_at_done = stop_at_done

    @property
    def done(self) -> bool:
        return self._state.done

    def feed(self, data: bytes) -> str:
        state, parse, provider, stop = self._state, self._parse, self._provider, self._stop_at_done
        texts = []
        for event in self._parser.feed(data):
            if text := parse(event, state, provider=provider):
                texts.append(text)
            if stop and state.done:
                break
        return "".join(texts)

    def finish(self) -> Finish:
        if not self._state.done:
            raise UpstreamUnavailableError(
                f"{self._provider}: stream ended before {self._terminator}",
                provider=self._provider,
            )
        return self._state.finish()
