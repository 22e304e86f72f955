"""Streamed image sets: mixed sizes and modes, listed and checked at start-up, decoded batch by
batch, each network cropping its own view of one decoded batch, damaged files skipped."""

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import zip_folder
from graftune.config import Config, DataConfig
from graftune.data import DataError, StreamSet, load_dataset
from graftune.data.loader import HELD, make_loader
from graftune.data.stream_batches import StreamBatches, StreamEval
from graftune.training.fused import FusedTrainer
from graftune.training.group import TrainerGroup
from graftune.training.trainer import Trainer

MODES = ["RGB", "L", "CMYK", "P", "RGBA"]  # JPEG for the first three, PNG for the others
SIZE = 16  # --image-size of these tests: small, so a CPU decodes and trains in moments


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFTUNE_CACHE", str(tmp_path / "cache"))


def make_set(root: Path, train: int = 6, test: int = 3, test_name: str = "test") -> Path:
    """Two classes (`bee` images bright, `ant` dark), every image its own size and a mode
    from MODES; ``train`` and ``test`` images per class."""
    rng = np.random.default_rng(len(str(root)))
    for split, count in (("train", train), (test_name, test)):
        for c, name in enumerate(("ant", "bee")):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                w, h = (int(v) for v in rng.integers(12, 48, 2))
                base = 40 + 150 * c
                pixels = rng.integers(base, base + 40, (h, w, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).convert(MODES[i % len(MODES)])
                suffix = "jpg" if image.mode in ("RGB", "L", "CMYK") else "png"
                image.save(root / split / name / f"{i:03d}.{suffix}")
    return root


def spoil(jpeg: Path) -> None:
    """Cut a JPEG just after its scan starts: its header still opens, decoding it fails."""
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: data.index(b"\xff\xda") + 20])


def stream(path: Path, **changes) -> StreamSet:
    cfg = DataConfig(dataset="imagefolder", data_dir=str(path), image_size=SIZE, **changes)
    data = load_dataset(cfg)
    assert isinstance(data, StreamSet) and cfg.data_mode == "stream"
    return data


