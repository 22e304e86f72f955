"""One tracked, checkpointed population run: what ``graftune.run`` and each Tune trial do.

Resume continues the same MLflow run at the round after the last checkpoint, with the
history and graft records that the checkpoint carries, so no finished round is lost or
logged twice.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
import yaml
from mlflow.tracking import MlflowClient

from graftune.config import Config, ConfigError, flatten
from graftune.data import ImageSet, StreamSet
from graftune.population.population import Population, RoundResult
from graftune.population.resources import placement_line
from graftune.population.rounds import run_population
from graftune.tracking.checkpoint import (
    Resume,
    check_compatible,
    checkpoint_path,
    read_checkpoint,
    save_checkpoint,
)
from graftune.tracking.dataset_input import dataset_inputs
from graftune.tracking.description import run_description
from graftune.tracking.interrupt import RunStopped, exit_on_interrupt, stopped_line
from graftune.tracking.lease import DriverLease, acquire, lease_path
from graftune.tracking.logged_models import best_network, log_networks, log_soup
from graftune.tracking.null_tracker import NullTracker
from graftune.tracking.pending import PendingLog, StoreAway, away_line
from graftune.tracking.tracker import (
    BEST_MODEL_ID_TAG,
    BEST_MODEL_TAG,
    CHECKPOINT_TAG,
    REGISTERED_TAG,
    Tracker,
    open_tracker,
    resolve_tracking_uri,
    round_metrics,
)

RECORDS_ARTIFACT = "grafting/entropy_alpha.csv"
WORKERS_TAG = "graftune.workers"  # where each network ran: node, device, threads
PLACEMENT_TAG = "graftune.placement"  # the same in words: "64 networks in 2 workers (...)"
FUSE_TAG = "graftune.fuse"  # why the networks were not fused where they would have been


@dataclass
class ExperimentResult:
    run_id: str
    tracking_uri: str
    history: list[dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    worker_info: list[dict[str, Any]] = field(default_factory=list)
    best: int | None = None  # the network with the best final test accuracy
    model_ids: list[str] = field(default_factory=list)  # net{k}'s logged model, when logged
    registered: str = ""  # "NAME version V" of --register-model
    states: list[dict[str, Any]] = field(default_factory=list, repr=False)  # final networks
    streamed: bool = False  # the images were decoded batch by batch, not held in memory
    skipped_images: int = 0  # streamed images that failed to decode mid-run (this session)
    soup: dict[str, Any] | None = field(default=None, repr=False)  # the last soup's weights

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass
class LoggedRound(RoundResult):
    """A finished round as the experiment recorded it: where it was logged and checkpointed."""

    run_id: str = ""  # the MLflow run this round was logged to
    checkpoint: str = ""  # the checkpoint written after this round ("" if none was)


def stopped_run(client: MlflowClient, run_id: str) -> Resume:
    """The stopped run ``run_id`` of the store ``client`` reads, with its last checkpoint:
    its settings are the truth. The run is fetched once, here; :func:`claim` it once every
    other setting has been checked."""
    try:
        run = client.get_run(run_id)
    except Exception as error:  # MLflow raises its own types for an unknown run
        raise ConfigError(
            f"--resume {run_id}: no such MLflow run ({type(error).__name__})"
        ) from None
    if run.info.status == "FINISHED":
        raise ConfigError(
            f"--resume {run_id}: the run finished, so there is nothing to resume; "
            f"start a new run (its settings are in the run's config.yaml)"
        )
    path = run.data.tags.get(CHECKPOINT_TAG, "")
    if not path or not Path(path).exists():
        raise ConfigError(f"--resume {run_id}: its checkpoint {path or '(none)'} is missing")
    if not Path(path).is_file():
        raise ConfigError(f"--resume {run_id}: its checkpoint {path} is not a file")
    return Resume(run_id, read_checkpoint(path, f"--resume {run_id}"), path)


def claim(resume: Resume) -> Resume:
    """Take the stopped run's lease before anything starts: one driver per run."""
    acquire(lease_path(resume.path), resume.run_id)
    return resume


def resume_payload(config: Config) -> Resume | None:
    """The stopped run of ``config``'s ``resume`` setting, checked against the config."""
    run_id = config.population.resume
    if not run_id:
        return None
    resume = stopped_run(MlflowClient(resolve_tracking_uri(config.tracking.tracking_uri)), run_id)
    check_compatible(resume.payload, config.model.model, config.population.num_models)
    return claim(resume)


def resume_overrides(config: Config, payload: dict[str, Any]) -> dict[str, Any]:
    """The settings a resume changes against its checkpoint's (``--resume`` itself aside)."""
    saved = payload.get("config", {})
    return {
        k: v
        for k, v in flatten(config).items()
        if k != "population/resume" and k in saved and str(saved[k]) != str(v)
    }


