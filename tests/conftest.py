import atexit
import functools
import io
import logging
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from graftune.commands import run
from graftune.commands.cli import config_from_args
from graftune.config import Config, with_overrides
from graftune.data import load_dataset
from graftune.tracking.experiment import run_experiment


def pytest_configure(config):
    """Before any test starts Ray: make sure Ray's token exists. Ray writes a new one when
    the first local cluster of a machine starts, and with tests in parallel (pytest -n) two
    first clusters at once would each write their own, one of them then reading the other's.
    Only the main process does it (pytest-xdist's workers carry ``workerinput``)."""
    if not hasattr(config, "workerinput"):
        ray_cli = [sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate"]
        subprocess.run(ray_cli, capture_output=True, check=True)


def pytest_collection_modifyitems(items):
    """Every test that runs Ray is ``slow`` (``-m "not slow"`` leaves the unit tests, which
    take seconds), and slow tests start first: with tests spread over processes (pytest -n)
    no long test is left to start last, while the others wait."""
    for item in items:
        if "ray_local" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a command starts Ray: bad input must stop before it."""
    from graftune.commands import reproduce, tune

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started for bad input")

    for command in (run, tune, reproduce):
        monkeypatch.setattr(command, "init_ray", refuse)


@pytest.fixture(scope="session")
def hold_dir(tmp_path_factory) -> Path:
    """The folder of the workers' test hook (``worker.hold_if_asked``): a file ``net<k>``
    there holds network k's next interval until the test removes it."""
    return tmp_path_factory.mktemp("hold")


@pytest.fixture(scope="session")
def ray_local(hold_dir):
    """One local Ray for all population tests: starting Ray costs seconds on 2 cores."""
    import ray

    from graftune.population.worker import HOLD_DIR

    runtime_env = {"env_vars": {HOLD_DIR: str(hold_dir)}}  # every worker of the session
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    yield ray
    ray.shutdown()


@functools.cache
def empty_store() -> Path:
    """An MLflow SQLite store with its tables made and nothing in it, once per test process:
    creating the tables (MLflow runs every schema migration) costs about 2 s a store, so
    tests copy this file instead."""
    from mlflow.tracking import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="graftune-empty-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.WARNING)  # "Creating initial MLflow database tables" is no
    try:  # part of the test that happens to make the first store
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    finally:
        mlflow_log.setLevel(level)
    return folder / "mlflow.db"


def refused(capsys, main, argv: list[str]) -> str:
    """The one line a command's ``main`` refuses ``argv`` with, asserting exit code 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# For tests that do not check the layout: all of a run's networks in one fused worker
# process. Each worker process costs about 3 CPU-s here just to import torch.
ONE_WORKER = ("--fuse", "on")


def smoke_args(tmp_path, *extra: str, fresh_store: bool = False) -> list[str]:
    """Command-line settings of a population that trains in seconds on a CPU.

    Without MLflow models or plots: exporting the models costs seconds a run, drawing the plots
    about two (test_tracking_models.py turns the models on with --log-models, the tracked-run
    tests the plots with --plots). The store ``tmp_path/mlflow.db`` starts as a copy of an
    empty, initialised store when ``tmp_path`` exists, unless ``fresh_store`` (then MLflow
    creates it, as for a first-time user)."""
    store = Path(tmp_path) / "mlflow.db"
    if not fresh_store and store.parent.is_dir() and not store.exists():
        shutil.copyfile(empty_store(), store)
    return [
        *"--model tiny_cnn --dataset synthetic --synthetic-size 256".split(),
        *"--epochs 2 --batch-size 64 --lr 0.05 --no-log-models --no-plots".split(),
        *("--tracking-uri", f"sqlite:///{store}"),
        *("--checkpoint-dir", str(tmp_path / "checkpoints")),
        *extra,
    ]


# --- image folders and zips, sound or spoilt, for the data and command-line tests ---


def encoded(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def png(size=(8, 8), mode="RGB", colour=0) -> bytes:
    return encoded(Image.new(mode, size, colour))


def good_members() -> dict[str, bytes | None]:
    """Two classes, two 8x8 images each in train/ and test/; None marks a directory entry."""
    names = [f"{s}/{c}/{i}.png" for s in ("train", "test") for c in ("ant", "bee") for i in (0, 1)]
    return {name: png(colour=(i, 2 * i, 3 * i)) for i, name in enumerate(names)}


def build(tmp_path: Path, kind: str, members: dict[str, bytes | None]) -> Path:
    """The members as a folder or as a zip."""
    if kind == "zip":
        tmp_path.mkdir(exist_ok=True)
        with zipfile.ZipFile(tmp_path / "data.zip", "w") as archive:
            for name, data in members.items():
                archive.writestr(name, b"" if data is None else data)  # "x/": a directory
        return tmp_path / "data.zip"
    for name, data in members.items():
        target = tmp_path / "data" / name
        if data is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return tmp_path / "data"


def png_claiming(width: int, height: int) -> bytes:
    """An 8x8 PNG whose header claims width x height: a bomb's header, without its bulk."""
    data = bytearray(png())
    data[16:24] = struct.pack(">II", width, height)  # IHDR follows the signature, length, type
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))  # Pillow checks the CRC
    return bytes(data)