def config(path: Path, **train) -> Config:
    cfg = Config()
    cfg.model.model, cfg.population.num_models = "tiny_cnn", 2
    cfg.data.dataset, cfg.data.data_dir, cfg.data.image_size = "imagefolder", str(path), SIZE
    cfg.train.batch_size, cfg.train.eval_batch_size, cfg.train.epochs = 4, 5, 2
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_mixed_sizes_stream_and_train_fused_and_alone(tmp_path):
    cfg = config(make_set(tmp_path / "set"))
    data = load_dataset(cfg.data)
    assert cfg.data.data_mode == "stream" and len(data.train_labels) == 12
    alone = Trainer(cfg, 0, data, "cpu")
    fused = FusedTrainer(cfg, [0, 1], data, "cpu")
    a, f = alone.train_interval(), fused.train_interval()
    assert np.isfinite(a["train_loss"]) and a["step"] == 3  # 12 images, batches of 4
    # One decoded batch, network 0's own crops: the fused step equals training it alone.
    assert f[0]["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert f[1]["train_loss"] != pytest.approx(a["train_loss"], rel=1e-5)
    evaluation = fused.evaluate()
    assert evaluation[0]["test_acc"] == pytest.approx(alone.evaluate()["test_acc"])
    assert evaluation[0]["skipped_images"] == 0


def test_batches_have_the_right_shapes_labels_and_own_crops(tmp_path):
    data = stream(make_set(tmp_path / "set"))
    batches = StreamBatches(data, seeds=[0, 1, 2], order_seed=7, batch_size=5)
    x, y = batches.next_batches()
    assert x.shape == (3, 5, 3, SIZE, SIZE) and x.dtype == torch.float32
    assert torch.equal(y[0], y[1]) and torch.equal(y[0], y[2])  # one order, one batch
    assert not torch.equal(x[0], x[1])  # ... cropped and flipped for each network
    images = data.decoded("train")
    for batch in make_loader(images, [[0, 5, 6, 11]], workers=0, pin=False):
        assert batch.images.shape == (4, 3, 18, 18)  # the canvas: SIZE / 0.875
        assert batch.labels.tolist() == [0, 0, 1, 1]  # ant, ant, bee, bee
        names = [images.names[i] for i in batch.index]
        assert [n.split("/")[1] for n in names] == ["ant", "ant", "bee", "bee"]
    own = StreamBatches(data, seeds=[0, 1], order_seed=None, batch_size=5)
    _, y_own = own.next_batches()
    assert y_own.shape == (2, 5)
    subset = stream(tmp_path / "set", subset=5, test_subset=2)  # a fixed subset, as in memory
    assert len(subset.train_labels) == 5 and len(subset.test_labels) == 2
    again = stream(tmp_path / "set", subset=5, test_subset=2)
    assert subset.digest("train") == again.digest("train") != data.digest("train")


def test_crop_scale_bounds_the_share_of_each_image_a_crop_keeps(tmp_path):
    from graftune.data.crops import crop_boxes

    sizes = torch.tensor([[200.0, 150.0], [120.0, 160.0], [300.0, 300.0]]).repeat(200, 1)
    area = sizes.prod(1)

    def shares(scale=None):
        generator = torch.Generator().manual_seed(0)
        boxes, _ = (
            crop_boxes(sizes, generator) if scale is None else crop_boxes(sizes, generator, scale)
        )
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / area

    default, mild = shares(), shares(0.5)
    assert default.min() < 0.2  # torchvision's 8%: some crops keep a small part
    rounding = 0.02  # sides are whole pixels
    assert mild.min() >= 0.5 - rounding and mild.max() <= 1 and default.min() >= 0.08 - rounding
    data = stream(make_set(tmp_path / "set"), crop_scale=0.5)  # --crop-scale reaches the crops
    assert data.crop_scale == 0.5
    assert StreamBatches(data, seeds=[0], order_seed=7, batch_size=5).crop_scale == 0.5


def test_evaluation_is_deterministic_and_centre_cropped(tmp_path):
    data = stream(zip_folder(make_set(tmp_path / "set", test_name="val"), tmp_path / "set.zip"))
    first = list(StreamEval(data, 4, "cpu").batches())
    second = list(StreamEval(data, 4, "cpu", workers=2).batches())  # decoded in 2 processes
    assert [x.shape[0] for x, _ in first] == [4, 2]
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    labels = torch.cat([y for _, y in first])
    assert labels.tolist() == data.test_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.cat([x for x, _ in first]).shape[1:] == (3, SIZE, SIZE)


def test_folder_and_zip_stream_the_same_batches(tmp_path):
    folder = make_set(tmp_path / "set")
    a = StreamBatches(stream(folder), [0], 3, 4).next_batches()
    b = StreamBatches(stream(zip_folder(folder, tmp_path / "set.zip")), [0], 3, 4).next_batches()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_the_listing_refuses_what_it_refused_before(tmp_path, kind):
    folder = make_set(tmp_path / "set")
    (folder / "train/ant/x.png").write_bytes(b"not a png")  # named like an image: refused
    path = folder if kind == "folder" else zip_folder(folder, tmp_path / "set.zip")
    with pytest.raises(DataError, match=r"cannot decode 'train/ant/x\.png'"):
        stream(path)


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_headers_read_by_several_processes_give_the_same_listing_and_refusal(
    tmp_path, monkeypatch, capsys, kind
):
    """A large set's headers are read by a pool of processes (here: any set, in chunks of 4,
    two processes): the same listing, and the same one line for a bad file in a late chunk."""
    from graftune.data import headers

    folder = make_set(tmp_path / "set")
    path = folder if kind == "folder" else zip_folder(folder, tmp_path / "set.zip")
    one = headers.list_images(str(path), 1 << 24)
    monkeypatch.setenv("GRAFTUNE_CACHE", str(tmp_path / "other-cache"))  # list it again
    monkeypatch.setattr(headers, "PARALLEL_FROM", 1)
    monkeypatch.setattr(headers, "CHUNK", 4)
    monkeypatch.setattr(headers, "usable_cpus", lambda: 2)
    pool = headers.list_images(str(path), 1 << 24)
    said = capsys.readouterr().err
    assert "reading the headers of 18 images" in said and "with 2 processes" in said
    for split, count in (("train", 12), ("test", 6)):
        assert list(pool.names[split]) == list(one.names[split])
        assert (pool.sizes[split] == one.sizes[split]).all() and len(one.sizes[split]) == count
        assert (pool.labels[split] == one.labels[split]).all()

    (folder / "test/bee/zz.png").write_bytes(b"not a png")  # the last chunk
    path = folder if kind == "folder" else zip_folder(folder, tmp_path / "bad.zip")
    with pytest.raises(DataError, match=r"cannot decode 'test/bee/zz\.png'"):
        headers.list_images(str(path), 1 << 24)


def test_hostile_zip_members_and_both_test_splits_are_refused(tmp_path):
    folder = make_set(tmp_path / "set")
    archive = zip_folder(folder, tmp_path / "set.zip")
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("../outside.png", b"x")
    with pytest.raises(DataError, match="points outside the zip"):
        stream(archive)
    make_set(tmp_path / "both", test_name="val")
    (tmp_path / "both/test/ant").mkdir(parents=True)
    Image.new("RGB", (9, 9)).save(tmp_path / "both/test/ant/0.png")
    with pytest.raises(DataError, match="both test/ and val/"):
        stream(tmp_path / "both")


def test_one_size_that_fits_stays_in_memory_and_val_is_its_test_split(tmp_path):
    for split, count in (("train", 2), ("val", 1)):
        for c in ("ant", "bee"):
            (tmp_path / "s" / split / c).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), 30 * i).save(tmp_path / "s" / split / c / f"{i}.png")
    cfg = DataConfig(dataset="imagefolder", data_dir=str(tmp_path / "s"))
    data = load_dataset(cfg)
    assert cfg.data_mode == "memory" and not data.streamed
    assert data.test_images.shape == (2, 3, 8, 8) and data.test_labels.tolist() == [0, 1]
    cfg = DataConfig(dataset="imagefolder", data_dir=str(tmp_path / "s"), memory_budget=100)
    assert load_dataset(cfg).streamed and cfg.data_mode == "stream"  # over the budget


