"""Run every benchmark of issue #8 and update docs/benchmarks.md: one command.

    .venv/bin/python bench/run_all.py            # rollout overhead, backprop step, memory, log-prob reference
    .venv/bin/python bench/run_all.py --quick    # smoke run (tiny settings, docs untouched)
    .venv/bin/python bench/run_all.py --only memory,logprob_reference
    .venv/bin/python bench/run_all.py --ray      # also bench/ray_scaling.py (slow; needs Ray)
    .venv/bin/python bench/run_all.py --sample-efficiency   # also bench/sample_efficiency.py (~1 h or more)

Each benchmark runs in its own process (`bench/NAME.py`), one after the other, and replaces its own
section of docs/benchmarks.md; the Ray section is left alone unless `--ray` is given (then
`bench/ray_scaling.py --repeats 3` prints its table; that script does not edit the docs itself; see
the Ray section of docs/benchmarks.md for the environment it was run with). `--sample-efficiency`
also runs the label-budget study (`bench/sample_efficiency.py --domain digits`: CTRL against CFG,
classifier guidance and DPS at 100, 1,000 and all labels), which writes its table into
docs/benchmarks.md and its section of docs/results.md; with `--quick` it runs its smoke settings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("rollout_overhead", "backprop_step", "memory", "logprob_reference")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings; the docs are not written")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    ap.add_argument("--ray", action="store_true", help="also run bench/ray_scaling.py")
    ap.add_argument("--sample-efficiency", action="store_true",
                    help="also run bench/sample_efficiency.py --domain digits (long: about an hour on one core)")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; valid: {', '.join(BENCHMARKS)}")
    extra = [f for f, on in (("--quick", args.quick), ("--no-docs", args.no_docs)) if on]
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *extra]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        print(f"=== {name}: exit {rc} after {time.perf_counter() - start:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if args.ray:
        cmd = [sys.executable, str(HERE / "ray_scaling.py"), *(["--updates", "2", "--samples", "512"] if args.quick else ["--repeats", "3"])]
        print(f"\n=== ray_scaling: {' '.join(cmd[1:])}", flush=True)
        if subprocess.call(cmd, cwd=HERE.parent):
            failed.append("ray_scaling")
    if args.sample_efficiency:
        cmd = [sys.executable, str(HERE / "sample_efficiency.py"), "--domain", "digits", *extra]
        print(f"\n=== sample_efficiency: {' '.join(cmd[1:])}", flush=True)
        if subprocess.call(cmd, cwd=HERE.parent):
            failed.append("sample_efficiency")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