def run_experiment(
    config: Config,
    data: ImageSet | StreamSet,
    on_round: Callable[[LoggedRound], None] | None = None,
    on_start: Callable[[Population, int], None] | None = None,
    placement: Any = None,
    bundle_offset: int = 0,
    parent_run_id: str = "",
    resume: Resume | None = None,
    tracker: Tracker | NullTracker | None = None,
    ready_timeout_s: float = 120.0,
) -> ExperimentResult:
    """Run (or resume) one population, logging every round to its tracker.

    Args:
        config: validated settings.
        data: the decoded data set; it is put in the object store once for all workers.
        on_round: called after each round is logged and checkpointed.
        on_start: called with the started population and its number of rounds.
        placement, bundle_offset: an existing placement group (a Tune trial's) to use.
        parent_run_id: MLflow run to nest this run under (a search).
        resume: the stopped run to continue (from :func:`stopped_run` or a Tune
            checkpoint), checked by the caller before anything starts.
        tracker: where the run is recorded; None opens its MLflow run (the stopped one when
            resuming). A :class:`NullTracker` runs the same rounds without MLflow or
            checkpoints.
        ready_timeout_s: how long the workers may wait for their resources.
    """
    payload = resume.payload if resume else None
    lease = None
    if resume is not None and resume.path:  # before the run is reopened: a held run stays
        # Tune restores a trial (it brings its placement group) only once its last run has
        # ended; the old trial process may still be on its way out: take its lease over.
        lease = DriverLease(lease_path(resume.path), resume.run_id).hold(
            take_over=placement is not None
        )
    if tracker is None:
        tracker = open_tracker(config, resume.run_id if resume else "", parent_run_id)
    try:
        path = _start_run(tracker, config, data, resume)
        if lease is None and path:  # a tracker that records nothing has no checkpoint to hold
            lease = DriverLease(lease_path(path), tracker.run_id).hold()
    except BaseException:  # the run is open: it must not stay RUNNING
        tracker.finish("FAILED")
        if lease is not None:
            lease.release()
        raise
    resumes = 0
    if payload is not None:  # each resume and what it changed; later checkpoints carry it
        resumes = int(payload.get("resumes", 0)) + 1
        changed = resume_overrides(config, payload)
        tracker.log_text(yaml.safe_dump(changed, sort_keys=False), f"config-resume-{resumes}.yaml")
        tracker.set_tag("graftune.resumes", str(resumes))
    history = list(payload["history"]) if payload else []
    records = list(payload["records"]) if payload else []
    result = ExperimentResult(tracker.run_id, tracker.tracking_uri, history, records)
    pending = PendingLog(tracker, payload.get("pending") if payload else None)
    pending.flush()  # what the stopped run could not log, before its next round
    result.streamed = data.streamed
    tracker.set_description(run_description(config, data, history))
    population = Population(config, ray.put(data), data.test_labels, placement, bundle_offset)
    status, saved_round = "FAILED", payload["round"] if payload else None  # last checkpoint
    restore_interrupt, last_state = None, None
    try:
        if config.tracking.system_metrics:  # inside the try: finish() stops the sampling
            tracker.start_system_metrics(resume=payload is not None)
        population.start(ready_timeout_s)
        result.worker_info = population.info
        tracker.set_tag(WORKERS_TAG, json.dumps(population.info))
        tracker.set_tag(PLACEMENT_TAG, placement_line(population.layout))
        if population.fuse_note:
            tracker.set_tag(FUSE_TAG, population.fuse_note)
        if payload is not None:
            population.load_states(payload["states"])
        first_round = payload["round"] + 1 if payload else 1
        if on_start is not None:
            on_start(population, population.num_rounds)

        def finish_round(round_result: RoundResult) -> None:
            nonlocal saved_round, last_state
            add_best_over_rounds(history, round_result)
            history.append(round_result.as_history())
            records.extend(round_result.records)
            result.soup = round_result.soup if round_result.soup is not None else result.soup
            result.events.extend(round_result.events)
            metrics = round_metrics(round_result.networks, round_result.population)
            if data.streamed:  # a file damaged after the start-up check is skipped, counted
                result.skipped_images = round_result.skipped_images
                metrics["data/skipped_images"] = round_result.skipped_images
            pending.log(metrics, round_result.round)
            logged = LoggedRound(**vars(round_result), run_id=tracker.run_id)
            last = round_result.round == population.num_rounds
            due = last or round_result.round % config.population.checkpoint_every == 0
            if path and due:
                state = _payload(config, round_result.round, population, history, records)
                state.update(resumes=resumes, pending=list(pending.items))
                logged.checkpoint = str(save_checkpoint(path, state))
                saved_round, last_state = round_result.round, state
            if on_round is not None:
                on_round(logged)

        run_population(population, first_round, finish_round)
        result.best = best_network(result.final)
        result.states = population.states()
        if not pending.flush():  # the final results wait with the metrics, for --resume
            raise _store_away(pending, path, last_state or payload, saved_round)
        if tracker.enabled:  # plots and exported models are made only to be logged
            try:
                _log_final_artifacts(tracker, config, result.states, history, records, result.soup)
                _log_final_networks(tracker, config, data, result.states, result)
            except Exception as error:
                if not pending.went_away(error):
                    raise
                raise _store_away(pending, path, last_state or payload, saved_round) from None
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        stop = RunStopped(stopped_line(tracker.run_id, saved_round, config.tracking.tracking_uri))
        restore_interrupt = exit_on_interrupt(stop.line)  # a second Ctrl-C skips the cleanup
        raise stop from None
    finally:
        population.shutdown()  # first: the workers go even if the store below is slow
        if not pending.away:  # else the run stays RUNNING, for --resume to finish it
            tracker.set_description(
                run_description(
                    config, data, history, status, result.best, tracker.run_id, result.registered
                )
            )
            tracker.finish(status)
        if lease is not None:
            lease.release()
        if restore_interrupt is not None:
            restore_interrupt()
    return result


