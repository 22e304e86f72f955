"""K networks of one architecture run as one wide network: HFTA's layout of a fused step.

Network j's channels are the j-th block of one wide activation [B, K*C, H, W]. A convolution
with stacked weights [K, out, in/g, h, w] is then one convolution of K*g groups over their
view [K*out, in/g, h, w]; a BatchNorm over stacked [K, C] is one BatchNorm over K*C channels
(the same statistics per network, updated in place in the stacked buffers); a Linear is a
batched matmul over the K blocks of the flattened features. The parameters stay the fused
trainer's stacked tensors: only their views change, so grafts, SGD and checkpoints do not
know which forward ran.

vmap builds the same grouped convolutions, but runs each BatchNorm as a normalisation plus a
separate scale and shift, and cannot run NHWC. On two CPU cores this layout trains K = 4
ResNet-20s 1.31x, ResNet-32s 1.18x and MobileNetV2s 2.54x as fast as vmap in NHWC (1.20x,
0.99x, 1.53x in NCHW, where it computes vmap's networks to float rounding; BENCHMARKS.md);
on GPUs it is not measured yet. A model runs this way only if its wide forward
gives vmap's outputs and BatchNorm statistics on a tiny batch (:func:`groupable`); any
other model keeps vmap.
"""

from __future__ import annotations

import copy
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from graftune.models import create_model
from graftune.models.resnet_cifar import BasicBlock


class GroupedLinear(nn.Module):
    """K Linears over the K blocks of a wide [B, K*in] input, as one batched matmul; its
    weight and bias are the stacked [K, out, in] and [K, out] themselves."""

    def __init__(self, linear: nn.Linear, k: int):
        super().__init__()
        self.k = k
        shape = (k, linear.out_features, linear.in_features)
        self.weight = nn.Parameter(torch.empty(shape, device="meta"))
        bias = linear.bias is not None
        self.bias = nn.Parameter(torch.empty(shape[:2], device="meta")) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("bki,koi->bko", x.unflatten(1, (self.k, -1)), self.weight)
        return (out if self.bias is None else out + self.bias).flatten(1)


def _grouped_shortcut(block: BasicBlock, k: int, x: torch.Tensor) -> torch.Tensor:
    """A CIFAR ResNet block's option-A shortcut, zero-padding each network's channels."""
    if not block.downsample:
        return x
    x = x[:, :, :: block.stride, :: block.stride]
    return F.pad(x.unflatten(1, (k, -1)), block.pad).flatten(1, 2)


def _wide_module(child: nn.Module, k: int) -> nn.Module | None:
    if type(child) is nn.Conv2d:
        return nn.Conv2d(
            k * child.in_channels,
            k * child.out_channels,
            child.kernel_size,
            child.stride,
            child.padding,
            child.dilation,
            groups=k * child.groups,
            bias=child.bias is not None,
            padding_mode=child.padding_mode,
            device="meta",
        )
    if type(child) is nn.BatchNorm2d:
        features, stats = k * child.num_features, child.track_running_stats
        return nn.BatchNorm2d(features, child.eps, child.momentum, child.affine, stats, "meta")
    if type(child) is nn.Linear:
        return GroupedLinear(child, k)
    return None


def grouped_network(base: nn.Module, k: int) -> nn.Module | None:
    """A meta copy of ``base`` that runs K networks as one wide network, with the base's
    state keys; None if ``base`` holds state in a module this layout does not know. Modules
    without state run unchanged; one that mixes channels (a channel shuffle) is caught by
    :func:`computes_like_vmap`, not here."""
    wide = copy.deepcopy(base).to("meta")
    for module in list(wide.modules()):
        for name, child in list(module.named_children()):
            replacement = _wide_module(child, k)
            if replacement is not None:
                setattr(module, name, replacement)
            elif [*child.parameters(recurse=False), *child.buffers(recurse=False)]:
                return None  # state this layout cannot stack (GroupNorm, Conv1d, ...)
        if isinstance(module, BasicBlock):  # in __dict__: shadows the method, adds no state
            module.__dict__["shortcut"] = partial(_grouped_shortcut, module, k)
    return wide


