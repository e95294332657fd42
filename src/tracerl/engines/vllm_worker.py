"""Runs inside the vLLM server, not in tracerl: the worker method that loads new weights from a file.

The ``vllm`` engine (:mod:`tracerl.engines.vllm`) copies this file next to its work folder as
``tracerl_vllm_worker.py``, puts that folder on the server's ``PYTHONPATH`` and starts the server with
``--worker-extension-cls tracerl_vllm_worker.WeightLoader``: vLLM mixes the class into each of its workers,
so ``self`` below is a vLLM worker. After each update the engine writes the new weights to a safetensors
file and calls ``POST /collective_rpc {"method": "tracerl_load_weights", "args": [path]}``; every worker
(one per tensor-parallel rank) reads the file and hands the tensors to the model's own ``load_weights``,
which maps Hugging Face names onto vLLM's fused layers (q/k/v → ``qkv_proj``, gate/up → ``gate_up_proj``)
and shards them for its rank.

It imports nothing of tracerl, only what every vLLM install has (torch, safetensors), because the server
may run in another Python environment (e.g. a venv holding the vLLM CPU build).
"""

from __future__ import annotations

from typing import Any


class WeightLoader:
    """Mixed into vLLM's worker class by ``--worker-extension-cls``."""

    model_runner: Any  # set by the vLLM worker this class is mixed into

    def tracerl_load_weights(self, path: str) -> int:
        """Load the tensors of the safetensors file at ``path`` into the served model; returns how many.

        vLLM ≥ 0.11's in-place ``reload_weights`` is used where the worker has it: besides mapping the names
        it redoes the processing vLLM applies after loading (on CPU, weights are repacked for oneDNN and the
        original parameters emptied, so a plain ``model.load_weights`` finds them of size 0).
        """
        from safetensors.torch import load_file

        weights = load_file(path, device="cpu")
        reload = getattr(self, "reload_weights", None)
        if callable(reload):
            reload(weights_iterator=iter(weights.items()), is_checkpoint_format=True)
        else:
            runner = self.model_runner
            model = runner.get_model() if hasattr(runner, "get_model") else runner.model
            model.load_weights(weights=iter(weights.items()))
        return len(weights)