def _store_away(pending: PendingLog, path: str, state, saved_round) -> StoreAway:
    """The end of a run whose server is away: the last checkpoint (which has everything the
    final results are made from) is written again with only what still waits, so that
    ``--resume`` logs each round once."""
    if path and state is not None:
        save_checkpoint(path, {**state, "pending": list(pending.items)})
    return StoreAway(away_line(pending.uri, pending.tracker.run_id, pending.steps, saved_round))


def _start_run(tracker, config: Config, data: ImageSet, resume: Resume | None) -> str:
    """The run's checkpoint path ("" for a tracker that records nothing): a new run gets
    its params, checkpoint tag and config file; a resumed one goes on as it was. Either logs
    the data set as its input."""
    if not tracker.enabled:
        return ""
    path = resume.path if resume else ""
    if resume is None:
        tracker.log_params(flatten(config))
        path = str(checkpoint_path(config.population.checkpoint_dir, tracker.run_id))
        tracker.set_tag(CHECKPOINT_TAG, path)
        tracker.log_text(yaml.safe_dump(flatten(config), sort_keys=False), "config.yaml")
    tracker.log_inputs(dataset_inputs(config.data, data))
    return path


def add_best_over_rounds(history: list[dict[str, Any]], result: RoundResult) -> None:
    """Add each network's best test accuracy so far (``best_test_acc``) and the
    population's (``best_test_acc_over_rounds``), as the authors report it. Both are chosen
    on the test set, so they flatter; the final accuracy stays the headline."""
    earlier = [h["networks"] for h in history]
    for k, network in enumerate(result.networks):
        network["best_test_acc"] = max(
            [network["test_acc"]] + [nets[k]["test_acc"] for nets in earlier]
        )
    result.population["best_test_acc_over_rounds"] = max(
        n["best_test_acc"] for n in result.networks
    )


def _payload(config, round_index, population, history, records) -> dict[str, Any]:
    return {
        "round": round_index,
        "config": flatten(config),
        "states": population.states(),
        "history": history,
        "records": records,
    }


def _log_final_artifacts(tracker, config, states, history, records, soup=None) -> None:
    tracker.log_table(records, RECORDS_ARTIFACT)
    if config.tracking.plots:
        from graftune.tracking import plots  # matplotlib costs half a second; --no-plots skips it

        with tempfile.TemporaryDirectory() as tmp:
            plots.write_all(history, records, Path(tmp))
            tracker.log_artifacts(tmp, "plots")
    if config.tracking.log_weights:
        with tempfile.TemporaryDirectory() as tmp:
            for k, state in enumerate(states):
                torch.save(state["model"], Path(tmp) / f"net{k}.pt")
            if soup is not None:
                torch.save(soup, Path(tmp) / "soup.pt")
            tracker.log_artifacts(tmp, "weights")


def _log_final_networks(tracker, config, data, states, result: ExperimentResult) -> None:
    """Mark the best network; log every network as an MLflow model and register the best.

    An architecture that ``torch.export`` cannot trace must not fail a finished run: its
    weights and checkpoint are kept, and the run says why it has no models."""
    tracker.set_tag(BEST_MODEL_TAG, f"net{result.best}")
    t = config.tracking
    if not t.log_models:
        return
    try:
        result.model_ids = log_networks(
            tracker, config.model.model, data, states, result.final, flatten(config)
        )
    except Exception as error:  # noqa: BLE001 (torch.export raises many kinds)
        reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
        tracker.set_tag("graftune.log_models_error", reason)
        warnings.warn(
            f"graftune: the networks were not logged as MLflow models ({reason})", stacklevel=2
        )
        return
    if result.soup is not None:  # not in model_ids: those are net{k}'s, by k
        log_soup(tracker, config.model.model, data, result.soup, result.final, flatten(config))
    best_id = result.model_ids[result.best]
    tracker.set_tag(BEST_MODEL_ID_TAG, best_id)
    if t.register_model:
        version = tracker.register_model(best_id, t.register_model)
        result.registered = f"{t.register_model} version {version}"
        tracker.set_tag(REGISTERED_TAG, f"{t.register_model}/{version}")
