"""The shared SSE decoder: text joined per read, a cut-off stream refused by terminator name,
and what happens to events after the terminator in the same read."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llmproxy.server.domain import Finish, FinishReason
from llmproxy.server.errors import UpstreamProtocolError, UpstreamUnavailableError
from llmproxy.server.providers.decoding import SSEDecoder, load_event
from llmproxy.server.providers.sse import SSEEvent


@dataclass(slots=True)
class Seen:
    done: bool = False
    after_done: int = 0

    def finish(self) -> Finish:
        return Finish(FinishReason.STOP, "end", None)


def parse(event: SSEEvent, state: Seen, *, provider: str) -> str:
    if state.done:
        state.after_done += 1
    if event.event == "end":
        state.done = True
        return ""
    return load_event(event.data, provider=provider, what="event")["text"]


STREAM = b'data: {"text": "Hel"}\n\ndata: {"text": "lo"}\n\nevent: end\ndata: {}\n\n'
TAIL = b'data: {"text": "!"}\n\n'


@pytest.mark.parametrize("split", [1, 5, 1000])
def test_text_of_each_read_and_finish_after_the_terminator(split):
    decoder = SSEDecoder("p", Seen(), parse, "end")
    text = "".join(decoder.feed(STREAM[i : i + split]) for i in range(0, len(STREAM), split))
    assert text == "Hello" and decoder.done
    assert decoder.finish() == Finish(FinishReason.STOP, "end", None)


def test_stream_cut_before_the_terminator_names_it():
    decoder = SSEDecoder("p", Seen(), parse, "the end event")
    assert decoder.feed(STREAM[:45]) == "Hello"
    with pytest.raises(UpstreamUnavailableError, match="p: stream ended before the end event"):
        decoder.finish()


@pytest.mark.parametrize(
    ("stop_at_done", "text", "after"), [(True, "Hello", 0), (False, "Hello!", 1)]
)
def test_events_after_the_terminator_in_the_same_read(stop_at_done, text, after):
    state = Seen()
    decoder = SSEDecoder("p", state, parse, "end", stop_at_done=stop_at_done)
    assert decoder.feed(STREAM + TAIL) == text
    assert state.after_done == after


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", '"text"'])
def test_an_event_that_is_not_a_json_object_breaks_the_protocol(data):
    with pytest.raises(UpstreamProtocolError, match="p: malformed stream chunk"):
        load_event(data, provider="p", what="stream chunk")
