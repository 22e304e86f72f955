"""The soup (the population's average weights as one network) and population averaging
(--source average, PAPA): the arithmetic, the soup's BatchNorm, the exchange through Ray,
fused against separate workers, resume, and the soup of a finished run."""

import shutil
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from conftest import empty_store, nan_weights, refused, smoke_config, tiny_config
from graftune.commands import soup as soup_command
from graftune.config import with_overrides
from graftune.core.average import move_toward, population_average
from graftune.data import load_dataset
from graftune.population import population as population_module
from graftune.population.population import Population
from graftune.tracking.checkpoint import load_checkpoint
from graftune.tracking.experiment import run_experiment
from graftune.tracking.null_tracker import NullTracker
from graftune.tracking.resume import resume_payload
from graftune.training.fused import FusedTrainer
from graftune.training.group import TrainerGroup
from graftune.training.soup import Soup
from graftune.training.trainer import Trainer

# 256 images in batches of 64: 4 steps an epoch, an exchange every 2 steps, 4 rounds
SETTINGS = {"num_models": 2, "interval_steps": 2, "fuse": "off"}


def models(states: list[dict]) -> list[dict]:
    return [s["model"] for s in states]


def assert_same_weights(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_the_average_is_the_mean_of_floats_and_keeps_the_first_integer_buffers():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, -2.0]), "n": torch.tensor(7)}
    average = population_average([a, b])
    assert torch.equal(average["w"], torch.tensor([2.0, 0.0]))
    assert torch.equal(average["n"], torch.tensor(3))
    assert torch.equal(population_average([a, a, a])["w"], a["w"])  # identical: itself


def test_moving_by_0_changes_no_bit_and_by_1_copies_the_target():
    own = {"w": torch.randn(5, generator=torch.Generator().manual_seed(0)), "n": torch.tensor(1)}
    target = {"w": torch.randn(5), "n": torch.tensor(9)}
    before = own["w"].clone()
    move_toward(own, target, 0.0)
    assert torch.equal(own["w"], before)
    move_toward(own, target, 1.0)
    assert torch.equal(own["w"], target["w"]) and own["n"] == 1  # integers are not moved
    move_toward(own, {"w": torch.zeros(5)}, 0.25)
    torch.testing.assert_close(own["w"], 0.75 * target["w"])


def test_the_soup_of_identical_networks_is_each_of_them():
    config = tiny_config("tiny_cnn", 1)
    data = load_dataset(config.data)
    trainer = Trainer(config, 0, data, device="cpu")
    trainer.train_interval()
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    soup = Soup(config, data, "cpu").evaluate(population_average([state] * 3), bn_batches=0)
    assert_same_weights([soup["state"]], [state])
    own = trainer.evaluate()
    assert (soup["test_acc"], soup["test_loss"]) == (own["test_acc"], own["test_loss"])


def test_the_soups_batchnorm_statistics_are_recomputed_not_averaged():
    config = tiny_config("tiny_cnn", 2)
    data = load_dataset(config.data)
    trainers = [Trainer(config, k, data, device="cpu") for k in range(2)]
    for trainer in trainers:
        trainer.train_interval()
    average = population_average([t.model.state_dict() for t in trainers])
    soup = Soup(config, data, "cpu")
    rng = torch.get_rng_state()
    state = soup.evaluate(average, bn_batches=2)["state"]
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random state stays
    # The first BatchNorm sees the first convolution's outputs, whatever the statistics
    # are: its running mean must be their mean over the batches it was shown.
    probe = Trainer(config, 0, data, device="cpu")  # the soup's batches: network 0's order
    weight = average["0.weight"]
    means = [
        torch.nn.functional.conv2d(x, weight, padding=1).mean((0, 2, 3))
        for _, (x, _) in zip(range(2), probe.batches.epoch())
    ]
    torch.testing.assert_close(state["1.running_mean"], torch.stack(means).mean(0))
    assert not torch.allclose(state["1.running_mean"], average["1.running_mean"])