def test_forcing_memory_on_mixed_sizes_is_one_line(tmp_path):
    cfg = DataConfig(dataset="imagefolder", data_dir=str(make_set(tmp_path / "s")))
    cfg.data_mode = "memory"
    with pytest.raises(DataError, match="one size in memory.*--data-mode stream"):
        load_dataset(cfg)


def test_a_damaged_image_mid_epoch_is_skipped_named_once_and_counted(tmp_path, caplog):
    folder = make_set(tmp_path / "set")
    data = stream(folder)
    spoil(folder / "train/bee/000.jpg")  # after the start-up check
    batches = StreamBatches(data, seeds=[0, 1], order_seed=3, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="graftune"):
        sizes = [batches.next_batches()[1].shape[1] for _ in range(6)]  # two epochs
    assert sorted(sizes) == [3, 3, 4, 4, 4, 4]  # one batch an epoch is short of it
    assert len(batches.skipped) == 1
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "train/bee/000.jpg" in lines[0]


def test_decoded_images_held_do_not_grow_with_the_set(tmp_path):
    peaks = []
    for count in (4, 24):
        data = stream(make_set(tmp_path / f"set{count}", train=count, test=1))
        batches = StreamBatches(data, seeds=[0, 1], order_seed=0, batch_size=4)
        HELD.reset_peak()
        before = HELD.now
        for _ in range(batches.steps_per_epoch * 2):
            batches.next_batches()
        peaks.append(HELD.peak - before)
    assert 4 <= peaks[0] == peaks[1] <= 2 * 4  # a batch or two, never the set


