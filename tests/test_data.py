"""Loading: folders and zips (damaged, hostile ones too), cache, CIFAR, synthetic, subsets."""

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import build, encoded, good_members, png, png_claiming, zip_folder
from graftune.config import DataConfig
from graftune.data import DataError, decode, load_dataset

SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.zip"
CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test decodes into its own cache, never the user's."""
    monkeypatch.setenv("GRAFTUNE_CACHE", str(tmp_path / "cache"))


def pixel(cls: int, i: int) -> tuple[int, int, int]:
    return (40 * cls + 10, 5 * i, 100 + 7 * i)


# Deliberately not in sorted order, to check labels follow sorted class names.
LAYOUT = {"train": {"zebra": 3, "ant": 3}, "test": {"zebra": 2, "ant": 2}}


def make_folder(root: Path, layout=LAYOUT, size=(8, 8)) -> Path:
    for split, classes in layout.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                colour = pixel(sorted(classes).index(name), i)
                Image.new("RGB", size, colour).save(root / split / name / f"{i:04d}.png")
    return root


def folder_config(path: Path, **changes) -> DataConfig:
    return DataConfig(dataset="imagefolder", data_dir=str(path), **changes)


def test_zip_loads_with_sorted_classes(tmp_path):
    archive = zip_folder(make_folder(tmp_path / "src"), tmp_path / "tiny.zip")
    data = load_dataset(folder_config(archive))
    assert data.classes == ["ant", "zebra"] and data.num_classes == 2
    assert data.train_images.shape == (6, 3, 8, 8) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (4, 3, 8, 8)
    assert data.train_labels.dtype == np.int64
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.test_labels.tolist() == [0, 0, 1, 1]
    # PNG is lossless: pixel values and the file -> label mapping are exact.
    assert tuple(data.train_images[4, :, 0, 0]) == pixel(1, 1)
    assert tuple(data.test_images[1, :, 3, 3]) == pixel(0, 1)
    values = data.train_images.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    assert np.allclose(data.mean, values.mean(1)) and np.allclose(data.std, values.std(1))


def test_directory_equals_zip(tmp_path):
    folder = make_folder(tmp_path / "src")
    from_dir = load_dataset(folder_config(folder))
    from_zip = load_dataset(folder_config(zip_folder(folder, tmp_path / "tiny.zip")))
    assert from_dir.classes == from_zip.classes
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(from_dir, key), getattr(from_zip, key))


def test_zip_under_one_top_folder_and_jpeg(tmp_path):
    folder = tmp_path / "src"
    make_folder(folder / "cifar")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(folder / "cifar/train/ant/extra.jpg")
    data = load_dataset(folder_config(zip_folder(folder, tmp_path / "nested.zip")))
    assert data.classes == ["ant", "zebra"] and len(data.train_labels) == 7


def test_mismatched_test_classes(tmp_path):
    layout = {"train": {"ant": 2, "zebra": 2}, "test": {"ant": 1, "bee": 1}}
    with pytest.raises(DataError, match="different classes"):
        load_dataset(folder_config(make_folder(tmp_path / "src", layout)))


def test_odd_image_size_names_the_file(tmp_path):
    folder = make_folder(tmp_path / "src")
    Image.new("RGB", (9, 8)).save(folder / "train/zebra/0001.png")
    with pytest.raises(DataError, match=r"train/zebra/0001\.png.*one size.*--data-mode"):
        load_dataset(folder_config(folder, data_mode="memory"))
    assert load_dataset(folder_config(folder)).streamed  # auto streams mixed sizes


