"""Prints the accuracy rows of a device call (bench/device/acc_sweepN.sh), one line each: the
val and test of the unshrunk model and of each shrink grouping (pipelines/shrink.py) beside the
row's own, and with --online each rule's hedge: the fit alone's and the model's val / full
history."""

import json
import sys
from pathlib import Path


def fmt(x: object) -> str:
    return "-" if x is None else f"{x:.5f}" if isinstance(x, float) else str(x)


for path in map(Path, sys.argv[1:]):
    if not path.exists():
        continue
    for r in map(json.loads, path.read_text().splitlines()):
        by = r.get("shrink_by_groups") or {}
        groups = " ".join(
            f"{g}:{fmt(v['val_mse'])}/{fmt(v['test_mse_protocol'])}" for g, v in by.items()
        )
        rules = " ".join(
            f"{rule}[{v['hedge']}]:fit {fmt(v['fit_val_mse'])}/"
            f"{fmt(v['fit_full_history_mse_protocol'])} "
            f"model {fmt(v['val_mse'])}/{fmt(v['full_history_mse_protocol'])}"
            for rule, v in (r.get("online_by_rule") or {}).items()
        )
        print(
            r["dataset"],
            r["horizon"],
            r["lookback"],
            r["variant"],
            "val",
            fmt(r["val_mse"]),
            "unshrunk",
            fmt(r.get("val_mse_unshrunk")),
            fmt(r.get("test_mse_protocol_unshrunk")),
            "test",
            fmt(r["test_mse_protocol"]),
            "fh",
            fmt(r.get("full_history_mse_protocol")),
            "|",
            groups,
            "| w",
            json.dumps(r.get("backbone_weight")),
            "ep",
            r.get("best_epoch"),
            r["epochs"],
            r["train_seconds"],
            r.get("score_seconds"),
            "| online",
            rules,
            r.get("online_seconds"),
        )
