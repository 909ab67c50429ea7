"""All scan kernels on one GPU, in one run: correctness at full size first (relative error against
a float64 reference), then timings (CUDA events, median, inputs rotated), one table at the end.

    python -m bench.kernels            # everything (eager and torch.compile baselines included)
    python -m bench.kernels --quick    # main shape only, no eager/compile baselines
    python -m bench.kernels --no-baselines   # every T for our kernels and fla
    python -m bench.kernels --no-baselines --no-variants   # and no tile-variant rows

Sections: bench/selective_scan.py (diagonal selective scan, fla chunk_hgrn as the outside
reference) and bench/rwkv7.py (RWKV-7, fla chunk_rwkv7 / fused_recurrent_rwkv7). Record the table
with date, GPU and command in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

import torch

from bench.common import fmt, progress

__all__ = ["main"]

COLUMNS = ["op", "impl", "T", "pass", "ms", "us", "GB/s", "%copy", "rel_err", "note"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="main shape only, no eager/compile")
    parser.add_argument("--ops", default="selective_scan,rwkv7", help="sections to run")
    parser.add_argument(
        "--no-baselines", action="store_true", help="every T, but no eager/torch.compile rows"
    )
    parser.add_argument(
        "--no-variants",
        action="store_true",
        help="no rows for other tile configurations of the diagonal scan (chosen earlier)",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/kernels.py needs a CUDA GPU")
    rows: list[dict[str, Any]] = []
    ops = args.ops.split(",")
    if "selective_scan" in ops:
        from bench import selective_scan

        for row in selective_scan.iter_rows(
            quick=args.quick, baselines=not args.no_baselines, variants=not args.no_variants
        ):
            rows.append(row)
            progress(row)
    if "rwkv7" in ops:
        from bench import rwkv7

        ours = ("triton chunk", "triton fused_recurrent", "fla chunk_rwkv7")
        rows += rwkv7.rows(quick=args.quick, impl_names=ours if args.no_baselines else None)
    print(
        f"# {datetime.date.today()} {torch.cuda.get_device_name()} torch {torch.__version__} "
        f"triton {__import__('triton').__version__}"
    )
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(fmt(row.get(c)) for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