def test_missing_path_mentions_data_dir(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset(folder_config(tmp_path / "nowhere.zip"))


def test_second_load_comes_from_cache(tmp_path):
    archive = zip_folder(make_folder(tmp_path / "src"), tmp_path / "tiny.zip")
    first = load_dataset(folder_config(archive))
    caches = list((tmp_path / "cache").glob("imagefolder-*.npz"))
    assert len(caches) == 1 and not list((tmp_path / "cache").glob("*.tmp"))
    second = load_dataset(folder_config(archive))
    assert first.classes == second.classes
    assert np.array_equal(first.train_images, second.train_images)
    assert np.array_equal(first.test_labels, second.test_labels)
    caches[0].write_bytes(b"not an npz")  # a corrupt cache is rebuilt, not an error
    third = load_dataset(folder_config(archive))
    assert np.array_equal(first.train_images, third.train_images)
    assert np.load(caches[0])["train_images"].shape == (6, 3, 8, 8)


def test_cifar_without_download_points_at_data_dir(tmp_path):
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match="--data-dir") as info:
        load_dataset(cfg)
    assert "\n" not in str(info.value)


def test_cifar_name_on_a_folder_checks_the_class_count(tmp_path):
    archive = zip_folder(make_folder(tmp_path / "src"), tmp_path / "tiny.zip")
    with pytest.raises(DataError, match="2 classes, not the 10"):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(archive)))


@pytest.mark.skipif(not SHARED_ZIP.exists(), reason="shared CIFAR-10 zip not present")
def test_shared_cifar10_zip(monkeypatch):
    monkeypatch.undo()  # the real cache (GRAFTUNE_CACHE or ~/.cache): decode once, not per run
    data = load_dataset(DataConfig(dataset="cifar10", data_dir=str(SHARED_ZIP)))
    assert data.train_images.shape == (50000, 3, 32, 32)
    assert data.test_images.shape == (10000, 3, 32, 32)
    assert data.classes == CIFAR10_CLASSES  # torchvision's labels 0..9
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.allclose(data.mean, (0.4913, 0.4821, 0.4465), atol=0.01)


def test_subset_is_fixed():
    cfg = DataConfig(dataset="synthetic", synthetic_size=200, subset=50, test_subset=20)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert len(a.train_labels) == 50 and len(a.test_labels) == 20
    assert np.array_equal(a.train_images, b.train_images)
    assert np.array_equal(a.test_labels, b.test_labels)
    full = load_dataset(DataConfig(dataset="synthetic", synthetic_size=200))
    assert not np.array_equal(full.train_images[:50], a.train_images)
    assert a.mean != full.mean  # measured on the subset


def test_synthetic_is_deterministic():
    cfg = DataConfig(dataset="synthetic", synthetic_size=64, synthetic_classes=5)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert a.train_images.shape == (64, 3, 32, 32) and a.test_images.shape == (16, 3, 32, 32)
    assert a.num_classes == 5 and set(a.train_labels.tolist()) == set(range(5))
    assert np.array_equal(a.train_images, b.train_images)
    small = load_dataset(DataConfig(dataset="synthetic", synthetic_size=8, synthetic_classes=3))
    assert len(small.test_labels) == 6  # at least two test images per class


