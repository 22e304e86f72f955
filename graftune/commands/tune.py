"""``python -m graftune.tune``: search grafting settings with Ray Tune; a trial is one population.

python -m graftune.tune --num-samples 20                  # the default space: A, c, lr, K
python -m graftune.tune --search-space searchspaces/table5.yaml --num-models 2   # a grid
python -m graftune.tune --resume                          # go on with the default search

Each trial reserves a placement group of one bundle for its driver, then one per worker
(a worker per network, or per core on CPUs when there are more networks), runs :func:`graftune.tracking.experiment.run_experiment` in it as an MLflow run
nested under the search's parent run, and reports the population metrics and a checkpoint
every round. The parts: ``search_setup`` (checks), ``worker_sizing``, ``parent_run``,
``tuner``, ``trial`` and ``trial_lines`` (the console).
"""

from __future__ import annotations

import ray

from graftune.commands.cli import OneLineParser, add_setting_flags
from graftune.commands.libraries import init_ray
from graftune.commands.parent_run import INTERRUPTED, interrupted, start_search, stopped
from graftune.commands.search_report import METRICS, SOUP_METRIC, report_best
from graftune.commands.search_setup import prepare
from graftune.commands.searchspace import DEFAULT_SPACE
from graftune.commands.startup import Startup, bad_input_is_one_line, start
from graftune.commands.trial_lines import TrialLines, console
from graftune.commands.tuner import make_tuner
from graftune.commands.worker_sizing import fit_workers
from graftune.config import Config
from graftune.data import describe
from graftune.tracking.tracker import Tracker

__all__ = ["INTERRUPTED", "TrialLines", "build_parser", "main"]


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m graftune.tune",
        description="Search grafting settings with Ray Tune and Optuna; each trial trains "
        "one population. Settings not in the search space stay fixed at their flags.",
    )
    add = parser.add_argument_group("search").add_argument
    add(
        "--search-space",
        help="YAML search space (see searchspaces/README.md); default: A, c, lr and "
        "num_models (graftune/searchspaces/default.yaml)",
    )
    add(
        "--num-samples",
        type=int,
        default=None,
        help="trials for Optuna (default 10); with a grid: repeats of the grid (default 1)",
    )
    add(
        "--metric",
        choices=(*METRICS, SOUP_METRIC),
        default="mean_test_acc",
        help="population metric to maximise, at each trial's last round",
    )
    add("--asha", action="store_true", help="stop weak trials early (ASHA)")
    add(
        "--grace-period",
        type=int,
        default=1,
        help="ASHA: rounds every trial runs before it may be stopped",
    )
    add(
        "--reduction-factor",
        type=float,
        default=3.0,
        help="ASHA: keep 1 in this many trials at each rung",
    )
    add(
        "--max-concurrent-trials",
        type=int,
        default=0,
        help="0 = as many as the cluster's resources allow",
    )
    add("--storage-path", default="./tune-results", help="where Tune keeps searches")
    add(
        "--name",
        help="the search's folder under --storage-path and its MLflow parent run "
        "(default: the search space's file name)",
    )
    add(
        "--output",
        help="JSON file of the best configuration (default: the search's folder/best.json)",
    )
    # --resume is the search's here (dest resume_search); a trial sets the population's
    # resume run id itself, so that setting has no flag.
    add(
        "--resume",
        dest="resume_search",
        action="store_true",
        help="continue the stopped search --name (its stored settings win: setting flags "
        "typed with it are checked, then ignored with a warning)",
    )
    add_setting_flags(parser, skip=("resume",))
    return parser


def configure(startup: Startup) -> Config:
    config, startup.extra = prepare(startup.args)
    return config


def main(argv: list[str] | None = None) -> int:
    startup = start(build_parser(), argv, configure)
    args, config, data, state = startup.args, startup.config, startup.data, startup.extra
    where = init_ray(verbose=args.verbose)
    cluster = ray.cluster_resources()
    if state.space is not None:  # a new search: size the workers, open the parent run
        with bad_input_is_one_line():
            config = fit_workers(config, state.space, cluster, where)
        state = start_search(args, config, state.space, state)
    tracker = Tracker(config.tracking.tracking_uri, run_id=state.parent_run_id)
    verb, trials = "resuming" if args.resume_search else "starting", state.trials
    space = ""
    if state.space is not None and state.space.path == DEFAULT_SPACE:
        space = f" of the default search space ({', '.join(state.space.settings)})"
    console.print(
        f"graftune.tune: {verb} search '{state.name}'{space}: {trials} "
        f"trial{'s' * (trials != 1)}, "
        f"{state.searcher}, {config.model.model} on {config.data.dataset} "
        f"({len(data.train_labels)} train images, {describe(data)}), {where}"
    )
    status = "FAILED"
    try:
        results = make_tuner(args, config, data, state, cluster).fit()
        if interrupted(results, state.trials):
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