def smoke_config(tmp_path, **overrides) -> Config:
    args = run.build_parser().parse_args(smoke_args(tmp_path))
    return with_overrides(config_from_args(args), overrides)


def run_with_hook_after_round_1(config, hook):
    """Run a population, calling ``hook(population)`` once round 1 is logged."""
    started = []

    def after_round(result):
        if result.round == 1:
            hook(started[0])

    return run_experiment(
        config,
        load_dataset(config.data),
        on_round=after_round,
        on_start=lambda population, rounds: started.append(population),
    )


def nan_weights(model_state: dict) -> dict:
    """A network's state with every floating-point tensor NaN: it diverges at its next step."""
    return {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in model_state.items()
    }


# --- comparing trainers, and stopping a run between a round's evaluation and its graft ---


def distance(a: dict, b: dict) -> float:
    """Relative distance ||a - b|| / ||b|| over every float tensor of a network's state."""
    keys = [k for k, v in b.items() if v.is_floating_point()]
    diff = torch.cat([(a[k].float() - b[k].float()).flatten() for k in keys])
    return float(diff.norm() / torch.cat([b[k].float().flatten() for k in keys]).norm())


def models_of(group) -> list[dict]:
    """Every network's weights of a fused trainer or a group of Trainers."""
    return [state["model"] for state in group.state_dicts()]


def interrupted_in_round(monkeypatch, round_index: int, run) -> None:
    """Call ``run()`` with a stop (KeyboardInterrupt) raised in ``round_index`` after its
    evaluation, before its graft is recorded: that round is not finished."""
    import graftune.population.exchange as exchange_module

    records = exchange_module.graft_records

    def stop(index, network, rows):
        if index == round_index:
            raise KeyboardInterrupt
        return records(index, network, rows)

    monkeypatch.setattr(exchange_module, "graft_records", stop)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(exchange_module, "graft_records", records)


def tiny_config(model: str, k: int, **overrides) -> Config:
    """K networks on 64 synthetic images, intervals of 2 steps: trainer-level comparisons."""
    settings = {
        "model": model,
        "dataset": "synthetic",
        "synthetic_size": 64,
        "batch_size": 16,
        "epochs": 1,
        "interval_steps": 2,
        "num_models": k,
        "lr": 0.01,
        "channels_last": False,
    }
    return with_overrides(Config(), {**settings, **overrides})


def zip_folder(folder: Path, target: Path) -> Path:
    """``folder`` written into the zip ``target``, member names relative to it."""
    with zipfile.ZipFile(target, "w") as archive:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(folder).as_posix())
    return target
