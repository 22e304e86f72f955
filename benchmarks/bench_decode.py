"""Decoding throughput per CPU core: JPEG file -> a 224 x 224 training crop
(RandomResizedCrop(224) + horizontal flip), batched, for every candidate decoder, side by
side in one process on the same files.

Candidates (the ones whose library is missing are reported as such, not left out silently):
  authors       torchvision ImageFolder + DataLoader with the authors' transforms
                (RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize): float batches
  pillow        Pillow decode, the crop resized with Image.resize(box=...), uint8 batches
  pillow-draft  the same, but the JPEG decoded at 1/2, 1/4 or 1/8 scale (Image.draft) when
                the crop still gets at least 224 pixels a side from it
  pillow-draft+tensor  the draft decode, cropped and resized as a uint8 tensor by
                transforms.v2's resized_crop (antialiased bilinear) instead of Pillow
  simplejpeg+tensor  libjpeg-turbo through simplejpeg, scaled by n/8 in the decoder
                (min_width / min_height) as with draft, then the tensor crop
  decode_jpeg   torchvision.io.decode_jpeg on the CPU (deprecated since torchvision 0.29),
                then the tensor crop
  torchcodec    torchcodec.decoders.decode_jpeg on the CPU, then the tensor crop

Every candidate draws its crops from torch's generator seeded alike, reads every file from
disk itself, runs in this process (DataLoader num_workers=0, torch on one thread), and
collates batches of --batch-size; the figure is images per second of this process's CPU
time, so other jobs on a shared machine cost wall time, not the figure. Candidates take
turns in every round, in a rotated order, and the median over rounds is reported.

    nice -n 10 python benchmarks/bench_decode.py DATA/gen-2k --images 500 --rounds 5
    nice -n 10 python benchmarks/bench_decode.py DATA/gen-2k --images 500 --rounds 5 --size 112
    nice -n 10 python benchmarks/bench_decode.py DATA/gen-2k --images 500 --rounds 5 --decode-only
    python benchmarks/bench_decode.py DATA/gen-2k --images 1000 --size 224 --count-scaled
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import datasets, transforms
from torchvision.transforms.v2 import functional as F

SIZE = 224
CROP = transforms.RandomResizedCrop(SIZE)  # its get_params: the same crops for everyone
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def crop_params(width: int, height: int) -> tuple[int, int, int, int, bool]:
    """top, left, height, width of a RandomResizedCrop and whether to flip, drawn from
    torch's generator in the order torchvision's transforms draw them."""
    shape_only = torch.empty((1, 1, 1), dtype=torch.uint8).expand(3, height, width)
    top, left, h, w = CROP.get_params(shape_only, CROP.scale, CROP.ratio)
    return top, left, h, w, bool(torch.rand(1) < 0.5)


def _pil_crop(image: Image.Image, box: tuple[float, ...], flip: bool) -> torch.Tensor:
    image = image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR, box=box)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def pillow(path: Path) -> torch.Tensor:
    image = Image.open(path)
    top, left, h, w, flip = crop_params(*image.size)
    return _pil_crop(image, (left, top, left + w, top + h), flip)


def _draft(image: Image.Image, crop: tuple[int, int, int, int]) -> tuple[float, float]:
    """Ask libjpeg for the smallest decode in which the crop still has SIZE pixels a side
    (it scales by 1/2, 1/4 or 1/8 inside the IDCT, skipping most of the work); returns the
    scale it chose, per axis."""
    width, height = image.size
    _, _, h, w = crop
    image.draft("RGB", (math.ceil(width * SIZE / w), math.ceil(height * SIZE / h)))
    return image.size[0] / width, image.size[1] / height


def pillow_draft(path: Path) -> torch.Tensor:
    image = Image.open(path)
    top, left, h, w, flip = crop_params(*image.size)
    sx, sy = _draft(image, (top, left, h, w))
    return _pil_crop(image, (left * sx, top * sy, (left + w) * sx, (top + h) * sy), flip)


def _tensor_crop(image: torch.Tensor, flip: bool, params, scale=(1.0, 1.0)) -> torch.Tensor:
    """The crop of a uint8 C x H x W image resized to SIZE (bilinear, antialiased), flipped;
    ``scale``: how much smaller than the original the image was decoded, per axis."""
    top, left, h, w = params
    sx, sy = scale
    top, left, h, w = round(top * sy), round(left * sx), round(h * sy), round(w * sx)
    out = F.resized_crop(image, top, left, h, w, [SIZE, SIZE], antialias=True)
    return F.horizontal_flip(out) if flip else out


def pillow_draft_tensor(path: Path) -> torch.Tensor:
    image = Image.open(path)
    top, left, h, w, flip = crop_params(*image.size)
    scale = _draft(image, (top, left, h, w))
    array = np.asarray(image.convert("RGB"))
    return _tensor_crop(torch.from_numpy(array).permute(2, 0, 1), flip, (top, left, h, w), scale)


def simplejpeg_tensor(path: Path) -> torch.Tensor:
    import simplejpeg

    data = path.read_bytes()
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    top, left, h, w, flip = crop_params(width, height)
    array = simplejpeg.decode_jpeg(  # scaled by n/8 in the IDCT, as with draft
        data,
        colorspace="RGB",
        min_width=math.ceil(width * SIZE / w),
        min_height=math.ceil(height * SIZE / h),
    )
    scale = (array.shape[1] / width, array.shape[0] / height)
    image = torch.from_numpy(array).permute(2, 0, 1)  # a view: resized_crop reads it as is
    return _tensor_crop(image, flip, (top, left, h, w), scale)


def torchvision_decode(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    image = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    top, left, h, w, flip = crop_params(image.shape[2], image.shape[1])
    return _tensor_crop(image, flip, (top, left, h, w))


def torchcodec_decode(path: Path) -> torch.Tensor:
    from torchcodec.decoders import decode_jpeg

    image = decode_jpeg(path.read_bytes(), mode="RGB")
    top, left, h, w, flip = crop_params(image.shape[2], image.shape[1])
    return _tensor_crop(image, flip, (top, left, h, w))


def batches_of(decode: Callable[[Path], torch.Tensor], files: list[Path], batch: int) -> int:
    """Decode every file and collate batches of uint8 crops; returns the number of images."""
    count = 0
    for start in range(0, len(files), batch):
        stacked = torch.stack([decode(f) for f in files[start : start + batch]])
        assert stacked.shape[1:] == (3, SIZE, SIZE), stacked.shape
        count += len(stacked)
    return count


class Subset(torch.utils.data.Dataset):
    """The ImageFolder's first ``n`` samples, in order (as the other candidates read them)."""

    def __init__(self, folder: datasets.ImageFolder, n: int):
        self.folder, self.n = folder, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return self.folder[index]


