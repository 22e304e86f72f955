"""Random resized crops and flips of a whole decoded batch, different for every network.

One decoded batch serves all the networks of a fused worker: each draws its own
RandomResizedCrop boxes (torchvision's rule: ``--crop-scale``, 8% by default, to 100% of the
image's area, aspect ratio 3/4 to 4/3, ten tries, then the centred whole image) and flips,
and all K x B crops are resampled in one ``roi_align`` call on the training device, with no
loop over images.

The boxes are drawn in each image's own pixels (its width and height from the decoder), then
mapped onto the square canvas the loader squeezed it to, so the crops have the aspect
ratios torchvision would give on the original image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.ops import roi_align

SCALE = 0.08  # the smallest share of the area, as torchvision's; --crop-scale sets it
RATIO = (3 / 4, 4 / 3)
TRIES = 10


def crop_boxes(
    sizes: torch.Tensor, generator: torch.Generator, scale: float = SCALE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image (sizes: [B, 2] width, height): a RandomResizedCrop box (x1, y1, x2, y2) in
    its own pixels, keeping ``scale`` to all of its area, and whether to flip it."""
    b = len(sizes)
    width, height = sizes[:, 0:1], sizes[:, 1:2]
    area = width * height * torch.empty(b, TRIES).uniform_(scale, 1.0, generator=generator)
    log_ratio = torch.empty(b, TRIES).uniform_(
        math.log(RATIO[0]), math.log(RATIO[1]), generator=generator
    )
    ratio = log_ratio.exp()
    w, h = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.float().argmax(1, keepdim=True)  # the first try that fits, as torchvision
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # None fits: the whole image, its aspect ratio clamped to the range, centred.
    width, height = width.squeeze(1), height.squeeze(1)
    whole = width / height
    fallback_w = torch.where(whole > RATIO[1], (height * RATIO[1]).round(), width)
    fallback_h = torch.where(whole < RATIO[0], (width / RATIO[0]).round(), height)
    any_fit = fits.any(1)
    w, h = torch.where(any_fit, w, fallback_w), torch.where(any_fit, h, fallback_h)
    u = torch.rand(b, 2, generator=generator)
    x1 = torch.where(any_fit, (u[:, 0] * (width - w + 1)).floor(), ((width - w) / 2).round())
    y1 = torch.where(any_fit, (u[:, 1] * (height - h + 1)).floor(), ((height - h) / 2).round())
    flips = torch.rand(b, generator=generator) < 0.5
    return torch.stack([x1, y1, x1 + w, y1 + h], 1), flips


def resized_crops(
    canvas: torch.Tensor,
    sizes: torch.Tensor,
    generators: Sequence[torch.Generator],
    size: int,
    scale: float = SCALE,
) -> torch.Tensor:
    """[K, B, 3, size, size] float pixels (0-255) of K networks' crops of one batch.

    Args:
        canvas: uint8 [B, 3, C, C], every image squeezed whole onto the C x C canvas.
        sizes: [B, 2] each image's original width and height (CPU).
        generators: one per network: its crops and flips (drawn on the CPU, so a seed gives
            the same crops on any device).
        size: the side of the crops.
        scale: the smallest share of an image's area a crop keeps.
    """
    b, side = len(canvas), canvas.shape[-1]
    drawn = [crop_boxes(sizes, g, scale) for g in generators]
    boxes = torch.cat([box for box, _ in drawn])  # [K*B, 4], original pixels
    scale = (side / sizes).repeat(len(generators), 1).repeat(1, 2)  # x, y, x, y onto the canvas
    index = torch.arange(b, dtype=boxes.dtype).repeat(len(generators))[:, None]
    rois = torch.cat([index, boxes * scale], 1).to(canvas.device)
    # aligned=True: pixel centres at +0.5, as PIL's and torchvision's resize; sampling_ratio
    # -1 averages ceil(box / size) samples per output pixel, so shrinking crops do not alias.
    out = roi_align(canvas.float(), rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    flips = torch.cat([flip for _, flip in drawn]).to(canvas.device)
    out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out.view(len(generators), b, *out.shape[1:])
