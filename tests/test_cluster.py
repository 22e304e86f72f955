"""The cluster path for real (DESIGN.md 2.6 and 3): a two-node Ray cluster made with
``ray start --head`` and ``ray start --address``, token authentication on, an MLflow
tracking server, and populations submitted with ``ray job submit``; plus checks that the
files in ``cluster/`` are what Ray, KubeRay and our command line accept.

Both nodes run on this machine, but each gets its own temp dir and its own HOME, as two
machines would: a path under ``~`` that exists where the job's driver runs (the head) is
missing on the worker node.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLUSTER_DIR = REPO / "cluster"
RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # the `ray` CLI of this interpreter
MARKER = "GRAFTUNE_TEST_CLUSTER"  # every process the fixture starts inherits this variable
START_TIMEOUT_S = 180  # nodes and the MLflow server, on a loaded 2-core machine
JOB_TIMEOUT_S = 420
# Settings of the caller that would point our processes elsewhere or at another token.
FOREIGN_ENV = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_TOKEN_PATH",
    "MLFLOW_TRACKING_URI",
    "GRAFTUNE_CACHE",
)
# --- processes this module starts, and only those, stopped for sure ---------------------


class Processes:
    """Commands started in their own sessions, with a unique marker in their environment.

    ``stop`` ends the leaders with SIGTERM (``ray start --block`` then stops its raylet,
    GCS and workers), and then SIGKILLs whatever still carries the marker: job drivers and
    workers that Ray started in sessions of their own. Nothing else on the machine (a Ray
    started by another test, a user's cluster) is touched, which ``ray stop`` cannot promise.
    """

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.marker = uuid.uuid4().hex
        self.leaders: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                args,
                env={**env, MARKER: self.marker},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.log_dir,
            )
        self.leaders.append(proc)
        return proc

    def marked(self) -> list[int]:
        """Live processes carrying our marker."""
        return processes_with(f"{MARKER}={self.marker}")

    def stop(self, grace_s: float = 20.0) -> None:
        for proc in self.leaders:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in self.leaders:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # still unreaped, so its group id is still ours
                os.killpg(proc.pid, signal.SIGKILL)
        for _ in range(10):  # workers may be forking while we look: look again
            pids = self.marked()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        for proc in self.leaders:
            proc.wait(timeout=10)


def processes_with(variable: str) -> list[int]:
    """Live processes whose environment holds ``variable`` ("NAME=value"; Linux /proc,
    elsewhere none are found)."""
    needle = variable.encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now, all different (held open together while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(
    check: Callable[[], Any], timeout_s: float, what: str, procs: Processes, *logs: str
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with the logs' tails if a
    started process died or the time ran out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        dead = [p.args[2:5] for p in procs.leaders if p.poll() is not None]
        if dead:
            pytest.fail(f"{what}: a process exited early: {dead}\n{log_tails(procs, logs)}")
        time.sleep(0.25)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{log_tails(procs, logs)}")


def log_tails(procs: Processes, names: tuple[str, ...], lines: int = 30) -> str:
    out = []
    for name in names:
        path = procs.log_dir / f"{name}.log"
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        out.append(f"--- {name}.log ---\n" + "\n".join(text))
    return "\n".join(out)


def alive_nodes(dashboard: str, token: str) -> dict[str, bool]:
    """node id -> is head, for the nodes the GCS reports alive."""
    status, body = http(f"{dashboard}/api/v0/nodes", token)
    nodes = json.loads(body)["data"]["result"]["result"] if status == 200 else []
    return {n["node_id"]: n["is_head_node"] for n in nodes if n["state"] == "ALIVE"}


def http(url: str, token: str | None = None, method: str = "GET") -> tuple[int, str]:
    """Status and body of one request; a refused connection is status 0."""
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


# --- the cluster ----------------------------------------------------------------------------


@dataclass
class LocalCluster:
    dashboard: str  # http://127.0.0.1:PORT, the Jobs API
    mlflow: str  # http://127.0.0.1:PORT
    token: str
    env: dict[str, str]  # what a client needs: RAY_AUTH_MODE=token and the token
    head_node: str
    worker_node: str
    head_home: Path  # HOME of the head node's processes, the job's driver included
    worker_home: Path
    worker_temp: Path  # --temp-dir of the worker node
    store: Path  # checkpoints and MLflow's files

    def get(self, path: str) -> Any:
        status, body = http(self.dashboard + path, self.token)
        assert status == 200, f"GET {path}: {status} {body[:300]}"
        return json.loads(body)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("cluster")
    # Ray's temp dir holds unix sockets, whose paths must stay short: not under pytest's.
    ray_temp = Path(tempfile.mkdtemp(prefix="gtray-"))
    head_home, worker_home, store = base / "head-home", base / "worker-home", base / "store"
    for folder in (head_home, worker_home, store):
        folder.mkdir()
    gcs, dashboard, client, agent_head, agent_worker, mlflow = free_ports(6)
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    env.update(
        RAY_AUTH_MODE="token",  # every node and client, as a real cluster needs
        RAY_AUTH_TOKEN=token,  # handed over as CI would; ~/.ray/auth_token is left alone
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # nothing to drain: stop at once
    )
    node = [
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(150 * 2**20),
        "--block",
        "--disable-usage-stats",
        "--node-ip-address",
        "127.0.0.1",
    ]
    procs = Processes(base)
    try:
        procs.start(
            "head",
            [
                *RAY,
                "start",
                "--head",
                "--port",
                str(gcs),
                *node,
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dashboard),
                "--ray-client-server-port",
                str(client),
                "--dashboard-agent-listen-port",
                str(agent_head),
                "--temp-dir",
                str(ray_temp / "head"),
            ],
            {**env, "HOME": str(head_home)},
        )
        procs.start(
            "mlflow",
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{store / 'mlflow.db'}",
                "--artifacts-destination",
                str(store / "artifacts"),
            ],
            {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        wait_for(
            lambda: "Ray runtime started" in (base / "head.log").read_text(errors="replace"),
            START_TIMEOUT_S,
            "ray start --head",
            procs,
            "head",
        )
        procs.start(
            "worker",
            [
                *RAY,
                "start",
                "--address",
                f"127.0.0.1:{gcs}",
                *node,
                "--dashboard-agent-listen-port",
                str(agent_worker),
                "--temp-dir",
                str(ray_temp / "worker"),
            ],
            {**env, "HOME": str(worker_home)},
        )
        dashboard_url = f"http://127.0.0.1:{dashboard}"

        def two_nodes_and_jobs_api() -> dict[str, bool] | None:
            nodes = alive_nodes(dashboard_url, token)
            jobs_up = http(f"{dashboard_url}/api/jobs/", token)[0] == 200
            return nodes if len(nodes) == 2 and jobs_up else None

        nodes = wait_for(
            two_nodes_and_jobs_api, START_TIMEOUT_S, "two nodes", procs, "head", "worker"
        )
        wait_for(
            lambda: http(f"http://127.0.0.1:{mlflow}/health")[0] == 200,
            START_TIMEOUT_S,
            "mlflow server",
            procs,
            "mlflow",
        )
        local = LocalCluster(
            dashboard_url,
            f"http://127.0.0.1:{mlflow}",
            token,
            env,
            head_node=next(n for n, head in nodes.items() if head),
            worker_node=next(n for n, head in nodes.items() if not head),
            head_home=head_home,
            worker_home=worker_home,
            worker_temp=ray_temp / "worker",
            store=store,
        )
        yield local
    finally:
        procs.stop()
        # Ray leaves read-only files behind; what cannot go stays in the system temp dir.
        subprocess.run(["rm", "-rf", str(ray_temp)], check=False, timeout=60)


# --- jobs -----------------------------------------------------------------------------------


def submit(cluster: LocalCluster, *run_args: str, runtime_env: Path | None = None) -> str:
    """``ray job submit`` of ``python -m graftune.run ...`` with cluster/runtime_env.yaml (or
    ``runtime_env``) and this checkout as the working dir, as cluster/README.md says;
    returns the submission id."""
    submission_id = f"graftune-test-{uuid.uuid4().hex[:8]}"
    runtime_env = runtime_env or CLUSTER_DIR / "runtime_env.yaml"
    args = [
        *RAY,
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--no-wait",
        *("--submission-id", submission_id, "--runtime-env", str(runtime_env)),
        *("--working-dir", str(REPO), "--", sys.executable, "-m", "graftune.run", *run_args),
        *("--tracking-uri", cluster.mlflow, "--checkpoint-dir", str(cluster.store / "checkpoints")),
    ]
    done = subprocess.run(
        args, env=cluster.env, cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"ray job submit failed:\n{done.stdout}\n{done.stderr}"
    return submission_id


def wait_for_job(cluster: LocalCluster, submission_id: str) -> str:
    """The job's logs once it SUCCEEDED; on failure or timeout, fail showing them."""
    path = f"/api/jobs/{submission_id}"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    status = "PENDING"
    while time.monotonic() < deadline:
        status = cluster.get(path)["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(0.5)
    logs = cluster.get(path + "/logs")["logs"]
    if status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        http(f"{cluster.dashboard}{path}/stop", cluster.token, method="POST")
    assert status == "SUCCEEDED", f"job {submission_id} is {status}:\n{logs[-4000:]}"
    return logs


def run_of(logs: str, cluster: LocalCluster):
    from mlflow.tracking import MlflowClient

    run_id = re.search(r"MLflow run: (\w+)", logs)
    assert run_id, f"no run id in the job's logs:\n{logs[-2000:]}"
    client = MlflowClient(cluster.mlflow)
    return client, client.get_run(run_id.group(1))


def write_tiny_image_zip(path: Path, classes: int = 2, train: int = 8, test: int = 4) -> None:
    """train/<class>/*.png and test/<class>/*.png, 32x32, one colour per class."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for split, count in (("train", train), ("test", test)):
            for c, i in itertools.product(range(classes), range(count)):
                pixels = np.full((32, 32, 3), 60 + 120 * c, np.uint8)
                pixels += rng.integers(0, 40, pixels.shape, dtype=np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, "PNG")
                archive.writestr(f"tiny/{split}/class{c}/{i}.png", png.getvalue())


# --- the tests on the cluster -----------------------------------------------------------


@pytest.mark.slow
def test_the_cluster_refuses_requests_without_the_token(cluster):
    jobs = f"{cluster.dashboard}/api/jobs/"
    assert http(jobs)[0] == 401
    assert http(jobs, token="not-" + cluster.token)[0] in (401, 403)
    assert http(jobs, token=cluster.token)[0] == 200


@pytest.mark.slow
def test_a_submitted_population_spreads_over_both_nodes_and_logs_to_mlflow(cluster):
    """One job for what a submitted run needs (one job: each costs a driver and workers):
    its workers spread over both nodes; the data, a zip only in the head's home (``~`` is
    another folder on the worker node), reaches the worker node through the object store;
    the code reaches it as the working dir; metrics and plots reach the tracking server."""
    write_tiny_image_zip(cluster.head_home / "tiny.zip")
    assert not (cluster.worker_home / "tiny.zip").exists()
    submission_id = submit(
        cluster,
        "--num-models",
        "2",
        "--model",
        "tiny_cnn",
        "--dataset",
        "imagefolder",
        "--data-dir",
        "~/tiny.zip",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--placement",
        "SPREAD",
    )
    logs = wait_for_job(cluster, submission_id)
    client, run = run_of(logs, cluster)
    assert "on imagefolder (16 train / 8 test images, in memory" in " ".join(logs.split())

    nodes = [w["node_id"] for w in json.loads(run.data.tags["graftune.workers"])]
    assert len(nodes) == 2 and set(nodes) == {cluster.head_node, cluster.worker_node}
    assert run.info.status == "FINISHED"
    for key in ("net0/test_acc", "net1/test_acc", "population/ensemble_test_acc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/accuracy.png" in plots  # served by the tracking server, not a local path

    # The working dir that reached the other node: the code, without history or data.
    packages = list(
        (cluster.worker_temp / "session_latest").glob(
            "runtime_resources/working_dir_files/_ray_pkg_*/"
        )
    )
    assert packages, "the worker node got no working dir"
    files = [p for p in packages[0].rglob("*") if p.is_file()]
    assert (packages[0] / "graftune" / "run.py").is_file()
    assert (packages[0] / "graftune" / "data" / "files.py").is_file()  # the package travels
    assert not {".git", "data", "checkpoints", "mlruns"} & {
        f.relative_to(packages[0]).parts[0] for f in files
    }
    assert sum(f.stat().st_size for f in files) < 5 * 2**20


@pytest.mark.slow
def test_a_submitted_streamed_set_is_read_and_averaged_on_every_node(cluster, tmp_path):
    """A streamed zip at a path both nodes see (as a shared filesystem gives them): only its
    listing travels, each worker decodes its own batches, none is skipped. The two networks,
    one per node, are averaged (``--source average``) through the object store, and the soup
    is made, recalibrated on streamed batches and logged every round."""
    write_tiny_image_zip(tmp_path / "tiny.zip")
    submission_id = submit(
        cluster,
        *"--num-models 2 --model tiny_cnn --dataset imagefolder --epochs 2".split(),
        *("--data-dir", str(tmp_path / "tiny.zip"), "--data-mode", "stream"),
        *"--image-size 16 --batch-size 4 --placement SPREAD --no-plots".split(),
        *"--source average --average-rate 0.5 --soup every_round --soup-bn-batches 2".split(),
    )
    logs = wait_for_job(cluster, submission_id)
    client, run = run_of(logs, cluster)
    assert "(16 train / 8 test images, streamed at 16 px)" in " ".join(logs.split())
    assert "images skipped as damaged: 0" in logs
    nodes = [w["node_id"] for w in json.loads(run.data.tags["graftune.workers"])]
    assert set(nodes) == {cluster.head_node, cluster.worker_node}
    assert run.data.params["data/data_mode"] == "stream"
    assert run.data.metrics["data/skipped_images"] == 0
    soups = client.get_metric_history(run.info.run_id, "population/soup_test_acc")
    assert [m.step for m in soups] == [1, 2]
    weights = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
    assert {"weights/net0.pt", "weights/net1.pt", "weights/soup.pt"} <= weights


@pytest.mark.slow
def test_a_population_survives_the_loss_of_a_node_mid_round(cluster, tmp_path):
    """Run last among the cluster tests: the worker node stays lost. Each worker's first
    interval is held (``worker.hold_if_asked``) until the worker node's processes are gone,
    so the node dies in the middle of round 1 with a worker on it."""
    from graftune.population.worker import HOLD_DIR

    hold = tmp_path / "hold"
    hold.mkdir()
    spec = yaml.safe_load((CLUSTER_DIR / "runtime_env.yaml").read_text())
    spec["env_vars"][HOLD_DIR] = str(hold)
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump(spec))
    for k in (0, 1):
        (hold / f"net{k}").touch()
    try:
        # resnet20: its states (1 MB) live in the object store of their node, not inline
        submission_id = submit(
            cluster,
            "--num-models",
            "2",
            "--model",
            "resnet20",
            "--dataset",
            "synthetic",
            "--synthetic-size",
            "128",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--placement",
            "SPREAD",
            "--cpus-per-worker",
            "0.5",
            "--no-log-weights",
            "--no-log-models",
            "--no-system-metrics",
            runtime_env=runtime_env,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all((hold / f"net{k}.held").exists() for k in (0, 1)):
            assert time.monotonic() < deadline, "the workers never started round 1"
            time.sleep(0.2)
        pids = processes_with(f"HOME={cluster.worker_home}")  # the worker node's
        assert pids, "no process of the worker node found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    finally:
        for k in (0, 1):
            (hold / f"net{k}").unlink(missing_ok=True)
    logs = wait_for_job(cluster, submission_id)
    client, run = run_of(logs, cluster)
    lost = [line for line in logs.splitlines() if "which was lost" in line]
    assert len(lost) == 1 and f"node {cluster.worker_node[:8]}" in lost[0], logs[-3000:]
    assert "round 1 starts again" in lost[0]
    for key in ("net0/test_acc", "net1/test_acc", "population/mean_test_acc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    assert run.info.status == "FINISHED"


# --- the files in cluster/, checked without a cluster ------------------------------------


def test_runtime_env_file_is_a_valid_runtime_env_that_leaves_data_behind(tmp_path):
    from ray._private.runtime_env.packaging import create_package  # what job submit zips
    from ray.runtime_env import RuntimeEnv

    spec = yaml.safe_load((CLUSTER_DIR / "runtime_env.yaml").read_text())
    RuntimeEnv(**spec)  # raises on unknown fields or wrong types
    assert spec["working_dir"] == "."
    assert spec["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")

    def uploaded(root: Path) -> set[str]:
        target = tmp_path / f"{root.name}.zip"
        create_package(str(root), target, include_gitignore=True, excludes=spec["excludes"])
        return {name for name in zipfile.ZipFile(target).namelist() if not name.endswith("/")}

    # Every module of the package travels (graftune/data/ too, which data/ would match) ...
    repo = CLUSTER_DIR.parent
    modules = {str(p.relative_to(repo)) for p in (repo / "graftune").rglob("*.py")}
    assert modules and modules <= uploaded(repo)
    # ... and data, checkpoints and MLflow's local files stay behind.
    tree = tmp_path / "job"
    for name in [
        "graftune/data/files.py",
        "data/cifar-10-batches-py/data_batch_1",
        "checkpoints/run/net0.pt",
        "mlflow.db",
        "cifar10.zip",
        ".git/HEAD",
    ]:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("x")
    assert uploaded(tree) == {"graftune/data/files.py"}


def test_cluster_launcher_file_passes_rays_schema_and_keeps_auth_on():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER_DIR / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(config))  # what `ray up` checks: unknown keys fail
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "~/.ray/auth_token" in config["file_mounts"]
    gpu_types = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu_types and all(t["resources"]["GPU"] == 1 for t in gpu_types)


def test_rayjob_manifest_runs_graftune_with_token_auth_on_gpu_workers():
    from ray.runtime_env import RuntimeEnv

    docs = list(yaml.safe_load_all((CLUSTER_DIR / "rayjob.yaml").read_text()))
    job = next(d for d in docs if d and d.get("kind") == "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m graftune.run --num-models 4")
    run_args = shlex.split(spec["entrypoint"])[3:]
    from graftune.commands import run

    run.build_parser().parse_args(run_args)  # every flag exists
    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    cluster_spec = spec["rayClusterSpec"]
    assert cluster_spec["authOptions"]["mode"] == "token"
    groups = cluster_spec["workerGroupSpecs"]
    limits = [c["resources"]["limits"] for g in groups for c in g["template"]["spec"]["containers"]]
    assert any(str(limit.get("nvidia.com/gpu")) == "1" for limit in limits)


def readme_commands(prefix: str) -> list[list[str]]:
    """The arguments after ``prefix`` of each command line in cluster/README.md's code."""
    text = (CLUSTER_DIR / "README.md").read_text()
    code = "\n".join(re.findall(r"```(?:bash)?\n(.*?)```", text, re.S)).replace("\\\n", " ")
    lines = [" ".join(shlex.split(line, comments=True)) for line in code.splitlines()]
    return [shlex.split(line.split(prefix, 1)[1]) for line in lines if prefix in line]


def test_readme_command_lines_use_flags_that_exist():
    from graftune.commands import run, tune

    # the entry points users type (graftune.run), not the modules behind them
    for entry, module in (("graftune.run", run), ("graftune.tune", tune)):
        commands = readme_commands(f"python -m {entry}")
        assert commands, f"cluster/README.md shows no python -m {entry} command"
        for args in commands:
            module.build_parser().parse_args(args)  # a wrong flag exits with code 2
    submits = readme_commands("ray job submit")
    assert submits and all("--working-dir" in args for args in submits)
    assert all("--runtime-env" in args for args in submits)


def test_cluster_files_name_no_path_of_this_checkout():
    assert not [p.name for p in CLUSTER_DIR.iterdir() if str(REPO) in p.read_text()]
