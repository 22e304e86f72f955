"""On-device training batches (crop, flip, shuffle, resume) and evaluation batches."""

import numpy as np
import torch
from PIL import Image

from graftune.data import TrainBatches, eval_batches


def padded_windows(image: torch.Tensor) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    return [padded[:, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]


def raw(x: torch.Tensor) -> torch.Tensor:
    """Undo normalisation with mean 0, std 1/255: back to exact uint8 values."""
    return x.round().long()


def test_crop_is_an_exact_padded_window():
    # Images with 1..255 values, so a zero can only come from the padding.
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (64, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(64)
    batches = TrainBatches(images, labels, 16, (0, 0, 0), (1 / 255,) * 3, seed=3)
    flipped = unflipped = 0
    for _ in range(3):
        for x, y in batches.epoch():
            assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
            for out, label in zip(raw(x), y):
                windows = padded_windows(torch.from_numpy(images[label]).long())
                if any(torch.equal(out, w) for w in windows):
                    unflipped += 1
                elif any(torch.equal(out.flip(2), w) for w in windows):
                    flipped += 1
                else:
                    raise AssertionError("output is not a window of the padded image")
    assert 60 <= flipped <= 132 and flipped + unflipped == 192  # about half of 192


def test_shifts_cover_all_offsets():
    images = np.full((512, 3, 32, 32), 255, np.uint8)
    batches = TrainBatches(images, np.zeros(512), 512, (0, 0, 0), (1 / 255,) * 3, seed=1)
    x, _ = next(batches.epoch())
    top = (raw(x)[:, 0, :, 16] == 0).sum(1)  # zero rows above or below: |dy - 4|
    left = (raw(x)[:, 0, 16, :] == 0).sum(1)
    assert set(top.tolist()) == set(range(5)) and set(left.tolist()) == set(range(5))


def test_epoch_is_a_permutation_and_steps():
    labels = np.arange(100)
    images = np.zeros((100, 3, 8, 8), np.uint8)
    batches = TrainBatches(images, labels, 10, (0.5,) * 3, (0.25,) * 3, augment=False)
    assert batches.steps_per_epoch == 10
    seen = [y for _, y in batches.epoch()]
    assert sorted(torch.cat(seen).tolist()) == list(range(100))
    second = torch.cat([y for _, y in batches.epoch()])
    assert not torch.equal(torch.cat(seen), second)  # reshuffled each epoch
    assert TrainBatches(images, labels, 32, (0,) * 3, (1,) * 3).steps_per_epoch == 3
    few = TrainBatches(images[:5], labels[:5], 128, (0,) * 3, (1,) * 3)
    (x, y), *rest = list(few.epoch())
    assert few.steps_per_epoch == 1 and len(y) == 5 and not rest


def test_seed_and_state_dict():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(40)

    def make(seed: int) -> TrainBatches:
        return TrainBatches(images, labels, 8, (0.5,) * 3, (0.2,) * 3, seed=seed)

    a, b, c = make(7), make(7), make(8)
    xs_a = [x for x, _ in a.epoch()]
    assert all(torch.equal(p, q) for p, q in zip(xs_a, (x for x, _ in b.epoch())))
    assert not all(torch.equal(p, q) for p, q in zip(xs_a, (x for x, _ in c.epoch())))
    state = a.state_dict()
    expected = [x for x, _ in a.epoch()] + [x for x, _ in a.epoch()]
    resumed = make(0)
    resumed.load_state_dict(state)
    got = [x for x, _ in resumed.epoch()] + [x for x, _ in resumed.epoch()]
    assert all(torch.equal(p, q) for p, q in zip(expected, got))


def test_normalisation_uses_mean_and_std():
    images = np.zeros((4, 3, 8, 8), np.uint8)
    images[:, 0], images[:, 1], images[:, 2] = 0, 51, 255
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    batches = TrainBatches(images, np.zeros(4), 4, mean, std, augment=False)
    x, y = next(batches.epoch())
    expected = torch.tensor([(0 - 0.1) / 0.5, (0.2 - 0.2) / 0.25, (1 - 0.3) / 2.0])
    assert torch.allclose(x[:, :, 3, 3], expected.expand(4, 3), atol=1e-6)
    assert y.dtype == torch.int64
    (ex, ey), *_ = list(eval_batches(images, np.arange(4), 3, mean, std, "cpu"))
    assert torch.allclose(ex[:, :, 0, 0], expected.expand(3, 3), atol=1e-6)
    assert ey.tolist() == [0, 1, 2]


def test_matches_torchvision_normalize_and_channels_last():
    from torchvision import transforms

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    batches = list(eval_batches(images, np.arange(6), 4, mean, std, "cpu", channels_last=True))
    assert [len(y) for _, y in batches] == [4, 2]
    x = torch.cat([b for b, _ in batches])
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    for i in range(6):
        expected = reference(Image.fromarray(images[i].transpose(1, 2, 0)))
        assert torch.allclose(x[i], expected, atol=1e-5)
    train = TrainBatches(images, np.arange(6), 3, mean, std, channels_last=True)
    assert next(train.epoch())[0].is_contiguous(memory_format=torch.channels_last)


def test_read_only_arrays_are_not_copied():
    images = np.zeros((8, 3, 8, 8), np.uint8)
    images.setflags(write=False)  # as Ray's object store hands them out
    batches = TrainBatches(images, np.arange(8), 4, (0,) * 3, (1,) * 3)
    assert batches.images.data_ptr() == images.ctypes.data
