"""Pre-flight token arithmetic: which candidates can hold the prompt, and the most it can cost."""

from __future__ import annotations

from llmproxy.server.core import tokens
from llmproxy.server.core.accounting.pricing import estimate_of
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import QueryInput
from llmproxy.server.errors import ContextTooLongError, FieldViolation

# Output tokens assumed when neither the request (max_tokens) nor the model config
# (max_output_tokens, context_window) bounds the answer: used only to size a budget
# reservation, never sent upstream.
DEFAULT_MAX_OUTPUT = 4096


class PromptTokens:
    """The prompt's token count per tokenizer, counted at most once per request each."""

    __slots__ = ("_bound", "_counts", "query")

    def __init__(self, query: QueryInput) -> None:
        self.query = query
        self._counts: dict[str, int] = {}
        self._bound: int | None = None

    def count(self, deployment: Deployment) -> int:
        model = deployment.config.upstream
        encoding = tokens.encoding_name(model) or tokens.ESTIMATE_ENCODING
        n = self._counts.get(encoding)
        if n is None:
            n = self._counts[encoding] = tokens.count_messages(model, self.query.messages)
        return n

    def fits(self, deployment: Deployment, limit: int) -> bool:
        """prompt tokens <= limit, counting no further than needed to know."""
        model = deployment.config.upstream
        encoding = tokens.encoding_name(model) or tokens.ESTIMATE_ENCODING
        n = self._counts.get(encoding)
        if n is None:
            if self._bound is None:
                self._bound = tokens.upper_bound(self.query.messages)
            if self._bound <= limit:
                return True
            bounded = tokens.count_messages_until(model, self.query.messages, limit)
            if bounded is None:
                return False
            n = self._counts[encoding] = bounded
        return n <= limit


def requested_output(query: QueryInput) -> int:
    """Room the answer needs: max_tokens when set, else at least one token."""
    return query.params.max_tokens or 1


def filter_fitting(query: QueryInput, candidates: list[Deployment], prompt: PromptTokens) -> None:
    """Drop candidates whose context window cannot hold prompt + max_tokens; raise if none can.

    Works in place: the executor reads this same list when the stream starts.
    Models without a configured context_window are assumed to fit.
    """
    wanted = requested_output(query)
    fitting = [
        d
        for d in candidates
        if d.config.context_window is None or prompt.fits(d, d.config.context_window - wanted)
    ]
    if fitting:
        if len(fitting) != len(candidates):
            candidates[:] = fitting
        return
    raise _too_long(query, candidates, prompt, wanted)


def _too_long(
    query: QueryInput, candidates: list[Deployment], prompt: PromptTokens, wanted: int
) -> ContextTooLongError:
    largest = max(candidates, key=lambda d: d.config.context_window or 0)
    window = largest.config.context_window or 0
    # Bounded, so a huge prompt costs a bounded count even on this error path.
    cap = 4 * window
    n = tokens.count_messages_until(largest.config.upstream, query.messages, cap)
    counted = f"{n}" if n is not None else f"more than {cap}"
    asked = f"max_tokens {wanted}" if query.params.max_tokens else "at least 1 output token"
    names = ", ".join(f"{d.name} ({d.config.context_window})" for d in candidates)
    message = (
        f"the prompt is {counted} tokens and the answer needs {asked}, more than the "
        f"context window of {names}"
    )
    return ContextTooLongError(
        message,
        [FieldViolation("messages", message)],
        metadata={
            "prompt_tokens": str(n if n is not None else cap + 1),
            "max_tokens": str(wanted),
            "context_window": str(window),
            "model": largest.name,
        },
    )


def max_output(deployment: Deployment, query: QueryInput, prompt_tokens: int) -> int:
    """The longest answer this deployment may produce for this request."""
    config = deployment.config
    if query.params.max_tokens:
        return query.params.max_tokens
    if config.max_output_tokens:
        return config.max_output_tokens
    if config.context_window:
        return max(config.context_window - prompt_tokens, 1)
    return DEFAULT_MAX_OUTPUT


def worst_case_cost(query: QueryInput, candidates: list[Deployment], prompt: PromptTokens) -> float:
    """The dearest any remaining candidate could make this request: what a budget reserves."""
    worst = 0.0
    for d in candidates:
        if d.config.price is None:
            continue
        n = prompt.count(d)
        worst = max(worst, estimate_of(d.config.price, n, max_output(d, query, n)))
    return worst