def test_synthetic_classes_are_separable():
    data = load_dataset(DataConfig(dataset="synthetic", synthetic_size=256))
    centroids = np.stack(
        [data.train_images[data.train_labels == k].mean(0) for k in range(10)]
    ).reshape(10, -1)
    test = data.test_images.reshape(len(data.test_images), -1).astype(np.float64)
    nearest = ((test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == data.test_labels).mean() > 0.9


# --- damaged and hostile folders and zips: one line naming the file and the problem ---


def refusal(path: Path, **changes) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(folder_config(path, **changes))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


both_kinds = pytest.mark.parametrize("kind", ["folder", "zip"])


@both_kinds
def test_nested_class_folder_is_refused(tmp_path, kind):
    members = good_members() | {"train/ant/more/x.png": png()}
    message = refusal(build(tmp_path, kind, members))  # the folder names the subfolder
    assert "'train/ant/more/" in message and "nested too deep" in message


@both_kinds
def test_image_outside_a_class_folder_is_refused(tmp_path, kind):
    members = good_members() | {"test/x.png": png()}
    assert "'test/x.png'" in refusal(build(tmp_path, kind, members))


@both_kinds
@pytest.mark.parametrize("extra", [{"train/cow/": None}, {"test/cow/notes.txt": b"moo"}])
def test_empty_class_folder_is_refused(tmp_path, kind, extra):
    message = refusal(build(tmp_path, kind, good_members() | extra))
    assert f"'{next(iter(extra)).rsplit('/', 1)[0]}/'" in message and "no images" in message


@both_kinds
def test_non_image_files_are_skipped_in_one_line(tmp_path, kind, caplog):
    junk = {
        "train/ant/notes.txt": b"x",
        "train/.DS_Store": b"x",
        "test/bee/._0.png": b"x",  # macOS resource forks look like images
        "__MACOSX/train/ant/._1.png": b"x",
    }
    path = build(tmp_path, kind, good_members() | junk)
    with caplog.at_level(logging.WARNING):
        data = load_dataset(folder_config(path))
    assert data.classes == ["ant", "bee"] and data.train_images.shape == (4, 3, 8, 8)
    (record,) = [r for r in caplog.records if "skipped" in r.getMessage()]
    skipped = 3 if kind == "folder" else 4  # a folder's files outside train/, test/ are not read
    assert f"skipped {skipped} non-image files in '{path}'" in record.getMessage()


@both_kinds
def test_a_split_of_only_non_image_files_is_one_line_that_names_them(tmp_path, kind, caplog):
    members = {n: d for n, d in good_members().items() if not n.startswith("train/")}
    junk = {"train/ant/notes.txt": b"x", "test/ant/readme.md": b"x"}  # only train/'s is named
    path = build(tmp_path, kind, members | junk)
    with caplog.at_level(logging.WARNING):
        message = refusal(path)
    assert "no images in train/<class>/" in message, message
    assert "(skipped as not images: train/ant/notes.txt)" in message, message  # not test/'s
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]  # no second line


@both_kinds
def test_image_file_over_the_limit_is_refused_before_reading(tmp_path, kind):
    members = good_members() | {"train/bee/big.png": png() + bytes(5000)}  # 5 KB of trailing junk
    message = refusal(build(tmp_path, kind, members), max_image_bytes=4096)
    assert "'train/bee/big.png'" in message and "over the 4 KiB limit" in message
    assert "--max-image-bytes" in message
    assert load_dataset(folder_config(build(tmp_path / "ok", kind, good_members())))


@both_kinds
def test_a_cache_decoded_under_a_looser_limit_is_not_reused(tmp_path, kind):
    members = good_members() | {"train/bee/big.png": png() + bytes(5000)}
    path = build(tmp_path, kind, members)
    assert load_dataset(folder_config(path))  # decoded and cached under the default limit
    assert "over the 4 KiB limit" in refusal(path, max_image_bytes=4096)


@both_kinds
def test_a_file_that_is_no_image_is_named_not_its_buffer(tmp_path, kind):
    members = good_members() | {"test/ant/2.png": b"no image at all"}
    message = refusal(build(tmp_path, kind, members))
    assert "cannot decode 'test/ant/2.png'" in message and "BytesIO" not in message


@both_kinds
def test_truncated_jpeg_is_refused(tmp_path, kind):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, "JPEG")
    members = good_members() | {"test/ant/2.jpg": buffer.getvalue()[:200]}
    assert "cannot decode 'test/ant/2.jpg'" in refusal(build(tmp_path, kind, members))


def test_zip_member_with_a_bad_crc_is_refused(tmp_path):
    members = good_members() | {"train/ant/9.png": png(colour=(99, 99, 99))}
    data = bytearray(build(tmp_path, "zip", members).read_bytes())
    at = data.index(members["train/ant/9.png"]) + 40  # stored, not deflated: the PNG as is
    data[at] ^= 0xFF
    (tmp_path / "data.zip").write_bytes(bytes(data))
    message = refusal(tmp_path / "data.zip")
    assert "'train/ant/9.png'" in message and "CRC-32" in message


