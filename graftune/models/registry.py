"""Name -> constructor registry, so configs and the CLI can pick a model by a plain string."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import TypeVar, overload

from torch import nn

ModelFn = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFn)

_MODELS: dict[str, ModelFn] = {}


@overload
def register_model(fn: F) -> F: ...
@overload
def register_model(fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...


def register_model(fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Register a constructor under its function name, or under ``name`` if given.

    Use bare (``@register_model``) or with a name (``@register_model(name="resnet18")``),
    the latter when the natural name would shadow an import in the defining module.
    """

    def add(f: F) -> F:
        key = name or f.__name__
        # A silent overwrite would make which model you get depend on import order.
        if key in _MODELS and _MODELS[key] is not f:
            raise ValueError(f"model name {key!r} is already registered; pick another name")
        _MODELS[key] = f
        return f

    return add(fn) if fn is not None else add


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _MODELS


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with a ``num_classes``-way classifier."""
    if name not in _MODELS:
        hint = difflib.get_close_matches(str(name), _MODELS, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(
            f"unknown model {name!r}{did_you_mean}; choose from: {', '.join(list_models())}"
        )
    # bool is an int subclass, but num_classes=True is surely a mistake.
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    fn = _MODELS[name]
    _check_kwargs(name, fn, kwargs)
    return fn(num_classes=num_classes, **kwargs)


def _check_kwargs(name: str, fn: ModelFn, kwargs: dict) -> None:
    # Catch typos here with a clear message rather than a TypeError from deep inside a builder.
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = sorted(set(params) - {"num_classes"})
        raise ValueError(
            f"model {name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'only num_classes'}"
        )
