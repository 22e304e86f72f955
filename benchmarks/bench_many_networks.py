"""Many networks on few cores: wall time, peak memory and processes of one whole run.

Runs ``python -m graftune.run --model tiny_cnn --dataset synthetic --epochs 1`` for each K
in a fresh local Ray and a fresh MLflow store, and samples the run's process tree (the
driver, Ray's own processes and its workers) every half second: how many processes, how
many of them Ray workers, and the sum of their memory (RSS counts pages that processes
share, such as the object store, once per process; PSS splits them, so its sum is what the
tree really holds). A run that has not finished within ``--timeout`` is stopped and
reported as unfinished, with what it had reached.

    python benchmarks/bench_many_networks.py --ks 2 16 64 --out benchmarks/results/many_networks_after.json
    python benchmarks/bench_many_networks.py --repo OTHER_CHECKOUT --out .../many_networks_before.json

``--repo`` is put first on the run's PYTHONPATH (and so its workers'), to measure another
checkout of graftune with this same script. ``--before OTHER_CHECKOUT`` measures both, one
after the other for each K (interleaved, so that both sides see the same load), and
``--before-ks`` limits the other checkout to some K (a run that cannot finish costs minutes
and most of the memory):

    python benchmarks/bench_many_networks.py --before OTHER_CHECKOUT --before-ks 2 16 \
        --out benchmarks/results/many_networks_interleaved.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def sample(processes: list[psutil.Process]) -> dict[str, float]:
    """Processes, Ray workers among them, and summed RSS and PSS (bytes) of the tree now."""
    rss = pss = workers = 0
    alive = 0
    for p in processes:
        try:
            info = p.memory_full_info()
            cmdline = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        alive += 1
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        workers += cmdline.startswith("ray::") or "default_worker.py" in cmdline
    return {"processes": alive, "workers": workers, "rss": rss, "pss": pss}


def measure(k: int, repo: Path, timeout_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"many-k{k}-") as tmp:
        argv = [
            *("-m", "graftune.run", "--model", "tiny_cnn", "--dataset", "synthetic"),
            *("--num-models", str(k), "--epochs", "1"),
            *("--no-log-models", "--no-plots", "--no-system-metrics", "--no-log-weights"),
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).strip(
            os.pathsep
        )
        log = Path(tmp) / "console.txt"
        start = time.perf_counter()
        with log.open("w") as out:
            run = subprocess.Popen(
                [sys.executable, *argv], cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT
            )
            root = psutil.Process(run.pid)
            peak = {"processes": 0, "workers": 0, "rss": 0, "pss": 0}
            while run.poll() is None and time.perf_counter() - start < timeout_s:
                now = sample(tree(root))
                peak = {key: max(peak[key], now[key]) for key in peak}
                time.sleep(0.5)
            finished = run.poll() is not None
            if not finished:  # stop the whole tree: Ray's processes do not end with the driver
                for p in reversed(tree(root)):
                    try:
                        p.kill()
                    except psutil.NoSuchProcess:
                        pass
                run.wait()
        wall = time.perf_counter() - start
        console = log.read_text()
    rounds = [line for line in console.splitlines() if re.match(r"round \d+/\d+:", line)]
    placed = [line for line in console.splitlines() if " networks in " in line]
    return {
        "K": k,
        "finished": finished and run.returncode == 0,
        "returncode": run.returncode,
        "wall_s": round(wall, 1),
        "peak_processes": peak["processes"],
        "peak_ray_workers": peak["workers"],
        "peak_rss_gib": round(peak["rss"] / 2**30, 2),
        "peak_pss_gib": round(peak["pss"] / 2**30, 2),
        "rounds_logged": len(rounds),
        "placement": placed[0] if placed else "",
        "tail": console.strip().splitlines()[-3:] if run.returncode else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 16, 64])
    parser.add_argument("--repo", type=Path, default=ROOT, help="the graftune checkout to run")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds a run may take")
    parser.add_argument("--before", type=Path, help="another checkout, measured interleaved")
    parser.add_argument("--before-ks", type=int, nargs="+", help="K for --before (default --ks)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the results")
    args = parser.parse_args()
    results = []
    for k in args.ks:
        sides = [("before", args.before), ("after", args.repo)] if args.before else []
        for side, repo in sides or [("", args.repo)]:
            if side == "before" and args.before_ks and k not in args.before_ks:
                continue
            results.append({"side": side, **measure(k, repo.resolve(), args.timeout)})
            print(json.dumps(results[-1]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "cores": psutil.cpu_count(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "python": platform.python_version(),
                    "timeout_s": args.timeout,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
