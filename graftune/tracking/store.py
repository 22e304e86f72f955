"""The tracking store, checked at start-up without writing anything into it.

A command checks its store before the data loads and Ray starts, so that a bad URI is one
line, not an error after the first round. The check must not leave anything behind: a run
refused later for its data or settings would otherwise leave an empty store (MLflow makes a
SQLite file, and its folder, on first use). The store itself is made when the run starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import requests
from mlflow.tracking import MlflowClient

from graftune.config import ConfigError

DEFAULT_STORE = "mlflow.db"  # SQLite file in the working directory: MLflow 3 has no ./mlruns store
PROBE_TIMEOUT_S = 5.0  # one try: MLflow's own client retries for minutes before it gives up
SUPPORTED = "use sqlite:///PATH.db, http(s)://HOST:PORT, or leave it empty for ./mlflow.db"


def resolve_tracking_uri(uri: str = "") -> str:
    """The flag, else MLFLOW_TRACKING_URI, else a SQLite file in the working directory."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri or f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:`` URI (None for another scheme or an in-memory database)."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url  # MLflow's own parser of database URIs

    database = make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


def probe_server(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Refuse (ConfigError) an http(s) tracking server that does not answer, after one try.

    Any HTTP answer counts, even an error status or a TLS complaint: the server is there,
    and MLflow's own check then says what is wrong with it."""
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
    except requests.exceptions.SSLError:
        return
    except requests.exceptions.InvalidURL as error:  # a port over 65535, a bad host name
        raise ConfigError(f"--tracking-uri {uri} is not a valid URL ({error})") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
        reason = f"no answer in {timeout_s:g} s"
        if not isinstance(error, requests.exceptions.Timeout):
            reason = "connection refused or host not found"
        raise ConfigError(
            f"--tracking-uri {uri} does not answer ({reason}); start the server or fix the URI"
        ) from None


def new_file(database: Path, uri: str) -> None:
    """Refuse (ConfigError) a SQLite file that MLflow could not make when the run starts."""
    if database.exists():
        raise ConfigError(f"--tracking-uri {uri}: {database} is not a file")
    existing = next(p for p in database.resolve().parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--tracking-uri {uri}: {existing} is not a folder that can be written")


def answers(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the tracking server at ``uri`` answers one quick try."""
    try:
        probe_server(uri, timeout_s)
    except ConfigError:
        return False
    return True


def open_store(uri: str = "") -> MlflowClient | None:
    """A client for the tracking store, checked by one read; None for a SQLite store that
    does not exist yet (nothing can be wrong inside it, and it is made when the run starts).

    MLflow only reports a bad URI (an unknown scheme, a file that is not a database, a
    server that does not answer) when it is first used; without this check that would be
    after the data has loaded, or after the first round."""
    resolved = resolve_tracking_uri(uri)
    if resolved.startswith(("http://", "https://")):
        probe_server(resolved)
    database = sqlite_file(resolved)
    if database is not None and not database.is_file():
        new_file(database, resolved)
        return None
    try:
        client = MlflowClient(resolved)
        client.search_experiments(max_results=1)
    except Exception as error:  # MLflow raises a different type for each kind of store
        raise ConfigError(
            f"--tracking-uri {resolved!r}: MLflow cannot open it ({type(error).__name__}); "
            f"{SUPPORTED}"
        ) from None
    return client
