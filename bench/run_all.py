"""`make bench`: every benchmark, one after the other (never side by side: 2 cores), each printing
its own ratios and writing bench/out/<name>.json. Pass names to run a subset:

    .venv/bin/python bench/run_all.py [pipeline rpc clip_quality ...]
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "pipeline": ["bench_pipeline.py"],
    "rpc": ["bench_rpc.py"],
    "clip_quality": ["bench_clip_quality.py"],
    "clip_throughput": ["bench_clip_throughput.py"],
    "simclr_quality": ["bench_simclr_quality.py"],
    "simclr_throughput": ["bench_simclr_throughput.py"],
    "vilt_quality": ["bench_vilt_quality.py"],
    "vilt_throughput": ["bench_vilt_throughput.py"],
}


def main(names: list[str]) -> int:
    failed = []
    for name in names or list(BENCHES):
        script, *args = BENCHES[name]
        if not (HERE / script).exists():
            continue
        print(f"\n=== {name} ({script}) ===", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, "-W", "ignore", str(HERE / script), *args])
        print(f"=== {name}: exit {rc}, {time.monotonic() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
