"""A ledger record for every Query and ParallelQuery refused before the query path saw it.

The core records each request it handles (routing refusals included). Refusals in
front of it (auth, rate limits, the servicer's input checks) would leave none, so
usage reports and abuse investigations would miss them. This hook writes one
for a call that ended with an error the core never recorded (`CallInfo.recorded`,
set through `UsageAccounting.on_record`): zero tokens, zero cost, the reason.
A call that went well costs one comparison at its end.
"""

from __future__ import annotations

from llmproxy.server.core.accounting.stage import UsageAccounting
from llmproxy.server.interceptors.base import CallInterceptor
from llmproxy.server.interceptors.call import LLMPROXY_SERVICE, OK, CallInfo, mark_recorded

_METHODS = frozenset(f"/{LLMPROXY_SERVICE}/{rpc}" for rpc in ("Query", "ParallelQuery"))


class RefusalLedgerInterceptor(CallInterceptor):
    """Placed before auth and the rate limiter, so it sees their refusals end."""

    observes_failures = True

    def __init__(self, stage: UsageAccounting) -> None:
        super().__init__()
        self.stage = stage
        stage.on_record = mark_recorded

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method not in _METHODS:
            return await continuation(handler_call_details)
        return await self.join(continuation, handler_call_details)

    def end(self, call: CallInfo) -> None:
        if call.code == OK or call.recorded:
            return
        # An unauthenticated caller has no key id; never record what it presented.
        key_id = "" if call.code == "UNAUTHENTICATED" else call.key_id
        self.stage.refuse(
            call.request_id, key_id, call.requested_model, call.reason, call.duration_s * 1000
        )
