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


def init_ray(num_cpus: int | None = None, verbose: bool = False) -> str:
    """Join the cluster named by RAY_ADDRESS (as under ``ray job submit``) or start a local
    Ray; returns where we run. The dashboard of a local Ray stays off and on localhost."""
    import ray

    if ray.is_initialized():
        return "already connected"
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
