"""Ray and MLflow as the commands start them: their start-up chatter kept off the console.

Without this the first line a user sees is Ray's "Token authentication is enabled ... Set
RAY_AUTH_MODE=disabled to opt out" (advice we never want taken: the token stays on) or
MLflow's "Creating initial MLflow database tables", before graftune has said anything.
``--verbose`` brings them back. Nothing here parses arguments or ends the process, so Tune
trials use it too.
"""

from __future__ import annotations

import logging
import os

# logger -> level while quiet; a level that a warning does not pass silences the warning
QUIET = {
    "mlflow": logging.WARNING,
    "alembic": logging.WARNING,
    "ray": logging.WARNING,
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}
VERBOSE = {"mlflow": logging.INFO, "alembic": logging.INFO, "ray": logging.INFO}


def quiet_libraries(verbose: bool = False) -> None:
    """Keep MLflow's and Ray's start-up chatter off the terminal (or let it through when
    ``verbose``); graftune's own lines carry the news."""
    for name in QUIET:
        level = VERBOSE.get(name, logging.NOTSET) if verbose else QUIET[name]
        logging.getLogger(name).setLevel(level)


WORKER_DIED = "A worker died or was killed while executing a task"


def drop_ray_worker_death_messages() -> None:
    """Keep Ray's own multi-line "A worker died or was killed ..." off the console: the
    population says which worker died, where, and what happens next in one line of its own
    (population/liveness.py). Ray prints it from a thread of the driver through
    ``ray._private.worker.print_to_stdstream``, and no setting turns it off, so that one
    function is wrapped; every other message passes, and without the function (another Ray)
    nothing changes. The message stays in Ray's logs."""
    from ray._private import worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "graftune_filter", False):
        return

    def print_to_stdstream(data, ignore_prefix):
        lines = data.get("lines", ()) if isinstance(data, dict) else ()
        if data.get("pid") == "raylet" and any(WORKER_DIED in str(line) for line in lines):
            return None
        return original(data, ignore_prefix)

    print_to_stdstream.graftune_filter = True
    ray_worker.print_to_stdstream = print_to_stdstream


def init_ray(num_cpus: int | None = None, verbose: bool = False) -> str:
    """Join the cluster named by RAY_ADDRESS (as under ``ray job submit``) or start a local
    Ray; returns where we run. The dashboard of a local Ray stays off and on localhost."""
    import ray

    if ray.is_initialized():
        return "already connected"
    if not verbose:
        drop_ray_worker_death_messages()
    level = logging.INFO if verbose else logging.WARNING
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True, logging_level=level)
        return f"cluster at {os.environ['RAY_ADDRESS']}"
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        dashboard_host="127.0.0.1",
        logging_level=level,
        log_to_driver=True,
    )
    return "local Ray"


def beyond_local_ray(needs: dict[str, float], cluster: dict[str, float]) -> dict[str, float]:
    """What a local Ray (which cannot grow) has of ``needs`` when it has too little, else
    {}; always {} on a cluster (RAY_ADDRESS), which may still add nodes."""
    if os.environ.get("RAY_ADDRESS"):
        return {}
    if all(v <= cluster.get(k, 0) + 1e-9 for k, v in needs.items()):
        return {}
    return {k: cluster.get(k, 0) for k in needs}