def authors(root: Path, batch: int) -> Callable[[list[Path]], int]:
    """The authors' training loader, as their ImageNet script builds it, but in this
    process (num_workers=0) so its CPU time is counted here; not shuffled, so it reads the
    same files as the others."""
    folder = datasets.ImageFolder(
        str(root),
        transforms.Compose(
            [
                transforms.RandomResizedCrop(SIZE),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        ),
    )

    def run(files: list[Path]) -> int:
        subset = Subset(folder, len(files))
        total = 0
        for images, _ in torch.utils.data.DataLoader(subset, batch_size=batch, num_workers=0):
            assert images.shape[1:] == (3, SIZE, SIZE), images.shape
            total += len(images)
        return total

    return run


def candidates(root: Path, files: list[Path], batch: int) -> dict[str, Callable | str]:
    """Each candidate as a callable of the files to read (the first ones of the folder's
    order), or the reason it cannot run here."""
    found: dict[str, Callable | str] = {"authors": authors(root, batch)}
    plain = {
        "pillow": pillow,
        "pillow-draft": pillow_draft,
        "pillow-draft+tensor": pillow_draft_tensor,
        "simplejpeg+tensor": simplejpeg_tensor,
        "decode_jpeg": torchvision_decode,
        "torchcodec": torchcodec_decode,
    }
    for name, decode in plain.items():
        try:
            decode(files[0])
        except ImportError as error:
            found[name] = f"not installed ({error.name})"
            continue
        found[name] = lambda some, decode=decode: batches_of(decode, some, batch)
    return found


def decoders_only(files: list[Path]) -> dict[str, Callable | str]:
    """Decoding alone, from bytes already in memory, at full size, to an RGB array or
    tensor: what each library costs before any crop."""
    datas = [f.read_bytes() for f in files]

    def pil(data: bytes):
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    def simplejpeg_full(data: bytes):
        import simplejpeg

        return simplejpeg.decode_jpeg(data, colorspace="RGB")

    def tv(data: bytes):
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)

    def codec(data: bytes):
        from torchcodec.decoders import decode_jpeg

        return decode_jpeg(data, mode="RGB")

    found: dict[str, Callable | str] = {}
    plain = {"pillow": pil, "simplejpeg": simplejpeg_full, "decode_jpeg": tv, "torchcodec": codec}
    for name, decode in plain.items():
        try:
            decode(datas[0])
        except ImportError as error:
            found[name] = f"not installed ({error.name})"
            continue
        found[name] = lambda some, decode=decode: sum(
            decode(data) is not None for data in datas[: len(some)]
        )
    return found


