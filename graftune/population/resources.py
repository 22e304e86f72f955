"""How many workers a population has, which networks each holds, and what each asks of
the cluster: CPUs and GPU shares that fit the nodes; fused, one network per worker, or on
CPUs a worker per core with its share of the networks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray

from graftune.config import Config, one_network_per_worker
from graftune.training.grouped import fusable


def worker_resources(
    config: Config,
    cluster: dict[str, float],
    largest_node_cpus: float | None = None,
    num_workers: int | None = None,
) -> dict[str, float]:
    """CPUs and GPUs of one of ``num_workers`` workers (default: one per network).

    A GPU each when the cluster has K of them, else an even share of its GPUs, with at most
    one CPU (data and augmentation live on the GPU). Without GPUs, an even share of the
    cluster's CPUs, and never more than the largest node holds, so that every worker fits on
    some node of a cluster with unequal nodes.
    """
    p = config.population
    workers = num_workers or p.num_models
    gpus = p.gpus_per_worker
    if gpus < 0:
        gpus = gpu_share(cluster.get("GPU", 0), p.num_models)
    share = cluster.get("CPU", 1) / workers
    if largest_node_cpus:
        share = min(share, largest_node_cpus)
    share = max(0.01, int(share * 100) / 100)
    cpus = p.cpus_per_worker or (min(1.0, share) if gpus else share)
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


def gpu_share(num_gpus: float, num_models: int) -> float:
    """A whole GPU each when there are K; else 1/n of one, with n workers on every GPU, so
    that the fractions fit whole GPUs (3 workers on 2 GPUs get 0.5 each, not 0.67)."""
    whole = int(num_gpus)
    if whole >= num_models:
        return 1.0
    if whole == 0:
        return 0.0
    per_gpu = math.ceil(num_models / whole)
    return math.floor(10_000 / per_gpu) / 10_000  # Ray takes GPU fractions to 4 decimals


def worker_threads(cpus: float, cores: int, node_cpus: float) -> int:
    """torch threads for a worker holding ``cpus`` of Ray's CPUs on a node that declares
    ``node_cpus`` (``ray start --num-cpus``, ``ray.init(num_cpus=...)``) and whose process
    may run on ``cores``: the worker's share of the real cores, at least one. Where a node
    declares more CPUs than it has cores, threads beyond the cores would spin against each
    other and multiply a step's CPU time."""
    if node_cpus > cores:
        cpus = cpus * cores / node_cpus
    return max(1, int(cpus))


def largest_node_cpus() -> float:
    """The most CPUs any alive node of the connected cluster has."""
    return max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]), default=0)


def cpu_workers(cluster: dict[str, float]) -> int:
    """The most unfused CPU workers a run starts: one per core that Ray gives it. A worker
    process costs hundreds of MB and seconds of start-up before its first network; beyond
    the cores, more of them only take turns, so extra networks share a worker instead
    (trained one after another, each as it would be alone)."""
    return max(1, int(cluster.get("CPU", 1)))


def contiguous(k: int, count: int) -> list[list[int]]:
    """Networks 0..k-1 in ``count`` even, contiguous groups, in ring order."""
    return [list(range(k))[w * k // count : (w + 1) * k // count] for w in range(count)]


def placement_line(layout: Layout) -> str:
    """How the networks were placed, in words, for the start-up line."""
    k, count = sum(len(g) for g in layout.groups), len(layout.groups)
    sizes = sorted({len(g) for g in layout.groups})
    each = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    workers = f"{k} network{'s' * (k != 1)} in {count} worker{'s' * (count != 1)}"
    if layout.fused:
        return f"{workers} (fused: {each} per worker, trained in one step)"
    if sizes == [1]:
        return f"{workers} (one each)"
    return f"{workers} ({each} per worker, trained one after another)"


@dataclass(frozen=True)
class Layout:
    """Which networks each worker holds, what one worker asks of the cluster, whether the
    workers fuse their networks, and why not where they would have (``note``)."""

    groups: list[list[int]]
    resources: dict[str, float]
    fused: bool
    note: str = ""


def worker_layout(
    config: Config,
    cluster: dict[str, float],
    largest_node_cpus: float | None = None,
    num_workers: int | None = None,
) -> Layout:
    """The workers of a population on ``cluster``.

    Fused (``--fuse on``, or ``auto`` with GPUs in the cluster and ``--gpus-per-worker``
    not 0): one worker per GPU (per ``--gpus-per-worker`` GPUs, if set), up to K, holding
    an even, contiguous share of the networks (K = 8 on 2 GPUs: two workers of four), or
    one worker for all of them on CPUs. Unfused (also where a setting needs that or the model
    cannot be fused, said in ``note``): one worker per network on GPUs and for
    ``--asynchronous``; on CPUs at most one worker per core (:func:`cpu_workers`), each
    training its share of the networks one after another.
    ``num_workers`` fixes the count (a Tune trial's placement group already has it, from
    this same function).
    """
    p = config.population
    k, gpus, asked = p.num_models, int(cluster.get("GPU", 0)), p.gpus_per_worker
    on_gpus = asked > 0 or (asked < 0 and gpus > 0)
    wanted = p.fuse == "on" or (p.fuse == "auto" and on_gpus and gpus > 0)
    note = one_network_per_worker(config) if wanted else ""  # --fuse on refused these
    if wanted and not note and (why := fusable(config.model.model)):
        note = f"{config.model.model} cannot be fused ({why})"
    if not wanted or note:
        count = num_workers or k
        if not on_gpus and not p.asynchronous:  # asynchronous rounds pace each network alone
            count = num_workers or min(k, cpu_workers(cluster))
        resources = worker_resources(config, cluster, largest_node_cpus, count)
        if note:
            note = f"{note}: {'one network per worker' if count == k else 'unfused'}"
        return Layout(contiguous(k, count), resources, False, note)
    per_worker = asked if asked > 0 else 1.0
    count = num_workers or (max(1, min(k, int(gpus / per_worker))) if on_gpus else 1)
    groups = contiguous(k, count)
    cpus = cluster.get("CPU", 1) / count
    if largest_node_cpus:
        cpus = min(cpus, largest_node_cpus)
    share = max(0.01, int(cpus * 100) / 100)
    if on_gpus:  # data and augmentation live on the GPU: one CPU is enough unless asked,
        # or unless the images are streamed: then the worker's CPUs decode them
        streamed = config.data.data_mode == "stream"
        cpus = p.cpus_per_worker or (share if streamed else min(1.0, share))
        gpu_worker = {"CPU": cpus, "GPU": per_worker}
        return Layout(groups, gpu_worker, True)
    return Layout(groups, {"CPU": p.cpus_per_worker or share}, True)