@pytest.mark.parametrize("shared_order", [True, False])
@pytest.mark.parametrize("group", [TrainerGroup, FusedTrainer])
def test_resumed_training_equals_uninterrupted(tmp_path, group, shared_order):
    cfg = config(make_set(tmp_path / "set"), epochs=3)
    cfg.data.shared_order = shared_order
    data = load_dataset(cfg.data)
    whole = group(cfg, [0, 1], data, "cpu")
    whole.train_interval(4)  # mid-epoch 2 of 3-step epochs
    states = whole.state_dicts()
    whole.train_interval(3)
    resumed = group(cfg, [0, 1], data, "cpu")  # a fresh process's trainers
    resumed.load_state_dicts(states)
    resumed.train_interval(3)
    for a, b in zip(whole.state_dicts(), resumed.state_dicts(), strict=True):
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), key
        assert a["batches"] == b["batches"]
    if group is TrainerGroup:
        return
    alone = Trainer(cfg, 1, data, "cpu")  # a fused checkpoint loads into a separate Trainer
    alone.load_state_dict(states[1])
    alone.train_interval(3)
    for key, value in alone.model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, whole.weights(1)[key], atol=1e-5), key


def test_a_streamed_run_stopped_and_resumed_equals_one_that_never_stopped(
    tmp_path, ray_local, capsys, monkeypatch
):
    """Stopped mid-epoch after round 1 and resumed from the command line: the start-up line
    and the params say it streamed, the damaged image is skipped and counted, and the final
    networks equal those of a run that never stopped, bit for bit."""
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    from conftest import ONE_WORKER, smoke_args
    from graftune.commands import run
    from graftune.tracking.checkpoint import load_checkpoint
    from graftune.tracking.experiment import run_experiment
    from graftune.tracking.null_tracker import NullTracker

    folder = make_set(tmp_path / "set", test_name="val")
    spoil(folder / "train/ant/001.jpg")  # its header passes the start-up check
    flags = f"--dataset imagefolder --data-dir {folder} --image-size {SIZE} --batch-size 4"
    argv = smoke_args(tmp_path, *flags.split(), "--interval-steps", "2", *ONE_WORKER)
    startup = run.checked(argv)  # 3 steps an epoch, 2 epochs: rounds end mid-epoch
    whole = run_experiment(startup.config, startup.data, tracker=NullTracker())

    def stop_after_round_1(result):
        if result.round == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(startup.config, startup.data, on_round=stop_after_round_1)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (stopped,) = client.search_runs([client.get_experiment_by_name("graftune").experiment_id])
    (checkpoint,) = (tmp_path / "checkpoints").glob("*/population.pt")
    met_before = stopped.data.metrics["data/skipped_images"]
    assert load_checkpoint(checkpoint)["skipped_images"] == met_before
    lines = io.StringIO()  # the start-up line goes to the command's own console
    monkeypatch.setattr(run, "console", Console(file=lines, width=300))
    assert run.main([*argv, "--resume", stopped.info.run_id]) == 0
    assert f"(12 train / 6 test images, streamed at {SIZE} px)" in lines.getvalue()
    assert "images skipped as damaged: 1" in capsys.readouterr().out

    found = client.get_run(stopped.info.run_id)
    assert found.data.params["data/data_mode"] == "stream"
    assert found.data.metrics["data/skipped_images"] == 1
    history = client.get_metric_history(found.info.run_id, "data/skipped_images")
    counts = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert counts == sorted(counts) and counts[0] == met_before  # the resume forgets none
    inputs = {i.tags[0].value: i.dataset for i in found.inputs.dataset_inputs}
    assert inputs["training"].digest == startup.data.digest("train")
    assert '"mode": "streamed"' in inputs["evaluation"].profile
    states = load_checkpoint(checkpoint)["states"]
    for resumed, uninterrupted in zip(states, whole.states, strict=True):
        assert resumed["step"] == uninterrupted["step"] == 6
        for key, value in uninterrupted["model"].items():
            assert torch.equal(value, resumed["model"][key]), key


