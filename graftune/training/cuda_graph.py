"""The fused train step recorded as one CUDA graph and replayed.

Per-operator dispatch (vmap's most of all) costs more host time than a ResNet-20 step costs
an H100, so the whole step (forward, backward, update) is captured once and replayed.
"""

from __future__ import annotations

from typing import Any

import torch

WARMUP_STEPS = 3  # eager steps before capture: cuDNN picks its kernels, the allocator settles


class CudaGraphStep:
    """The fused train step recorded as one CUDA graph. Inputs are copied into static
    tensors, the learning rates come from a table on the device indexed by a step counter,
    and everything else (weights, momentum, BatchNorm statistics) is updated in place, so
    grafts, restores and loaded states between replays are seen by the next replay."""

    def __init__(self, trainer: Any, x: torch.Tensor, y: torch.Tensor):
        self.trainer = trainer
        self.x, self.y = x.clone(), y.clone()
        steps = range(trainer.total_steps + 1)
        table = [trainer.lrs(step) for step in steps]  # double, then rounded once
        self.lr_table = torch.tensor(table, dtype=torch.float32, device=trainer.device)
        self.step_index = torch.zeros(1, dtype=torch.long, device=trainer.device)
        self.graph = torch.cuda.CUDAGraph()

    @classmethod
    def capture(cls, trainer: Any, x, y) -> tuple[CudaGraphStep | None, str]:
        try:
            step = cls(trainer, x, y)
            for p in trainer.params.values():
                p.grad = None
            torch.cuda.synchronize()
            with torch.cuda.graph(step.graph):
                step.outputs = step._body()
            return step, "cuda graph"
        except Exception as error:  # capture is an optimisation: eager steps still work
            return None, f"eager (CUDA graph capture failed: {type(error).__name__}: {error})"

    def _body(self) -> tuple[torch.Tensor, ...]:
        trainer = self.trainer
        out = trainer._loss_terms(self.x, self.y, autocast_cache=False)
        params, bufs = trainer.momentum_update()
        with torch.no_grad():
            lr = self.lr_table.index_select(0, self.step_index).view(-1)
            steps = [lr.view(-1, *([1] * (p.dim() - 1))) for p in params]
            torch._foreach_addcmul_(params, bufs, steps, value=-1.0)
        return out

    def run(self, x: torch.Tensor, y: torch.Tensor, step: int):
        self.x.copy_(x)
        self.y.copy_(y)
        self.step_index.fill_(step)
        self.graph.replay()
        return tuple(out.clone() for out in self.outputs)
