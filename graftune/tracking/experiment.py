"""One tracked, checkpointed population run: what ``graftune.run`` and each Tune trial do.

Resume continues the same MLflow run at the round after the last checkpoint, with the
history and graft records that the checkpoint carries, so no finished round is lost or
logged twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
import yaml

from graftune.config import Config, flatten
from graftune.data import ImageSet, StreamSet
from graftune.population.population import Population, RoundResult
from graftune.population.resources import placement_line
from graftune.population.rounds import run_population
from graftune.tracking.checkpoint import Resume, checkpoint_path, save_checkpoint
from graftune.tracking.dataset_input import dataset_inputs
from graftune.tracking.description import run_description
from graftune.tracking.final import log_final_artifacts, log_final_networks
from graftune.tracking.interrupt import RunStopped, exit_on_interrupt, stopped_line
from graftune.tracking.lease import DriverLease, lease_path
from graftune.tracking.logged_models import best_network
from graftune.tracking.null_tracker import NullTracker
from graftune.tracking.pending import PendingLog, StoreAway, away_line
from graftune.tracking.resume import resume_overrides
from graftune.tracking.tracker import CHECKPOINT_TAG, Tracker, open_tracker, round_metrics

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
    skipped_images: int = 0  # streamed images that failed to decode mid-run, resumes included
    soup: dict[str, Any] | None = field(default=None, repr=False)  # the last soup's weights

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass
class LoggedRound(RoundResult):
    """A finished round as the experiment recorded it: where it was logged and checkpointed."""

    run_id: str = ""  # the MLflow run this round was logged to
    checkpoint: str = ""  # the checkpoint written after this round ("" if none was)


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
    # Resumed workers count damaged images anew; each epoch meets every one of them again,
    # so the count before the stop stands until the resumed run has met as many.
    skipped_before = int(payload.get("skipped_images", 0)) if payload else 0
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
                result.skipped_images = max(skipped_before, round_result.skipped_images)
                metrics["data/skipped_images"] = result.skipped_images
            pending.log(metrics, round_result.round)
            logged = LoggedRound(**vars(round_result), run_id=tracker.run_id)
            last = round_result.round == population.num_rounds
            due = last or round_result.round % config.population.checkpoint_every == 0
            if path and due:
                state = _payload(config, round_result.round, population, history, records)
                state.update(resumes=resumes, pending=list(pending.items))
                state.update(skipped_images=result.skipped_images)
                logged.checkpoint = str(save_checkpoint(path, state))
                saved_round, last_state = round_result.round, state
            if on_round is not None:
                on_round(logged)

        run_population(population, first_round, finish_round)
        result.best = best_network(result.final)
        result.states = population.states()
        if not pending.ready_for_final():  # the final results wait with the metrics, for --resume
            raise _store_away(pending, path, last_state or payload, saved_round)
        if tracker.enabled:  # plots and exported models are made only to be logged
            try:
                log_final_artifacts(tracker, config, result.states, history, records, result.soup)
                log_final_networks(tracker, config, data, result.states, result)
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