def stacked_keys(wide: nn.Module) -> frozenset[str]:
    """The keys whose stacked [K, ...] tensors the wide network takes as they are: a
    GroupedLinear's weight and bias."""
    return frozenset(
        f"{name}.{key}"
        for name, module in wide.named_modules()
        if isinstance(module, GroupedLinear)
        for key in ("weight", "bias")
    )


class GroupedForward:
    """The fused trainer's three forwards (train, eval, teacher) in the wide layout; each
    returns [K, B, classes] like the vmapped ones. ``channels_last``: NHWC activations."""

    def __init__(self, wide: nn.Module, k: int, channels_last: bool = False):
        self.k, self.channels_last = k, channels_last
        self.train_net = wide.train()
        self.eval_net = copy.deepcopy(wide).eval()
        self.keep = stacked_keys(wide)  # the same names in both nets

    def _views(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Stacked tensors as the wide network's: [K, n, ...] -> [K*n, ...], except those in
        ``keep`` and BatchNorm's num_batches_tracked ([K])."""
        keep = self.keep
        return {k: v if k in keep or v.dim() == 1 else v.flatten(0, 1) for k, v in tensors.items()}

    def _run(self, net: nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = functional_call(net, self._views(tensors), (x,))
        return out.unflatten(1, (self.k, -1)).transpose(0, 1)

    def train(self, params, buffers, x: torch.Tensor) -> torch.Tensor:
        """Network j on its own batch x[j] (x: [K, B, C, H, W])."""
        return self._run(self.train_net, {**params, **buffers}, x.transpose(0, 1).flatten(1, 2))

    def eval(self, params, buffers, x: torch.Tensor) -> torch.Tensor:
        """Every network on the same batch x ([B, C, H, W])."""
        return self._run(self.eval_net, {**params, **buffers}, x.repeat(1, self.k, 1, 1))

    def teacher(self, tensors, x: torch.Tensor) -> torch.Tensor:
        """Frozen eval-mode networks, network j on x[j]."""
        return self._run(self.eval_net, tensors, x.transpose(0, 1).flatten(1, 2))


def vmapped(base: nn.Module, in_dims=0):
    """The other fused forward, and the reference for this one: ``base`` (a meta module)
    over stacked parameters and buffers with torch.func.vmap."""

    def forward(params, buffers, x):
        return functional_call(base, (params, buffers), (x,))

    return vmap(forward, in_dims=in_dims)


@cache
def fusable(model_name: str, num_classes: int = 10, image_size: int = 32) -> str:
    """Why the model cannot be trained fused ('' if it can): one tiny vmapped train step
    on the CPU (vmap runs every fused model, or is what the wide layout is checked against),
    once per process."""
    try:
        models = [create_model(model_name, num_classes=num_classes) for _ in range(2)]
        base = copy.deepcopy(models[0]).to("meta").train()
        params, buffers = stack_module_state(models)
        x = torch.zeros(2, 2, 3, image_size, image_size)
        vmapped(base)(params, buffers, x).sum().backward()
    except Exception as error:  # any op without a batching rule shows up here
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return ""


@cache
def groupable(model_name: str, num_classes: int = 10, image_size: int = 32) -> bool:
    """Whether the wide layout computes what vmap computes for this registered model."""
    models = [create_model(model_name, num_classes=num_classes) for _ in range(2)]
    return computes_like_vmap(models, image_size)


def computes_like_vmap(models: list[nn.Module], image_size: int = 32) -> bool:
    """Two different networks of one architecture on two different tiny batches, in train
    mode on the CPU: do the wide layout's outputs and BatchNorm statistics equal vmap's?"""
    base = copy.deepcopy(models[0]).to("meta").train()
    wide = grouped_network(base, len(models))
    if wide is None:
        return False
    params, buffers = stack_module_state(models)
    shape = (len(models), 4, 3, image_size, image_size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vmap_buffers = {k: v.clone() for k, v in buffers.items()}
        try:  # a model vmap cannot run is not fused at all (fusable says why)
            expected = vmapped(base)(params, vmap_buffers, x)
            got = GroupedForward(wide, len(models)).train(params, buffers, x)
        except RuntimeError:  # or a channel-mixing op the wide layout cannot express
            return False
    same = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    return same and all(
        torch.allclose(buffers[k].float(), vmap_buffers[k].float(), rtol=1e-4, atol=1e-6)
        for k in buffers
    )