@pytest.mark.parametrize("train", [True, False])
def test_torchcodec_and_pillow_decode_a_jpeg_to_nearly_the_same_pixels(tmp_path, train):
    """The two decoders of the streaming path agree; a large JPEG goes to Pillow's draft."""
    from unittest import mock

    from graftune.data import loader

    y, x = np.mgrid[0:90, 0:120]
    smooth = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    images = loader.DecodedImages(
        str(tmp_path), False, ["a.jpg"], np.zeros(1, np.int64), 32, train, 1 << 24
    )
    calls, original = [], loader._tensor_decode

    def tensor_decode(*args):
        calls.append(result := original(*args))
        return result

    with mock.patch.object(loader, "_tensor_decode", tensor_decode):
        images.load(0)
    assert calls == [None]  # 90 px is over twice the 36 px canvas: Pillow's draft decodes it
    images.size = 64  # a 73 px canvas: TorchCodec decodes it
    with mock.patch.object(loader, "_tensor_decode", tensor_decode):
        codec = images.load(0)
    assert calls[-1] is not None
    with mock.patch.object(loader, "_tensor_decode", return_value=None):
        pillow = images.load(0)
    assert codec.shape == pillow.shape == ((3, 73, 73) if train else (3, 64, 64))
    assert np.abs(codec.astype(int) - pillow.astype(int)).mean() < 3


def test_without_torchcodec_pillow_decodes_and_says_so_once(tmp_path, monkeypatch):
    """Where only torch is installed (a lent GPU's image), the data layer still imports and a
    JPEG still decodes, by Pillow, with one warning."""
    import sys

    from graftune.data import loader

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.jpg")
    images = loader.DecodedImages(
        str(tmp_path), False, ["a.jpg"], np.zeros(1, np.int64), 32, True, 1 << 24
    )
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # import fails
    loader._torchcodec_jpeg.cache_clear()
    try:
        with pytest.warns(UserWarning, match="TorchCodec is missing") as said:
            first, second = images.load(0), images.load(0)
    finally:
        loader._torchcodec_jpeg.cache_clear()
    assert len(said) == 1 and first.shape == second.shape == (3, 37, 37)
    assert abs(int(first[0].mean()) - 200) < 8  # red, decoded


@pytest.mark.usefixtures("ray_local")
def test_a_search_trains_its_trials_on_a_streamed_set(tmp_path, monkeypatch, capsys):
    """Tune trials on a folder of mixed-size images: each trial's population streams it."""
    from mlflow.tracking import MlflowClient

    from conftest import smoke_args
    from graftune.commands import trial
    from graftune.commands import tune as tune_command

    monkeypatch.setitem(trial.DRIVER_BUNDLE, "CPU", 0.1)  # both trials fit the tests' Ray
    folder = make_set(tmp_path / "set", test_name="val")
    (tmp_path / "space.yaml").write_text("A: {uniform: [0.2, 0.6]}\n")
    flags = f"--dataset imagefolder --data-dir {folder} --image-size {SIZE} --batch-size 4"
    search = f"--search-space {tmp_path / 'space.yaml'} --storage-path {tmp_path / 'tune'}"
    trials = "--num-samples 2 --max-concurrent-trials 2 --cpus-per-worker 0.1 --fuse on"
    argv = smoke_args(tmp_path, *f"{flags} {search} {trials} --epochs 1".split())
    assert tune_command.main([*argv, "--no-log-weights", "--no-system-metrics"]) == 0

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    trial_runs = [
        r for r in client.search_runs(experiments) if "population/mean_test_acc" in r.data.metrics
    ]
    assert len(trial_runs) == 2
    for run in trial_runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["data/data_mode"] == "stream"
        assert run.data.metrics["data/skipped_images"] == 0
    assert capsys.readouterr().err.count(" finished: ") == 2
