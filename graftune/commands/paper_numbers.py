"""The paper's numbers that ``graftune.reproduce`` prints beside its own: top-1 accuracy (%)
from the supplement of Meng et al., "Filter Grafting for Deep Neural Networks" (CVPR 2020),
and, for ImageNet, from the README of the authors' code. Data only; None where the source has
no value."""

MODELS = {
    "resnet32": "ResNet32",
    "resnet56": "ResNet56",
    "resnet110": "ResNet110",
    "mobilenetv2": "MobileNetV2",
    "resnet18": "ResNet18",
    "resnet34": "ResNet34",
    "resnet50": "ResNet50",
}

# ImageNet, the authors' README: (one network, two grafted networks) top-1 on the validation
# set, torchvision's ResNets. Their baseline script decays the lr x0.1 every 30 of 90 epochs;
# their grafting script anneals it by a cosine every step. (Top-5: 88.87 -> 90.01,
# 90.91 -> 92.05, 92.81 -> 93.34; graftune measures top-1 only.)
IMAGENET = {
    "ResNet18": (69.15, 71.19),
    "ResNet34": (72.60, 74.58),
    "ResNet50": (75.92, 76.76),
}

# Table 1: IoU of the invalid-filter positions of two independently trained networks, at
# conv layers 5, 10 and 15.
INVALID_IOU = {"ResNet32": (0.00, 0.00, 0.20), "MobileNetV2": (0.05, 0.14, 0.17)}

# Tables 2-4: (model, dataset) -> (the variant, layer-level adaptive grafting with Eq. 6).
FILTER_VS_LAYER = {  # Table 2: filter level, layer level
    ("ResNet32", "cifar10"): (93.49, 93.94),
    ("ResNet32", "cifar100"): (70.79, 71.28),
    ("ResNet56", "cifar10"): (94.33, 94.73),
    ("ResNet56", "cifar100"): (72.29, 72.83),
    ("ResNet110", "cifar10"): (94.09, 94.96),
    ("ResNet110", "cifar100"): (74.24, 75.27),
    ("MobileNetV2", "cifar10"): (None, 94.20),
    ("MobileNetV2", "cifar100"): (72.70, 74.15),
}
EQ5_VS_EQ6 = {  # Table 3: Eq. 5, Eq. 6
    ("ResNet32", "cifar10"): (93.89, 93.94),
    ("ResNet32", "cifar100"): (70.95, 71.28),
    ("ResNet56", "cifar10"): (94.40, 94.73),
    ("ResNet56", "cifar100"): (72.03, 72.83),
    ("ResNet110", "cifar10"): (94.48, 94.96),
    ("ResNet110", "cifar100"): (74.34, 75.27),
    ("MobileNetV2", "cifar10"): (93.41, 94.20),
    ("MobileNetV2", "cifar100"): (72.86, 74.15),
}
FIXED_VS_ADAPTIVE = {  # Table 4: fixed weighting, adaptive weighting
    ("ResNet32", "cifar10"): (93.22, 93.94),
    ("ResNet32", "cifar100"): (70.70, 71.28),
    ("ResNet56", "cifar10"): (94.54, 94.73),
    ("ResNet56", "cifar100"): (72.25, 72.83),
    ("ResNet110", "cifar10"): (94.21, 94.96),
    ("ResNet110", "cifar100"): (73.88, 75.27),
    ("MobileNetV2", "cifar10"): (93.48, 94.20),
    ("MobileNetV2", "cifar100"): (73.52, 74.15),
}

# Table 5 (MobileNetV2): (A, c, CIFAR-10 %, CIFAR-100 %)
A_AND_C = [
    (0.4, 1, 92.42, 71.44),
    (0.4, 5, 92.76, 72.69),
    (0.4, 10, 93.31, 73.26),
    (0.4, 50, 93.24, 73.05),
    (0.4, 500, 92.79, 72.38),
    (0.0, 100, 93.4, 72.55),
    (0.2, 100, 93.61, 72.9),
    (0.4, 100, 93.46, 73.13),
    (0.6, 100, 92.6, 72.68),
    (0.8, 100, 93.03, 71.8),
]
