"""The population's soup: one network whose weights are the average of the population's,
with BatchNorm statistics estimated afresh, evaluated like any network of the population.

The running statistics of an average are not the average of the running statistics: each
network's were measured on its own features, and the averaged network computes different
ones. So they are recomputed on training batches, as after a graft.
"""

from __future__ import annotations

from typing import Any

import torch

from graftune.config import Config
from graftune.core.average import move_toward
from graftune.core.graft import StateLike, as_tensor
from graftune.data import ImageSet
from graftune.training.trainer import Trainer


class Soup:
    """A network of the population's architecture that takes averaged weights, re-estimates
    its BatchNorm statistics and is evaluated on the test set.

    It is a :class:`Trainer` that never trains: the recalibration and the evaluation are the
    networks' own, so the soup's accuracy compares with theirs as is.
    """

    def __init__(self, config: Config, data: ImageSet, device: str | None = None):
        # A Trainer seeds the global generator for its initial weights, which the averaged
        # weights replace anyway: the caller's random state must not move.
        devices = [torch.device(device)] if device and "cuda" in str(device) else []
        with torch.random.fork_rng(devices=devices):
            self.trainer = Trainer(config, 0, data, device=device)
        self.device = self.trainer.device

    def evaluate(self, average: StateLike, bn_batches: int) -> dict[str, Any]:
        """Take ``average`` (every floating-point tensor of the network), recompute the
        BatchNorm statistics on ``bn_batches`` training batches (0: keep the averaged ones)
        and evaluate.

        Returns:
            ``test_acc`` and ``test_loss``, and the soup's weights as ``state`` (a state
            dict on the CPU).
        """
        model = self.trainer.model
        state = model.state_dict()
        move_toward(state, average, 1.0)  # rate 1 copies every float tensor exactly
        for key, value in average.items():  # and integer buffers, where the average has them
            if not state[key].is_floating_point():
                state[key].copy_(as_tensor(value))
        if bn_batches > 0:
            self.trainer.recalibrate_batchnorm(bn_batches)
        metrics = self.trainer.evaluate()
        keep = ("test_acc", "test_loss")
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return {**{k: metrics[k] for k in keep}, "state": state}
