"""`tracerl serve --model` serves the store and the gateway in one process: an agent's call through the
official `openai` client on the tracked URL is recorded as an llm_call span that any store client can read."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tracerl.server.testing import start_server
from tracerl.store.http import HttpStore
from tracerl.types import RolloutSpec, SpanKind


@pytest.mark.timeout(180)
def test_serve_with_model_records_openai_client_calls(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = str(tiny_model_dir)
    with start_server(f"sqlite:///{tmp_path}/s.db", extra_args=("--model", model)) as server:
        store = HttpStore(server.url)
        store.enqueue([RolloutSpec(task={"q": "hi"})])
        claim = store.claim("w1", lease_s=60)
        assert claim is not None
        base_url = f"{server.url}/r/{claim.rollout.rollout_id}/{claim.attempt.attempt_id}/v1"
        client = openai.OpenAI(base_url=base_url, api_key="unused")
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
        )
        [span] = store.get_spans(attempt_id=claim.attempt.attempt_id)
        assert span.kind is SpanKind.LLM_CALL
        assert span.response_ids and len(span.response_ids) == reply.usage.completion_tokens  # type: ignore[union-attr]
        assert span.logprobs is not None and len(span.logprobs) == len(span.response_ids)

        # the plain /v1 URL is served but not recorded
        plain = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        plain.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert len(store.get_spans(attempt_id=claim.attempt.attempt_id)) == 1

        with pytest.raises(openai.BadRequestError, match="not served"):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        store.close()
