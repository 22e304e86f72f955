"""Model zoo: importing this package registers every architecture by name."""

from . import mobilenetv2, resnet_cifar, tiny, torchvision_models, vgg  # noqa: F401  (registers)
from .registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
