"""A stand-in for ``python -m vllm.entrypoints.openai.api_server``, speaking the subset tracerl's ``vllm``
engine uses, for the tests that cannot start a real vLLM here (no vLLM in CI's install; vLLM's CPU build
takes minutes to start on 2 cores).

``tests/integration/test_engine_vllm.py`` installs this file as ``vllm/entrypoints/openai/api_server.py``
in a temporary folder on ``PYTHONPATH``, so the engine starts it with its real command line. It serves:

* ``GET /health``;
* ``POST /v1/completions`` with ``prompt`` = token ids, ``n = 1``, ``logprobs = 0``: a deterministic toy
  model — greedy token ``k`` is ``(last prompt id + k + 1 + offset) mod vocab``; sampled tokens come from
  ``random.Random(seed)``; log-prob of token ``k`` is ``-(k + 1) / 10``; ``stop_token_ids`` end a
  completion (kept); the answer carries ``token_ids`` and ``"token_id:N"`` tokens like vLLM ≥ 0.10.2;
* ``POST /collective_rpc`` with ``tracerl_load_weights``: mixes the real worker extension named by
  ``--worker-extension-cls`` into a fake worker whose ``reload_weights`` records the tensors; the offset
  becomes the number of loads (so new weights change the greedy output);
* ``POST /reset_prefix_cache``.

Environment knobs: ``FAKE_VLLM_DELAY_S`` (seconds per completion), ``FAKE_VLLM_CRASH_AFTER`` (exit with
code 1 after that many completions), ``FAKE_VLLM_LOG`` (a file each served request is appended to).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STATE: dict[str, Any] = {"offset": 0, "served": 0, "loaded": [], "lock": threading.Lock()}


class FakeRunner:
    pass


def make_worker(extension: str) -> Any:
    module, _, name = extension.rpartition(".")
    mixin = getattr(importlib.import_module(module), name)

    class Worker(mixin):  # type: ignore[misc,valid-type]
        model_runner = FakeRunner()

        def reload_weights(self, weights_iterator: Any, is_checkpoint_format: bool) -> None:
            names = sorted(n for n, _ in weights_iterator)
            STATE["loaded"].append(names)
            STATE["offset"] = len(STATE["loaded"])

    return Worker()


def complete(body: dict[str, Any], vocab: int) -> dict[str, Any]:
    prompt = body["prompt"]
    assert isinstance(prompt, list) and all(isinstance(t, int) for t in prompt), "prompt must be token ids"
    assert body.get("n", 1) == 1 and body.get("logprobs") == 0 and body.get("return_token_ids") is True
    rng = random.Random(body.get("seed"))
    stops = set(body.get("stop_token_ids") or [])
    ids: list[int] = []
    reason = "length"
    for k in range(body["max_tokens"]):
        if body.get("temperature", 1.0) == 0:
            token = (prompt[-1] + k + 1 + STATE["offset"]) % vocab
        else:
            token = rng.randrange(vocab)
        ids.append(token)
        if token in stops:
            reason = "stop"
            break
    logprobs = [-(k + 1) / 10 for k in range(len(ids))]
    choice = {
        "index": 0, "text": "", "finish_reason": reason, "stop_reason": None, "token_ids": ids,
        "prompt_token_ids": None,
        "logprobs": {"text_offset": [0] * len(ids), "token_logprobs": logprobs,
                     "tokens": [f"token_id:{t}" for t in ids], "top_logprobs": [{f"token_id:{t}": lp}
                                                                         for t, lp in zip(ids, logprobs, strict=True)]},
    }  # fmt: skip
    return {"id": "cmpl-fake", "object": "text_completion", "model": body["model"], "choices": [choice],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids)}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("--model", "--served-model-name", "--host", "--port", "--max-model-len", "--dtype",
                 "--logprobs-mode", "--worker-extension-cls", "--max-num-seqs"):
        parser.add_argument(flag)
    args = parser.parse_args()
    assert args.logprobs_mode == "raw_logprobs", "the engine must ask for the raw policy's log-probs"
    assert os.environ.get("VLLM_SERVER_DEV_MODE") == "1", "collective_rpc needs the development endpoints"
    with open(os.path.join(args.model, "config.json")) as f:
        vocab = int(json.load(f)["vocab_size"])
    worker = make_worker(args.worker_extension_cls)
    delay = float(os.environ.get("FAKE_VLLM_DELAY_S", "0"))
    crash_after = int(os.environ.get("FAKE_VLLM_CRASH_AFTER", "0"))
    log = os.environ.get("FAKE_VLLM_LOG")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def reply(self, code: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.reply(200, {}) if self.path == "/health" else self.reply(404, {"error": {"message": "no"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            if log:
                with open(log, "a") as f:
                    f.write(json.dumps({"path": self.path, "body": body, "pid": os.getpid()}) + "\n")
            if self.path == "/v1/completions":
                if len(body["prompt"]) + body["max_tokens"] > int(args.max_model_len):
                    return self.reply(400, {"error": {"message": "prompt too long", "type": "BadRequestError"}})
                time.sleep(delay)
                with STATE["lock"]:
                    STATE["served"] += 1
                    if crash_after and STATE["served"] > crash_after:
                        os._exit(1)
                    answer = complete(body, vocab)
                return self.reply(200, answer)
            if self.path == "/collective_rpc":
                return self.reply(200, {"results": [getattr(worker, body["method"])(*body.get("args", []))]})
            if self.path == "/reset_prefix_cache":
                return self.reply(200, {})
            self.reply(404, {"error": {"message": f"no route {self.path}"}})

    ThreadingHTTPServer((args.host, int(args.port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