def test_encrypted_zip_member_is_refused(tmp_path):
    data = bytearray(build(tmp_path, "zip", good_members()).read_bytes())
    # zipfile clears flag_bits when it writes: set the "encrypted" bit in the headers after.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        while at >= 0:
            data[at + offset] |= 0x1
            at = data.find(signature, at + 4)
    (tmp_path / "data.zip").write_bytes(bytes(data))
    message = refusal(tmp_path / "data.zip")
    assert "'train/ant/0.png'" in message and "encrypted" in message


def test_truncated_zip_is_refused(tmp_path):
    data = build(tmp_path, "zip", good_members()).read_bytes()
    (tmp_path / "data.zip").write_bytes(data[: len(data) // 2])
    assert "truncated or damaged .zip" in refusal(tmp_path / "data.zip")


def test_file_that_is_not_a_zip_is_refused(tmp_path):
    (tmp_path / "data.zip").write_text("train/ant/0.png\n")
    assert "is not a .zip" in refusal(tmp_path / "data.zip")


@pytest.mark.parametrize("name", ["../train/ant/2.png", "/train/ant/2.png"])
def test_zip_member_outside_the_zip_is_refused(tmp_path, name):
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
        for member, data in good_members().items():
            archive.writestr(member, data)
        archive.writestr(zipfile.ZipInfo(name), png())  # ZipInfo keeps the name as given
    assert f"'{name}'" in refusal(tmp_path / "data.zip")


@both_kinds
@pytest.mark.parametrize(
    "width, height, limit, problem",
    [
        (20000, 12000, None, "decompression bomb"),  # over 2x Pillow's limit: its error
        (10000, 10000, 2**40, "decompression bomb"),  # over Pillow's limit: its warning
        (3000, 3000, None, "3000x3000 pixels, 25.7 MiB decoded, over the 16 MiB limit"),
    ],
)
def test_image_too_large_is_refused_from_its_header(tmp_path, kind, width, height, limit, problem):
    members = good_members() | {"train/ant/bomb.png": png_claiming(width, height)}
    changes = {} if limit is None else {"max_image_bytes": limit}
    message = refusal(build(tmp_path, kind, members), **changes)
    # Decoding the 8x8 pixels would have said "cannot decode": the header alone refused it.
    assert "'train/ant/bomb.png'" in message and problem in message


def test_image_size_is_checked_before_decoding(tmp_path):
    members = good_members() | {"train/bee/2.png": png_claiming(9, 8)}  # the 8x8 pixels
    path = build(tmp_path, "zip", members)
    assert "is 9x8 but the first image is 8x8" in refusal(path, data_mode="memory")


def test_images_too_many_for_memory_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "_memory_bytes", lambda: 1000)
    message = refusal(build(tmp_path, "zip", good_members()))
    assert "8 images" in message and "8x8" in message and "1.5 KiB" in message


@both_kinds
def test_other_image_modes_load_as_rgb(tmp_path, kind, recwarn):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    modes = {
        "grey": (encoded(Image.new("L", (8, 8), 77)), (77, 77, 77)),
        "rgba": (encoded(Image.new("RGBA", (8, 8), (10, 20, 30, 0))), (10, 20, 30)),
        # transparency as bytes: Pillow warns when converting it to RGB
        "palette": (encoded(palette, transparency=b"\x00\x80"), (12, 34, 56)),
        "sixteen": (encoded(Image.fromarray(np.full((8, 8), 0xAB12, np.uint16))), (0xAB,) * 3),
    }
    members = good_members() | {f"train/ant/{m}.png": data for m, (data, _) in modes.items()}
    data = load_dataset(folder_config(build(tmp_path, kind, members)))
    assert data.train_images.shape == (8, 3, 8, 8) and data.train_images.dtype == np.uint8
    order = sorted(n for n in members if n.startswith("train/"))  # the loader's order
    for mode, (_, colour) in modes.items():
        i = order.index(f"train/ant/{mode}.png")
        assert tuple(data.train_images[i, :, 5, 5]) == colour, mode  # alpha dropped, not blended
    assert not [w for w in recwarn if "Transparency" in str(w.message)]
