"""Start-up listing of a streamed image set (BENCHMARKS.md, "Streaming any image set"): the
headers of every image read by one process against a pool of one process per core, side by
side, alternating, each time with an empty listing cache.

    python benchmarks/bench_listing.py --data-dir DATA/gen-200k --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from graftune.data import headers


def listed(data_dir: str, parallel: bool) -> tuple[float, int]:
    """(wall seconds, images) of one listing from an empty cache."""
    headers.PARALLEL_FROM = 20_000 if parallel else sys.maxsize
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GRAFTUNE_CACHE"] = cache
        start = time.perf_counter()
        listing = headers.list_images(data_dir, 1 << 28)
        seconds = time.perf_counter() - start
    return seconds, sum(len(n) for n in listing.names.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = {"one process": [], f"{headers.usable_cpus()} processes": []}
    for _ in range(args.repeats):
        for name, parallel in zip(rows, (False, True)):
            seconds, images = listed(args.data_dir, parallel)
            rows[name].append(round(seconds, 2))
            print(f"{name}: {images:,} images in {seconds:.1f} s, {images / seconds:,.0f} a second")
    print(json.dumps({"data_dir": args.data_dir, "load_avg": os.getloadavg(), "seconds": rows}))


if __name__ == "__main__":
    main()