def scaled_shares(files: list[Path]) -> dict[str, float]:
    """How many decodes Pillow's draft and simplejpeg make smaller than the file, with the
    crops the timed runs draw (seed 0): scaling can only save work where it happens."""
    import simplejpeg

    torch.manual_seed(0)
    draft = scaled = 0
    for path in files:
        image = Image.open(path)
        width, height = image.size
        top, left, h, w, _ = crop_params(width, height)
        draft += _draft(image, (top, left, h, w))[0] < 1
        array = simplejpeg.decode_jpeg(
            path.read_bytes(),
            min_width=math.ceil(width * SIZE / w),
            min_height=math.ceil(height * SIZE / h),
        )
        scaled += array.shape[1] < width
    return {"pillow-draft": draft / len(files), "simplejpeg": scaled / len(files)}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    out["torchvision"] = torchvision.__version__
    out["pillow"] = Image.__version__
    for module in ("simplejpeg", "torchcodec"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = "absent"
    return out


def main(argv: list[str] | None = None) -> int:
    global SIZE  # one crop size for the whole run; the decoders read it from here
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="a generated set: DATA/train/<class>/*.jpg")
    parser.add_argument("--images", type=int, default=500, help="images per candidate a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=SIZE, help="side of the crop")
    parser.add_argument("--decode-only", action="store_true", help="time the decoders alone")
    parser.add_argument(
        "--count-scaled", action="store_true", help="count the decodes that scaling shrinks"
    )
    parser.add_argument("--output", default="", help="jsonl; default results/decode-DATE")
    args = parser.parse_args(argv)
    SIZE = args.size
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torchvision.io's notice
    torch.set_num_threads(1)  # per core: a worker process decodes on one thread
    root = Path(args.data) / "train"
    folder = datasets.ImageFolder(str(root))  # the order all candidates read the files in
    files = [Path(p) for p, _ in folder.samples[: args.images]]
    today = datetime.date.today().isoformat()
    output = Path(args.output or Path(__file__).parent / "results" / f"decode-{today}.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.count_scaled:
        record = {"date": today, "data": Path(args.data).name, "images": len(files)}
        record |= {"size": SIZE, "scaled_share": scaled_shares(files)}
        with output.open("a") as out:
            out.write(json.dumps(record) + "\n")
        print(json.dumps(record))
        return 0
    runs = decoders_only(files) if args.decode_only else candidates(root, files, args.batch_size)
    runnable = [name for name, run in runs.items() if callable(run)]
    for name in runnable:  # imports, first allocations and the page cache: not timed
        runs[name](files[: args.batch_size])
    rates: dict[str, list[float]] = {name: [] for name in runnable}
    walls: dict[str, list[float]] = {name: [] for name in runnable}
    for round_ in range(args.rounds):
        shift = round_ % len(runnable)  # each candidate goes first in some round
        for name in runnable[shift:] + runnable[:shift]:
            torch.manual_seed(round_)  # the same crops and flips for every candidate
            cpu, wall = time.process_time(), time.perf_counter()
            count = runs[name](files)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            rates[name].append(count / cpu)
            walls[name].append(count / wall)
            print(f"round {round_} {name:20s} {count / cpu:7.0f} img/CPU-s", flush=True)
    common = {"date": today, "data": Path(args.data).name, "images": len(files)}
    common |= {"size": SIZE, "rounds": args.rounds, "batch_size": args.batch_size}
    common["decode_only"] = args.decode_only
    common["versions"] = versions()
    with output.open("a") as out:
        for name, run in runs.items():
            record = {**common, "candidate": name}
            if callable(run):
                record |= {
                    "img_per_cpu_s": rates[name],
                    "median_img_per_cpu_s": statistics.median(rates[name]),
                    "median_img_per_wall_s": statistics.median(walls[name]),
                }
            else:
                record["skipped"] = run
            out.write(json.dumps(record) + "\n")
    first = runnable[0]  # the authors' loader, or Pillow when timing decoders alone
    base = statistics.median(rates[first])
    print(f"\n| pipeline | median img per CPU-s | vs {first} |\n|---|---:|---:|")
    for name, run in runs.items():
        if callable(run):
            median = statistics.median(rates[name])
            print(f"| {name} | {median:,.0f} | {median / base:.2f}x |")
        else:
            print(f"| {name} | {run} | |")
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
