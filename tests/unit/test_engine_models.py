"""Loading models offline: the tiny random model, local folders, the engine spec, and (slow) SmolLM2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tracerl.engines import create_engine
from tracerl.engines.models import build_tiny_model, load_model
from tracerl.errors import ConfigError


def test_tiny_model_weights_depend_only_on_the_seed(tmp_path: Path, tiny_model: tuple[Any, Any]) -> None:
    same, _ = load_model(build_tiny_model(tmp_path / "same", seed=0))
    other, _ = load_model(build_tiny_model(tmp_path / "other", seed=1))
    reference = tiny_model[0].state_dict()
    assert all(torch.equal(reference[k], v) for k, v in same.state_dict().items())
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(reference[key], other.state_dict()[key])
    n_params = sum(p.numel() for p in same.parameters())
    assert 1_000_000 <= n_params <= 10_000_000


def test_tiny_tokenizer_round_trips_text_and_renders_chatml(tiny_model: tuple[Any, Any]) -> None:
    _, tok = tiny_model
    text = "What is 127 + 35? Answer: 162\n<tool_call>{\"name\": \"calc\"}</tool_call> héllo 😀"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert [tok.decode([i]) for i in tok("127", add_special_tokens=False)["input_ids"]] == ["1", "2", "7"]
    prompt = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.eos_token == "<|im_end|>"


def test_a_saved_model_folder_loads_by_path(tmp_path: Path, tiny_model: tuple[Any, Any]) -> None:
    model, tok = tiny_model
    model.save_pretrained(tmp_path / "copy")
    tok.save_pretrained(tmp_path / "copy")
    loaded, loaded_tok = load_model(str(tmp_path / "copy"), dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert loaded_tok.chat_template == tok.chat_template


def test_tiny_random_by_name_builds_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACERL_CACHE", str(tmp_path))
    engine = create_engine("hf:tiny-random", max_batch_size=2)
    assert engine.model_name == "tiny-random"
    assert engine.max_context == 2048
    folders = list((tmp_path / "models").iterdir())
    assert [f.name for f in folders] == ["tiny-random-v1-seed0"]
    assert create_engine("tiny-random").tokenizer.eos_token == "<|im_end|>"
    assert list((tmp_path / "models").iterdir()) == folders  # reused, not rebuilt


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: load_model("no-such-model"), "neither a known name"),
        (lambda: load_model("tiny-random", dtype="float64"), "dtype must be one of"),
        (lambda: create_engine("sglang:smollm2-135m"), "unknown engine kind 'sglang'"),
        (lambda: create_engine("hf:"), "names no model"),
    ],
)
def test_bad_model_names_are_refused_with_a_fix(call: Any, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        call()


def test_build_tiny_model_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        build_tiny_model(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_smollm2_converts_to_a_plain_trainable_model_matching_the_gguf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """≈ 45 s: converts the GGUF (≈ 20 s) into a fresh cache, then compares with transformers' direct GGUF load."""
    from transformers import AutoModelForCausalLM

    from tracerl.engines.models import smollm2_gguf_path

    monkeypatch.setenv("TRACERL_CACHE", str(tmp_path))
    model, tok = load_model("smollm2-135m")
    assert getattr(model, "hf_quantizer", None) is None
    assert "quantization_config" not in model.config.to_dict()
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert tok.eos_token == "<|im_end|>"
    model.save_pretrained(tmp_path / "saved")  # what a GGUF-loaded model cannot do
    gguf = smollm2_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
    )
    ids = torch.tensor([tok("What is 2 + 2? Answer briefly.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, direct(ids).logits, atol=1e-4)
