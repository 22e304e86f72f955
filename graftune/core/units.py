"""Graft units: each Conv/Linear layer together with the BatchNorm that consumes its output.

One alpha is computed per unit from its conv/linear weight and applied to every float tensor
of the unit. Units are found by tracing the module graph with torch.fx, so a BatchNorm is
paired with the layer whose output it actually reads, whatever the parameter names are.
Float tensors that belong to no such pair (a BatchNorm after a concat, a LayerNorm) become
units of their own, so every float parameter and buffer of a model lies in exactly one unit.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

WEIGHTED = (_ConvNd, nn.Linear)


@dataclass(frozen=True)
class GraftUnit:
    name: str  # module name of the weight-bearing layer, e.g. "layer1.0.conv1"
    weight: str  # state-dict key whose entropy decides alpha
    keys: tuple[str, ...]  # every float state-dict key mixed with that alpha (weight first)
    kind: str = "conv"  # conv | linear | norm (a normalisation layer with no producer)


def _float_keys(module: nn.Module, prefix: str) -> list[str]:
    tensors = list(module.named_parameters(recurse=False)) + list(
        module.named_buffers(recurse=False)
    )
    return [f"{prefix}.{n}" if prefix else n for n, t in tensors if t.is_floating_point()]


def _producer_to_norm(model: nn.Module) -> dict[str, str]:
    """Map a Conv/Linear module name to the BatchNorm module that directly reads its output."""
    modules = dict(model.named_modules())
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as error:  # a model fx cannot trace: fall back to module order
        warnings.warn(f"graft units from module order, fx tracing failed: {error}", stacklevel=3)
        return _pairs_by_order(modules)
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], WEIGHTED):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            if isinstance(modules[users[0].target], _BatchNorm):
                pairs[node.target] = users[0].target
    return pairs


def _pairs_by_order(modules: dict[str, nn.Module]) -> dict[str, str]:
    pairs, last = {}, None
    for name, module in modules.items():
        if isinstance(module, WEIGHTED):
            last = name
        elif isinstance(module, _BatchNorm) and last is not None:
            producer = modules[last]
            channels = getattr(producer, "out_channels", getattr(producer, "out_features", None))
            if channels == module.num_features:
                pairs[last] = name
            last = None
    return pairs


def find_graft_units(model: nn.Module) -> list[GraftUnit]:
    """All graft units of a model, in module order.

    Args:
        model: any nn.Module; fx-traceable models get exact producer/BatchNorm pairing.
    Returns:
        Units whose ``keys`` partition the model's floating-point state-dict entries.
    """
    pairs = _producer_to_norm(model)
    paired_norms = set(pairs.values())
    modules = dict(model.named_modules())
    units = []
    for name, module in modules.items():
        if name in paired_norms:
            continue
        own = _float_keys(module, name)
        if not own:
            continue
        if isinstance(module, WEIGHTED):
            keys = own + (_float_keys(modules[pairs[name]], pairs[name]) if name in pairs else [])
            kind = "linear" if isinstance(module, nn.Linear) else "conv"
        else:
            keys, kind = own, "norm"
        weight = f"{name}.weight" if f"{name}.weight" in keys else keys[0]
        keys = [weight] + [k for k in keys if k != weight]
        units.append(GraftUnit(name=name, weight=weight, keys=tuple(keys), kind=kind))
    return units


def unit_keys(units: list[GraftUnit]) -> list[str]:
    """Every state-dict key that travels in a graft snapshot."""
    return [key for unit in units for key in unit.keys]
