"""The gateway: tracerl's OpenAI-compatible front door that records every LLM call of an agent.

An agent is given ``base_url = http://HOST:PORT/r/{rollout_id}/{attempt_id}/v1``; each call it makes there
is served by the engine and stored as ``llm_call`` spans of that attempt with the exact prompt and response
token ids and log-probs. Modules, in the order a request meets them:

* :mod:`~tracerl.gateway.app` — routes, attempt checks, ``start_gateway`` (uvicorn in a thread);
* :mod:`~tracerl.gateway.protocol` — OpenAI request fields to ``SamplingParams``;
* :mod:`~tracerl.gateway.chat` — messages and tools to prompt ids with the model's chat template;
* :mod:`~tracerl.gateway.service` — generate and build the OpenAI response;
* :mod:`~tracerl.gateway.toolcalls` — ``<tool_call>`` blocks back into OpenAI ``tool_calls``;
* :mod:`~tracerl.gateway.streaming` — SSE chunks;
* :mod:`~tracerl.gateway.spans`, :mod:`~tracerl.gateway.recording` — spans, seqs and store writes;
* :mod:`~tracerl.gateway.upstream` — forwarding to a frozen OpenAI-compatible upstream;
* :mod:`~tracerl.gateway.errors` — OpenAI-format errors.
"""

from tracerl.gateway.app import (
    RunningGateway,
    build_gateway_router,
    create_gateway_app,
    serve_in_thread,
    start_gateway,
)

__all__ = ["RunningGateway", "build_gateway_router", "create_gateway_app", "serve_in_thread", "start_gateway"]
