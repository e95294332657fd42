"""One rank of the data-parallel GRPO update test (started by ``torchrun`` from test_distributed_update.py).

    torchrun --nproc-per-node 2 dist_update_worker.py MODEL_DIR BATCH.pt OUT_DIR [gloo|nccl]

Every rank loads the same model and config; rank 0 resumes from the checkpoint named in BATCH.pt (the
others start from the initial weights and an empty optimizer state: the first update must bring them in
step), then calls ``learner.update(batch)`` for each batch while the others run
``distributed.follow(learner)``. When BATCH.pt names one, rank 0 saves a checkpoint after batch ``save_after``
(under FSDP the followers take part in gathering the optimizer state; with ``sigterm_followers`` rank 0 first
sends them SIGTERM, which must not stop them before it releases them). Each rank then saves its parameters and
metrics to ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from tracerl.algorithms import distributed as dp
from tracerl.algorithms.grpo import GRPOConfig
from tracerl.algorithms.learner import GRPOLearner
from tracerl.engines.models import load_model


def main(model_dir: str, batch_path: str, out_dir: str, backend: str = "gloo") -> None:
    torch.set_num_threads(1)
    dp.init_from_env(backend)
    saved = torch.load(batch_path, weights_only=False)
    model, _ = load_model(model_dir)
    learner = GRPOLearner(model, GRPOConfig(**saved["config"]))
    metrics: dict[str, float] = {}
    pids = [0] * dp.world_size()
    torch.distributed.all_gather_object(pids, os.getpid())
    if dp.rank() == 0:
        learner.load_checkpoint(saved["checkpoint"])
        save_after = saved.get("save_after", len(saved["batches"]))
        for i, transitions in enumerate(saved["batches"]):
            metrics = learner.update(transitions).metrics
            if saved.get("save_to") and i + 1 == save_after:
                if saved.get("sigterm_followers"):  # as torchrun does when stopped: the followers must go on
                    for pid in pids[1:]:
                        os.kill(pid, signal.SIGTERM)
                learner.save_checkpoint(saved["save_to"])
        dp.release_followers()
    else:
        dp.follow(learner)
    # FSDP: each rank holds shards; the gathered weights of the last update are the whole parameters
    full = learner.full_weights
    params = {n: (full[n] if full is not None else p.detach()).cpu().clone()
              for n, p in learner.model.named_parameters()}  # fmt: skip
    torch.save({"params": params, "metrics": metrics, "version": learner.weights_version},
               f"{out_dir}/rank{dp.rank()}.pt")  # fmt: skip
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