def test_fused_and_separate_networks_average_alike():
    config = tiny_config("tiny_cnn", 3)
    data = load_dataset(config.data)
    separate = TrainerGroup(config, range(3), data, device="cpu")
    separate.train_interval()
    fused = FusedTrainer(config, range(3), data, device="cpu")
    fused.load_state_dicts(separate.state_dicts())  # the same networks in both layouts
    # Across workers the driver averages the packed snapshots; in one worker, the device.
    driver = population_average(separate.unit_states())
    on_device = fused.average([0, 1, 2])
    torch.testing.assert_close({k: on_device[k] for k in driver}, driver, rtol=0, atol=1e-6)
    separate.move_toward_average(driver, 0.3)
    fused.move_toward_average(None, 0.3, [0, 1, 2])
    for a, b in zip(models(separate.state_dicts()), models(fused.state_dicts())):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def rate_0_run(tmp_path_factory, ray_local):
    """A tracked run of --source average at rate 0 with a soup every round, on two workers
    (the average goes through the object store): every test below reads it."""
    tmp_path = tmp_path_factory.mktemp("rate0")
    config = smoke_config(
        tmp_path, **SETTINGS, source="average", average_rate=0.0, soup="every_round"
    )
    return tmp_path, config, run_experiment(config, load_dataset(config.data))


@pytest.mark.usefixtures("ray_local")
def test_rate_0_trains_what_independent_networks_train_and_scores_a_soup_every_round(
    rate_0_run, tmp_path
):
    _, config, averaged = rate_0_run
    independent = with_overrides(config, {"source": "none", "soup": "off"})
    alone = run_experiment(independent, load_dataset(config.data), tracker=NullTracker())
    assert_same_weights(models(averaged.states), models(alone.states))
    assert all("soup_test_acc" in h["population"] for h in averaged.history)
    assert all("soup_test_acc" not in h["population"] for h in alone.history)


@pytest.mark.usefixtures("ray_local")
def test_rate_1_makes_every_network_the_average_after_one_exchange(tmp_path):
    config = smoke_config(tmp_path, **SETTINGS, source="average", average_rate=1.0)
    data = load_dataset(config.data)
    population = Population(config, ray.put(data), data.test_labels)
    population.start()
    try:
        trained = population.run_round(1)  # trained apart, evaluated, then averaged
        net0, net1 = models(population.states())
    finally:
        population.shutdown()
    assert trained.networks[0]["test_loss"] != trained.networks[1]["test_loss"]
    assert "soup_test_acc" not in trained.population  # --soup end: the last round only
    floats = [k for k, v in net0.items() if v.is_floating_point()]
    assert all(torch.equal(net0[k], net1[k]) for k in floats)


@pytest.mark.usefixtures("ray_local")
def test_a_diverged_network_is_left_out_of_the_average(tmp_path, monkeypatch):
    config = smoke_config(
        tmp_path, **{**SETTINGS, "num_models": 3}, source="average", average_rate=1.0
    )
    data = load_dataset(config.data)
    population = Population(config, ray.put(data), data.test_labels)
    trained = []  # the states the average is taken from: trained, diverged ones restored

    def held_now(pop):  # what the workers hold (states() is the last round's restart point)
        return models(pop.per_network([a.get_state.remote() for a in pop.actors]))

    def keep_trained_states(pop, include):
        trained.append(held_now(pop))
        return real_average_of(pop, include)

    real_average_of = population_module.average_of
    monkeypatch.setattr(population_module, "average_of", keep_trained_states)
    population.start()
    try:
        population.run_round(1)
        states = population.states()
        states[1]["model"] = nan_weights(states[1]["model"])
        population.load_states(states)
        result = population.run_round(2)
        averaged = held_now(population)
    finally:
        population.shutdown()
    assert [n["restored"] for n in result.networks] == [0, 1, 0]
    net0, net1, net2 = trained[-1]  # net1: a copy of net0, which must not count twice
    floats = [k for k, v in net0.items() if v.is_floating_point()]
    assert all(torch.equal(net1[k], net0[k]) for k in floats)
    for network in averaged:
        for key in floats:
            expected = (net0[key] + net2[key]) / 2
            assert torch.allclose(network[key], expected, atol=1e-6), key
    counted_twice = (2 * net0[floats[0]] + net2[floats[0]]) / 3
    assert not torch.allclose(averaged[0][floats[0]], counted_twice, atol=1e-6)


