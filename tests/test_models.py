"""Model registry: every registered model builds, runs, traces with fx, and has sane sizes."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from graftune.models import create_model, is_model, list_models, register_model, registry

IMAGENET = {"resnet18", "resnet34", "resnet50", "mobilenet_v2_imagenet"}


def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = 64 if name in IMAGENET else 32  # ImageNet layouts downsample 32x; 64 keeps 2x2
    return torch.randn(batch, 3, size, size)


def test_registry_lists_expected_models():
    names = list_models()
    assert names == sorted(names)
    for name in [
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet110",
        "resnet20_leaky",
        "resnet110_leaky",
        "mobilenetv2",
        "vgg16_bn",
        *IMAGENET,
    ]:
        assert is_model(name), name
    assert not is_model("nope")


def _check_bn_follows_conv(model: nn.Module, graph: fx.Graph) -> None:
    # Graft units pair a conv with the BN reading its output; an op in between breaks that.
    modules = dict(model.named_modules())
    seen = 0
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], _BatchNorm):
            src = node.args[0]
            assert src.op == "call_module" and isinstance(modules[src.target], nn.Conv2d)
            assert len(src.users) == 1, f"{src.target} output also used outside {node.target}"
            seen += 1
    assert seen == sum(isinstance(m, _BatchNorm) for m in model.modules())


# One test per model and head size: building and running models dominates the file's time.
@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_classes", [10, 100])
def test_forward_and_fx_trace(name: str, num_classes: int):
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes)
    x = _input(name)
    out = model(x)  # train mode, as grafting uses it
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()

    traced = fx.symbolic_trace(model)
    _check_bn_follows_conv(model, traced.graph)
    model.eval()
    traced.eval()
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


# Exact counts for 10 classes (bias-free convs, option-A shortcuts); the paper rounds them
# to 0.27M / 0.46M / 0.85M / 1.7M.
RESNET_PARAMS = {
    "resnet20": (269_722, 0.27e6),
    "resnet32": (464_154, 0.46e6),
    "resnet56": (853_018, 0.85e6),
    "resnet110": (1_727_962, 1.7e6),
}


@pytest.mark.parametrize("name", sorted(RESNET_PARAMS))
@pytest.mark.parametrize("suffix", ["", "_leaky"])
def test_cifar_resnet_parameter_counts(name: str, suffix: str):
    exact, paper = RESNET_PARAMS[name]
    count = sum(p.numel() for p in create_model(name + suffix).parameters())
    assert count == exact
    assert abs(count - exact) / exact < 0.01
    assert f"{count / 1e6:.2g}" == f"{paper / 1e6:.2g}"  # matches the paper's rounding


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet56", "resnet110"])
def test_leaky_variants_use_leaky_relu_only(name: str):
    leaky = [type(m) for m in create_model(name + "_leaky").modules()]
    assert nn.LeakyReLU in leaky and nn.ReLU not in leaky
    plain = [type(m) for m in create_model(name).modules()]
    assert nn.ReLU in plain and nn.LeakyReLU not in plain
    slopes = {
        m.negative_slope
        for m in create_model(name + "_leaky").modules()
        if isinstance(m, nn.LeakyReLU)
    }
    assert slopes == {0.1}


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unknown model 'nope'") as info:
        create_model("nope")
    assert "resnet20" in str(info.value) and "vgg16_bn" in str(info.value)


def test_close_name_gets_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'resnet20'"):
        create_model("resnt20")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_bad_num_classes(bad):
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_model("resnet20", num_classes=bad)


def test_unknown_kwarg_is_a_value_error():
    with pytest.raises(ValueError, match="unknown argument"):
        create_model("resnet20", widht=2)


def test_torchvision_models_refuse_pretrained_weights():
    with pytest.raises(ValueError, match="pretrained weights are not supported"):
        create_model("resnet18", weights="IMAGENET1K_V1")


def test_register_model_by_name_and_duplicate(monkeypatch):
    # A private copy of the registry so the test model does not leak into other tests.
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))

    @register_model(name="_test_tiny")
    def tiny(num_classes: int = 10) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert is_model("_test_tiny")
    assert create_model("_test_tiny", num_classes=3).out_features == 3
    with pytest.raises(ValueError, match="already registered"):

        @register_model(name="_test_tiny")
        def other(num_classes: int = 10) -> nn.Module:
            return nn.Linear(4, num_classes)
