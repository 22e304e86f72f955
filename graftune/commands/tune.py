"""``python -m graftune.tune``: search grafting settings with Ray Tune; a trial is one population.

python -m graftune.tune --search-space searchspaces/default.yaml --num-samples 20
python -m graftune.tune --search-space searchspaces/table5.yaml --num-models 2   # a grid
python -m graftune.tune --search-space searchspaces/default.yaml --resume        # go on

Each trial reserves a placement group of 1 + num_models bundles (its driver, then one per
worker), runs :func:`graftune.tracking.experiment.run_experiment` in it as an MLflow run nested under
the search's parent run, and reports the population metrics and a checkpoint every round.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import optuna
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from rich.console import Console

from graftune.commands.cli import (
    OneLineParser,
    add_setting_flags,
    config_from_args,
    fail,
    init_ray,
    quiet_libraries,
    typed_settings,
)
from graftune.commands.search_report import METRICS, describe, report_best
from graftune.commands.searchspace import (
    SearchSpace,
    SearchSpaceError,
    load_search_space,
)
from graftune.commands.trial import DRIVER_BUNDLE, run_trial, trial_resources
from graftune.config import (
    Config,
    ConfigError,
    flag_name,
    flatten,
    from_flat,
    validate,
    with_overrides,
)
from graftune.data import DataError, ImageSet, load_dataset
from graftune.models import list_models
from graftune.tracking.description import search_description
from graftune.tracking.tracker import (
    PARENT_TAG,
    Tracker,
    open_store,
    resolve_tracking_uri,
)

STATE_FILE = "graftune-search.json"  # in the Tune experiment dir: what --resume needs
INTERRUPTED = 130  # exit code of a search stopped by Ctrl+C (128 + SIGINT)

console = Console(stderr=True, soft_wrap=True)  # a finished trial is one line


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m graftune.tune",
        description="Search grafting settings with Ray Tune and Optuna; each trial trains "
        "one population. Settings not in the search space stay fixed at their flags.",
    )
    add = parser.add_argument_group("search").add_argument
    # fmt: off
    add("--search-space", help="YAML search space (see searchspaces/README.md)")
    add("--num-samples", type=int, default=None,
        help="trials for Optuna (default 10); with a grid: repeats of the grid (default 1)")
    add("--metric", choices=METRICS, default="mean_test_acc",
        help="population metric to maximise, at each trial's last round")
    add("--asha", action="store_true", help="stop weak trials early (ASHA)")
    add("--grace-period", type=int, default=1,
        help="ASHA: rounds every trial runs before it may be stopped")
    add("--reduction-factor", type=float, default=3.0,
        help="ASHA: keep 1 in this many trials at each rung")
    add("--max-concurrent-trials", type=int, default=0,
        help="0 = as many as the cluster's resources allow")
    add("--storage-path", default="./tune-results", help="where Tune keeps searches")
    add("--name", help="the search's folder under --storage-path and its MLflow parent run "
        "(default: the search space's file name)")
    add("--output", help="JSON file of the best configuration (default: the search's "
        "folder/best.json)")
    add("--resume", dest="resume_search", action="store_true",  # population's resume: a run id
        help="continue the stopped search --name (its stored settings win)")
    # fmt: on
    # --resume is the search's here; a trial sets the population's resume run id itself.
    add_setting_flags(parser, skip=("resume",))
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    try:
        args, config, space, state = prepare(build_parser().parse_args(argv))
        open_store(config.tracking.tracking_uri)
        data = load_dataset(config.data)
    except (ConfigError, DataError, ValueError) as error:
        fail(str(error))
    where = init_ray()
    cluster = ray.cluster_resources()
    if space is not None:  # a new search: size the workers, open the parent run
        config = fit_workers(config, space, cluster, where)
        state = start_search(args, config, space, state)
    tracker = Tracker(config.tracking.tracking_uri, run_id=state["parent_run_id"])
    verb, trials = "resuming" if args.resume_search else "starting", state["trials"]
    console.print(
        f"graftune.tune: {verb} search '{state['name']}': {trials} trial{'s' * (trials != 1)}, "
        f"{state['searcher']}, {config.model.model} on {config.data.dataset} "
        f"({len(data.train_labels)} train images), {where}"
    )
    status = "FAILED"
    try:
        results = make_tuner(args, config, data, state, cluster).fit()
        if interrupted(results, state["trials"]):
            status = "KILLED"
            return stopped(state, config)
        best = report_best(results, state, tracker)
        status = "FINISHED" if best else "FAILED"
        return 0 if best else 1
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)


def prepare(args) -> tuple[Any, Config, SearchSpace | None, dict[str, Any]]:
    """Everything that can be wrong with the input, checked before Ray starts."""
    if "://" in args.storage_path:  # state and population files are written with pathlib
        raise ValueError(
            f"--storage-path {args.storage_path}: URIs are not supported yet; use a local "
            "path, or one on a filesystem every node mounts (see cluster/README.md)"
        )
    storage = Path(args.storage_path).expanduser().resolve()
    name = args.name or (Path(args.search_space).stem if args.search_space else "")
    if not name:
        raise ValueError("--search-space is required (or --name with --resume)")
    path = storage / name
    if args.resume_search:
        state_file = path / STATE_FILE
        if not tune.Tuner.can_restore(str(path)) or not state_file.exists():
            raise ValueError(f"--resume: no search to continue at {path}; check --name")
        state = json.loads(state_file.read_text())
        if args.output:
            state["output"] = str(Path(args.output).resolve())
        return args, from_flat(state["settings"]), None, state
    if not args.search_space:
        raise ValueError("--search-space is required")
    if tune.Tuner.can_restore(str(path)):
        raise ValueError(
            f"--name {name}: a search already exists at {path}; "
            f"add --resume to continue it or pick another --name"
        )
    check_search_flags(args)
    config = validate(config_from_args(args), known_models=list_models())
    try:
        space = load_search_space(args.search_space, config, list_models())
    except SearchSpaceError as error:
        raise ValueError(str(error)) from None
    fixed = sorted(set(typed_settings(args)) & set(space.settings))
    if fixed:
        raise ValueError(
            f"{flag_name(fixed[0])} is searched by {args.search_space}; drop the flag or the key"
        )
    return args, absolute_paths(config, path), space, {"name": name, "path": str(path)}


def check_search_flags(args) -> None:
    rules = [
        (args.num_samples is None or args.num_samples >= 1, "--num-samples", ">= 1"),
        (args.grace_period >= 1, "--grace-period", ">= 1"),
        (args.reduction_factor > 1, "--reduction-factor", "> 1"),
        (args.max_concurrent_trials >= 0, "--max-concurrent-trials", ">= 0"),
    ]
    for ok, flag, rule in rules:
        if not ok:
            raise ValueError(
                f"{flag} must be {rule}; got {getattr(args, flag[2:].replace('-', '_'))}"
            )


def absolute_paths(config: Config, path: Path) -> Config:
    """Trials run in their own working directories: give them absolute places to write.
    Population checkpoints default to the search's folder, beside Tune's."""
    checkpoints = config.population.checkpoint_dir
    if checkpoints == Config().population.checkpoint_dir:
        checkpoints = str(path / "populations")
    return with_overrides(
        config,
        {
            "tracking_uri": resolve_tracking_uri(config.tracking.tracking_uri),
            "checkpoint_dir": str(Path(checkpoints).expanduser().resolve()),
            "data_dir": str(Path(config.data.data_dir).expanduser().resolve()),
        },
    )


def fit_workers(config: Config, space: SearchSpace, cluster: dict, where: str) -> Config:
    """Fix each worker's CPU share for the whole search. Unless --cpus-per-worker is given,
    a worker gets one CPU, or less when the largest population in the space would not fit
    beside its driver bundle on this cluster."""
    largest = space.largest("num_models", config.population.num_models)
    cpus = config.population.cpus_per_worker
    if not cpus:
        spare = cluster.get("CPU", 1) - DRIVER_BUNDLE["CPU"]
        cpus = max(0.01, min(1.0, math.floor(spare / largest * 100) / 100))
    config = with_overrides(config, {"cpus_per_worker": cpus})
    needs = trial_resources({"num_models": largest}, config, cluster).required_resources
    short = [k for k, v in needs.items() if v > cluster.get(k, 0) + 1e-9]
    if short and not os.environ.get("RAY_ADDRESS"):  # a local Ray cannot grow: fail now
        fail(
            f"a trial with {largest} workers needs {needs} but {where} has "
            f"{ {k: cluster.get(k, 0) for k in needs} }; lower num_models in the search space "
            f"or --cpus-per-worker"
        )
    return config


def start_search(args, config: Config, space: SearchSpace, state: dict) -> dict[str, Any]:
    """Open the parent MLflow run, log the search, and store what --resume needs."""
    state.update(
        searcher="grid search" if space.has_grid else "Optuna TPE",
        metric=args.metric,
        num_samples=args.num_samples or (1 if space.has_grid else 10),
        output=str(Path(args.output or Path(state["path"]) / "best.json").resolve()),
        settings=flatten(config),
    )
    state["trials"] = state["num_samples"] * space.grid_size
    t = config.tracking
    tracker = Tracker(t.tracking_uri, t.experiment, t.run_name or f"search {state['name']}")
    fixed = {k: v for k, v in state["settings"].items() if k.split("/")[1] not in space.settings}
    flags = ("asha", "grace_period", "reduction_factor", "max_concurrent_trials")
    tracker.log_params(
        {
            **fixed,
            **{f"search/space/{k}": v for k, v in space.describe().items()},
            **{f"search/{k}": state[k] for k in ("searcher", "metric", "trials", "name", "path")},
            **{f"search/{k}": getattr(args, k) for k in flags},
        }
    )
    tracker.log_text(Path(space.path).read_text(), "search_space.yaml")
    tracker.set_description(search_description(state, None))
    state["parent_run_id"] = tracker.run_id
    Path(state["path"]).mkdir(parents=True, exist_ok=True)
    (Path(state["path"]) / STATE_FILE).write_text(json.dumps(state, indent=1))
    state["space"] = space  # not stored: on --resume Tune restores its own copy
    return state


def make_tuner(args, config: Config, data: ImageSet, state: dict, cluster: dict) -> tune.Tuner:
    # Tune's new console output prints a banner and tables even at verbose=0, and warns
    # about state snapshots when rounds are short; TrialLines prints what matters instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, base=config, data=data, parent_run_id=state["parent_run_id"]
        ),
        functools.partial(trial_resources, base=config, cluster=cluster),
    )
    if "space" not in state:  # --resume: Tune restores the space, searcher and scheduler
        return tune.Tuner.restore(
            state["path"], trainable, resume_unfinished=True, resume_errored=True
        )
    space: SearchSpace = state["space"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return tune.Tuner(
        trainable,
        param_space=space.param_space,
        tune_config=tune.TuneConfig(
            metric=args.metric,
            mode="max",
            search_alg=None if space.has_grid else OptunaSearch(seed=config.train.seed),  # TPE
            # Trials end after their last round by themselves; ASHA stops them at its rungs.
            scheduler=ASHAScheduler(
                time_attr="round",
                max_t=10**6,
                grace_period=args.grace_period,
                reduction_factor=args.reduction_factor,
            )
            if args.asha
            else None,
            num_samples=state["num_samples"],
            max_concurrent_trials=args.max_concurrent_trials or None,
        ),
        run_config=tune.RunConfig(
            name=state["name"],
            storage_path=str(Path(state["path"]).parent),  # absolute: Tune needs it so
            verbose=0,  # one line per finished trial instead (TrialLines)
            callbacks=[TrialLines(config.tracking.tracking_uri)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


class TrialLines(tune.Callback):
    """One console line per finished trial; a trial ASHA stopped has its MLflow run closed."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        done, total = result.get("round", 0), result.get("num_rounds", 0)
        verb = "finished" if done >= total else "stopped early"
        console.print(f"trial {trial.trial_id} {verb}: {describe(trial.config, result)}")
        if done < total and result.get("run_id"):
            client = MlflowClient(self.tracking_uri)
            client.set_tag(result["run_id"], "graftune.stopped_early", str(done))
            client.set_terminated(result["run_id"], status="KILLED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        console.print(f"[red]trial {trial.trial_id} failed; see {trial.path}/error.txt")


def interrupted(results, expected: int) -> bool:
    """Whether Ctrl+C ended the search. Tune marks the trials it stops then as terminated, so
    look at what they reported: an error, ``done`` (a scheduler stop, or the end in this
    session) or their last round (a trial that finished before a --resume)."""
    metrics = [r.metrics or {} for r in results if not r.error]
    ended = [m for m in metrics if m.get("done") or m.get("round", 0) >= m.get("num_rounds", 1)]
    return len(ended) + results.num_errors < max(len(results), expected)


def stopped(state: dict[str, Any], config: Config) -> int:
    """An interrupted search: close its trials' MLflow runs and say how to go on."""
    client = MlflowClient(config.tracking.tracking_uri)
    experiment = client.get_run(state["parent_run_id"]).info.experiment_id
    query = f"tags.`{PARENT_TAG}` = '{state['parent_run_id']}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment], query):
        client.set_terminated(run.info.run_id, status="KILLED")
    storage = Path(state["path"]).parent
    console.print(
        f"search '{state['name']}' stopped; continue it with:\n  python -m graftune.tune "
        f"--resume --name {state['name']} --storage-path {storage}"
    )
    return INTERRUPTED