@pytest.mark.usefixtures("ray_local")
def test_a_resumed_averaging_run_equals_an_uninterrupted_one(tmp_path):
    # one fused worker: the average is taken on its device (the runs above use the driver)
    settings = {**SETTINGS, "source": "average", "average_rate": 0.3, "fuse": "on"}

    def config_in(name: str):
        (tmp_path / name).mkdir()
        return smoke_config(tmp_path / name, **settings)

    whole = config_in("whole")
    data = load_dataset(whole.data)
    expected = run_experiment(whole, data, tracker=NullTracker())  # nothing to read back

    def stop_after_round_2(result):
        if result.round == 2:
            raise KeyboardInterrupt

    broken = config_in("broken")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(broken, data, on_round=stop_after_round_2)
    (run_dir,) = (tmp_path / "broken" / "checkpoints").iterdir()
    resumed = with_overrides(broken, {"resume": run_dir.name})
    done = run_experiment(resumed, data, resume=resume_payload(resumed))
    assert [h["round"] for h in done.history] == [1, 2, 3, 4]
    assert_same_weights(models(done.states), models(expected.states))
    assert done.final["population"] == expected.final["population"]  # the soup's too


@pytest.mark.usefixtures("ray_local")
def test_the_soup_command_scores_a_finished_run_as_the_run_did(rate_0_run, capsys):
    tmp_path, config, result = rate_0_run
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    ended = client.get_run(result.run_id).info.end_time
    assert soup_command.main([result.run_id, "--tracking-uri", store]) == 0
    assert capsys.readouterr().out.startswith("soup of 2 networks: ")
    history = client.get_metric_history(result.run_id, "population/soup_test_acc")
    in_run, command = history[-2], history[-1]  # both at the last round
    assert in_run.step == command.step == len(result.history)
    assert command.value == in_run.value
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == ended  # its wall time stays
    weights = {a.path for a in client.list_artifacts(result.run_id, "weights")}
    assert "weights/soup.pt" in weights


def test_the_soup_command_refuses_an_unknown_run_in_one_line(tmp_path, capsys):
    shutil.copyfile(empty_store(), tmp_path / "mlflow.db")  # made once: migrations cost seconds
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    line = refused(capsys, soup_command.main, ["0123abcd", "--tracking-uri", store])
    assert f"0123abcd: no such MLflow run in {store}" in line
    # a bad flag is named before the store is asked: the run's absence is not the news
    line = refused(
        capsys, soup_command.main, ["0123abcd", "--tracking-uri", store, "--bn-batches", "-3"]
    )
    assert "--bn-batches -3: must be >= 0" in line and "0123abcd" not in line


def test_checkpoints_carry_the_soup_in_the_history(rate_0_run):
    tmp_path, _, result = rate_0_run
    (path,) = (tmp_path / "checkpoints").glob("*/*.pt")
    history = load_checkpoint(path)["history"]
    assert [("soup_test_acc" in h["population"]) for h in history] == [True] * len(history)


def test_papa_yaml_loads_and_a_search_for_the_soup_needs_a_soup_every_round(
    tmp_path, capsys, no_ray
):
    from graftune.commands import tune
    from graftune.commands.searchspace import load_search_space
    from graftune.config import Config

    papa = str(Path(__file__).resolve().parent.parent / "searchspaces" / "papa.yaml")
    space = load_search_space(papa, Config())
    assert set(space.param_space) == {"source", "average_rate"}
    argv = [
        *("--search-space", papa, "--metric", "soup_test_acc"),
        *("--storage-path", str(tmp_path / "tune"), "--model", "tiny_cnn"),
        *("--dataset", "synthetic", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"),
    ]
    shutil.copyfile(empty_store(), tmp_path / "mlflow.db")
    assert "--metric soup_test_acc needs --soup every_round" in refused(capsys, tune.main, argv)
