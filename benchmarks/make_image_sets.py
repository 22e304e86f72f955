"""Build the image sets that the streaming benchmarks read: JPEGs of mixed sizes, as a folder
or a zip, in the layouts graftune reads. Both are seeded, so a rebuild gives the same files.

cifar-mixed: a copy of a CIFAR-10 folder or zip (train/<class>/, test/<class>/) with every
image resized to a random size between --sizes MIN MAX (aspect ratio 3:4 to 4:3), so a
network sees the same pictures at other scales; --original keeps the size (the same subset,
untouched), for the in-memory path at the same settings.

    python benchmarks/make_image_sets.py cifar-mixed PATH/cifar10-jpeg.zip \\
        OUT/cifar10-mixed.zip --subset 10000

generated: N random JPEGs in ImageNet's layout (train/<class>/, val/<class>/), sizes drawn
from --sizes (default 200 to 500 pixels a side, as most ImageNet photos), content with detail
at several scales so that it does not compress to nothing as flat colour would: a smooth
colour field under noise at two scales, about 0.65 bytes a pixel at quality 90. Noise tiles
are drawn once and cropped at random places (about 2 ms an image here), so 200,000 images
take minutes, not hours.

    python benchmarks/make_image_sets.py generated OUT/gen-2k --train 2000 --val 200
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

QUALITY = 90  # what most photo pipelines save at; ImageNet's JPEGs are mostly 75-95
SUFFIXES = (".jpg", ".jpeg", ".png")


class Writer:
    """Files into a folder, or into a zip when the output ends in .zip (stored: JPEG data
    does not deflate, and stored members are what a reader can seek into cheaply)."""

    def __init__(self, output: str):
        self.path = Path(output)
        if self.path.exists():
            sys.exit(f"make_image_sets: {output} exists; remove it or pick another name")
        self.zip = None
        if self.path.suffix.lower() == ".zip":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.zip = zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED)
        self.count = 0

    def write(self, name: str, data: bytes) -> None:
        if self.zip is not None:
            self.zip.writestr(name, data)
        else:
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self.count += 1

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def random_size(rng: np.random.Generator, low: int, high: int) -> tuple[int, int]:
    """A side drawn uniformly from [low, high] and an aspect ratio log-uniform in [3/4, 4/3]
    (most photos'), both sides kept within [low, high]."""
    side = rng.uniform(low, high)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    width, height = side * math.sqrt(ratio), side / math.sqrt(ratio)
    return int(np.clip(round(width), low, high)), int(np.clip(round(height), low, high))


def source_members(source: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every image under a folder or in a zip, in sorted order."""
    path = Path(source)
    if path.is_file():
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith(SUFFIXES))
            for name in names:
                yield name, archive.read(name)
    else:
        for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES):
            yield file.relative_to(path).as_posix(), file.read_bytes()


def pick(names: list[str], size: int, seed: int) -> set[str]:
    """A fixed random subset of ``size`` names (all of them when size is 0)."""
    if size <= 0 or size >= len(names):
        return set(names)
    return {names[i] for i in np.random.default_rng(seed).choice(len(names), size, False)}


def cifar_mixed(args: argparse.Namespace) -> int:
    members = dict(source_members(args.source))
    train = sorted(n for n in members if "train/" in n)
    test = sorted(n for n in members if "test/" in n)
    keep = pick(train, args.subset, seed=0) | pick(test, args.test_subset, seed=1)
    rng = np.random.default_rng(args.seed)
    writer = Writer(args.output)
    for name in sorted(keep):
        size = random_size(rng, *args.sizes)  # drawn for every image: --original keeps the
        data = members[name]  # same stream, so a rebuild with it keeps the same subset
        if not args.original:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            data = jpeg(image.resize(size, Image.BICUBIC))
        writer.write(name, data)
    writer.close()
    print(f"{writer.count} images ({len(keep & set(train))} train) -> {args.output}")
    return 0


def noise_tiles(rng: np.random.Generator, count: int = 16, side: int = 512) -> list[Image.Image]:
    """RGB noise tiles centred on 128: fine grain plus a coarser layer, like texture (from
    numpy's generator, not Pillow's effect_noise, which draws from C's unseeded rand())."""
    tiles = []
    for _ in range(count):
        sigma = rng.uniform(20, 30)
        fine = rng.normal(0, sigma, (side, side, 3))
        coarse = rng.normal(0, 2 * sigma, (side // 4, side // 4, 3))
        coarse_image = Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8))
        coarse = np.asarray(coarse_image.resize((side, side), Image.BILINEAR), np.float64) - 128
        tiles.append(Image.fromarray(np.clip(fine + coarse + 128, 0, 255).astype(np.uint8)))
    return tiles


def photo_like(rng: np.random.Generator, tiles: list[Image.Image], size: tuple[int, int]):
    """A smooth random colour field (a few blobs of colour) under a random crop of a tile."""
    width, height = size
    colours = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    base = Image.fromarray(colours).resize(size, Image.BICUBIC)
    tile = tiles[rng.integers(len(tiles))]
    x = int(rng.integers(0, tile.width - width + 1))
    y = int(rng.integers(0, tile.height - height + 1))
    image = ImageChops.add(base, tile.crop((x, y, x + width, y + height)), 1.0, -128)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def generated(args: argparse.Namespace) -> int:
    low, high = args.sizes
    if high > 512:
        sys.exit("make_image_sets: --sizes at most 512 (the noise tiles' side)")
    rng = np.random.default_rng(args.seed)
    tiles = noise_tiles(rng)
    writer = Writer(args.output)
    bytes_total = pixels = 0
    for split, count in (("train", args.train), ("val", args.val)):
        for i in range(count):
            label = i % args.classes  # balanced classes, as ImageNet's are (nearly)
            size = random_size(rng, low, high)
            data = jpeg(photo_like(rng, tiles, size))
            writer.write(f"{split}/class{label:04d}/{split}_{i:07d}.jpg", data)
            bytes_total, pixels = bytes_total + len(data), pixels + size[0] * size[1]
    writer.close()
    print(
        f"{writer.count} images, {bytes_total / 2**20:.1f} MiB, "
        f"{bytes_total / max(pixels, 1):.2f} bytes a pixel -> {args.output}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mixed = commands.add_parser("cifar-mixed", help="a mixed-size copy of a CIFAR folder or zip")
    mixed.add_argument("source", help="folder or zip with train/<class>/ and test/<class>/")
    mixed.add_argument("output", help="a folder, or a path ending in .zip")
    mixed.add_argument("--sizes", type=int, nargs=2, default=(40, 160), metavar=("MIN", "MAX"))
    mixed.add_argument("--subset", type=int, default=0, help="train images kept; 0 = all")
    mixed.add_argument("--test-subset", type=int, default=0, help="test images kept; 0 = all")
    mixed.add_argument("--original", action="store_true", help="keep every image's own size")
    mixed.add_argument("--seed", type=int, default=0)
    mixed.set_defaults(run=cifar_mixed)
    gen = commands.add_parser("generated", help="random photo-like JPEGs in ImageNet's layout")
    gen.add_argument("output", help="a folder, or a path ending in .zip")
    gen.add_argument("--train", type=int, default=2000, help="train images")
    gen.add_argument("--val", type=int, default=200, help="val images")
    gen.add_argument("--classes", type=int, default=10)
    gen.add_argument("--sizes", type=int, nargs=2, default=(200, 500), metavar=("MIN", "MAX"))
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(run=generated)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
