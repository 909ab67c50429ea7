"""`statecast` command line: thin wrappers over library functions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from forecast import KINDS
    from pipelines.quickstart import QuickstartConfig, run_quickstart

    if args.model not in KINDS:
        raise SystemExit(f"statecast demo: --model must be one of {KINDS}")
    cfg = QuickstartConfig(
        data=Path(args.data) if args.data else QuickstartConfig.data,
        kind=args.model,
        steps=args.steps,
        horizon=args.horizon,
        progress=not args.no_progress,
    )
    res = run_quickstart(cfg)
    print(
        f"model {cfg.kind}: trained {cfg.steps} steps "
        f"in {res.train_seconds:.1f} s on {cfg.data.name}"
    )
    print(
        f"validation MSE (scaled, H={cfg.horizon}): {res.val_mse:.4f}   "
        f"naive last value: {res.naive_mse:.4f}"
    )
    print(f"hidden state per series: {res.state_nbytes} bytes (constant)")
    q = res.quantiles
    print(
        f"forecast after streaming to {res.last_timestamp} (channel, step: "
        + ", ".join(f"q{x:g}" for x in q)
        + ")"
    )
    for c, name in enumerate(res.channels):
        cells = []
        for h in (0, cfg.horizon // 2, cfg.horizon - 1):
            band = "/".join(f"{v:.2f}" for v in res.forecast[h, c])
            cells.append(f"+{h + 1}h {band}")
        print(f"  {name:>5}: " + "   ".join(cells))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statecast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small model on the bundled ETTh1 CSV and forecast")
    demo.add_argument(
        "--model", default="selective_ssm", help="diagonal_ssm, selective_ssm or rwkv7"
    )
    demo.add_argument("--data", default=None, help="a benchmark-style CSV (default: bundled ETTh1)")
    demo.add_argument("--steps", type=int, default=150, help="training steps")
    demo.add_argument("--horizon", type=int, default=24)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(fn=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
