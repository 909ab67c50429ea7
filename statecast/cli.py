"""`statecast` command line: thin wrappers over library functions.

statecast demo        the product on one machine: Kafka, MLflow UI, train, serve, a live replay
statecast quickstart  train a small model on the bundled ETTh1 CSV and forecast, no services
statecast train       train on Ray, track in MLflow, optionally register (champion alias)
statecast evaluate    score a logged or registered model under the standard protocol (JSON)
statecast submit      run `statecast train ...` as a Ray job on a cluster, print the job id
statecast mlflow-ui   serve the MLflow UI over the tracking store statecast uses
statecast serve       run the streaming service: Ray Serve consumes Kafka, publishes forecasts, REST
statecast process     one stream processor without Ray (a plain process or container)
statecast replay      publish a dataset as a live observation stream
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def _demo(args: argparse.Namespace) -> int:
    from forecast import KINDS
    from statecast.demo import DemoConfig, run_demo

    if args.model not in KINDS:
        raise SystemExit(f"statecast demo: --model must be one of {KINDS}")
    cfg = DemoConfig(
        data=Path(args.data) if args.data else DemoConfig.data,
        kind=args.model,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        d_model=args.d_model,
        rate=args.rate,
        replay_limit=args.replay_limit,
        bootstrap_servers=args.bootstrap_servers,
        kafka_port=args.kafka_port,
        rest_port=args.rest_port,
        ui_port=args.ui_port,
        hold=not args.exit_after_replay,
        progress=not args.no_progress,
    )
    try:
        return run_demo(cfg)
    except RuntimeError as e:
        print(f"statecast demo: error: {e}", file=sys.stderr)
        return 2


def _quickstart(args: argparse.Namespace) -> int:
    from forecast import KINDS
    from pipelines.quickstart import QuickstartConfig, run_quickstart

    if args.model not in KINDS:
        raise SystemExit(f"statecast quickstart: --model must be one of {KINDS}")
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
    q = ", ".join(f"q{x:g}" for x in res.quantiles)
    print(f"forecast after streaming to {res.last_timestamp} (channel, step: {q})")
    for c, name in enumerate(res.channels):
        cells = []
        for h in (0, cfg.horizon // 2, cfg.horizon - 1):
            band = "/".join(f"{v:.2f}" for v in res.forecast[h, c])
            cells.append(f"+{h + 1}h {band}")
        print(f"  {name:>5}: " + "   ".join(cells))
    return 0


def _data_config(args: argparse.Namespace) -> object:
    from pipelines.config import DataConfig

    return DataConfig(
        time_column=args.time_column,
        channels=tuple(args.channels.split(",")) if args.channels else None,
        frequency=args.frequency,
        split=args.split_mode,
    )


# `statecast train` options -> TrainConfig fields, where the names differ.
_TRAIN_FIELDS = {"model": "kind", "shrink_backbone": "backbone_shrink", "gpu": "use_gpu"}
# TrainConfig fields the train command sets (None where not given: the recipe's, else
# TrainConfig's default).
_TRAIN_OPTIONS = (
    "model", "lookback", "horizon", "epochs", "batch_size", "lr", "patience", "steps_per_epoch",
    "d_model", "n_layers", "norm_halflife", "weight_decay", "lr_schedule", "warmup_epochs",
    "linear_lr", "linear_norm", "zero_head", "dropout", "channel_independent", "cycle_length",
    "linear_per_channel", "linear_init", "shrink_backbone", "shrink_groups", "point_loss",
    "mse_weight", "workers", "gpu", "seed", "experiment", "register", "run_name",
)  # fmt: skip


def train_config(args: argparse.Namespace) -> object:
    """The TrainConfig of `statecast train`: the options given, over the recipe's values
    (--recipe), over TrainConfig's defaults."""
    from pipelines.config import RECIPES, TrainConfig

    fields: dict[str, object] = dict(RECIPES[args.recipe]) if args.recipe else {}
    for option in _TRAIN_OPTIONS:
        value = getattr(args, option)
        if value is not None:
            fields[_TRAIN_FIELDS.get(option, option)] = value
    return TrainConfig(data=args.data, **fields)  # type: ignore[arg-type]


def _train(args: argparse.Namespace) -> int:
    from pipelines.config import DataConfig, TrainConfig
    from pipelines.train import train

    cfg = train_config(args)
    assert isinstance(cfg, TrainConfig)
    data_cfg = _data_config(args)
    assert isinstance(data_cfg, DataConfig)
    res = train(cfg, data_cfg, resume=args.resume, progress=not args.no_progress)
    print(
        json.dumps(
            {
                "run_id": res.run_id,
                "model_uri": res.model_uri,
                "test_mse": res.test_mse,
                "test_mae": res.test_mae,
                "best_val_mse": res.best_val_mse,
                "epochs": res.epochs,
                "registered_version": res.registered_version,
                "champion": res.champion,
            }
        )
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.online and not args.full_history:
        raise SystemExit("statecast evaluate: --online is a full-history mode; add --full-history")
    import mlflow

    from pipelines import settings
    from pipelines.config import DataConfig
    from pipelines.data import read_dataset
    from pipelines.evaluate import evaluate_model

    mlflow.set_tracking_uri(settings.tracking_uri())
    wrapper = mlflow.pyfunc.load_model(args.model_uri).unwrap_python_model()
    model, extra = wrapper.model, wrapper.extra
    data_cfg = DataConfig(
        time_column=str(extra["time_column"]),
        channels=tuple(extra["channels"]),
        calendar=bool(extra["calendar"]),
        missing_values=tuple(extra["missing_values"]),
        split=args.split_mode,
    )
    data = read_dataset(args.data, data_cfg)
    lookback = args.lookback or int(extra["lookback"])
    online, hedge = None, None
    if args.online:
        from pipelines.online_fit import online_path
        from pipelines.protocol import protocol_splits

        splits = protocol_splits(data.name, data.n_steps, args.split_mode)
        online, hedge = online_path(
            model,
            data,
            splits,
            args.split,
            lookback,
            args.horizon,
            not args.no_progress,
            args.online_rule,
        )
    res = evaluate_model(
        model,
        data,
        lookback,
        args.horizon,
        args.split,
        args.split_mode,
        args.full_history,
        progress=not args.no_progress,
        online=online,
    )
    summary: dict[str, object] = dict(res.summary())
    if hedge is not None:
        # Rows; "inf" (no forgetting) as a string, so the line stays strict JSON.
        summary["online"] = {
            "rule": args.online_rule,
            "half_lives": [h if math.isfinite(h) else "inf" for h in hedge.half_lives],
            "frozen": hedge.frozen,
        }
    print(json.dumps(summary))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from ray.job_submission import JobSubmissionClient

    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit(
            "statecast submit: give --address or set RAY_ADDRESS (e.g. http://head:8265)"
        )
    train_args = list(args.train_args)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    # Parse here so a bad argument fails now, not on the cluster.
    build_parser().parse_args(["train", *train_args])
    # `python -m statecast` needs only the package on the cluster's Python, not a script on PATH.
    entrypoint = shlex.join(["python", "-m", "statecast", "train", *train_args])
    runtime_env = {"working_dir": args.working_dir} if args.working_dir else None
    from ray.exceptions import AuthenticationError

    try:
        # Ray's job server takes a bearer token (RAY_AUTH_MODE=token on the cluster; the client
        # sends RAY_AUTH_TOKEN or the token file): submitting training is authenticated there.
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    except AuthenticationError as e:
        print(
            f"statecast submit: the job server at {address} refused the token: {e}", file=sys.stderr
        )
        return 3
    print(job_id, flush=True)
    if not args.wait:
        return 0
    from ray.job_submission import JobStatus

    done = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)
    while (status := client.get_job_status(job_id)) not in done:
        time.sleep(2)
    print(client.get_job_logs(job_id), end="")
    print(f"statecast submit: job {job_id} {status.value}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1


def _mlflow_ui(args: argparse.Namespace) -> int:
    from pipelines import settings

    uri = settings.tracking_uri()
    cmd = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", uri,
        "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", settings.artifact_root()]
    print("statecast: " + shlex.join(cmd), file=sys.stderr)
    os.execv(sys.executable, cmd)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from pipelines import settings
    from serving.app import AppArgs, build_app
    from serving.worker import kafka_options

    app_args = AppArgs(
        model_uri=args.model_uri,
        bootstrap_servers=args.bootstrap_servers,
        in_topic=args.in_topic,
        out_topic=args.out_topic,
        dead_letter_topic=args.dead_letter_topic,
        group=args.group,
        processors=args.processors,
        checkpoint_interval_s=args.checkpoint_interval,
        max_poll_records=args.max_poll_records,
        model_poll_s=args.model_poll,
        kafka_options=kafka_options(args.kafka_option),
    )
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri())  # replicas inherit it
    ray.init(address=settings.ray_address(), include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(app_args), name="statecast", route_prefix="/")
    print(f"statecast: serving {args.model_uri} on http://{args.host}:{args.port} (docs at /docs)")
    print(
        f"statecast: {args.in_topic} -> {args.out_topic} on {args.bootstrap_servers}; Ctrl-C stops"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def _process(args: argparse.Namespace) -> int:
    from serving.worker import main as worker_main

    return worker_main(args.rest)


def _replay(args: argparse.Namespace) -> int:
    from serving.replay import ReplayConfig, replay

    cfg = ReplayConfig(
        data=Path(args.data),
        topic=args.topic,
        bootstrap_servers=args.bootstrap_servers,
        rate=args.rate,
        series_column=args.series_column,
        time_column=args.time_column,
        start=args.start,
        limit=args.limit,
    )
    sent = replay(cfg, progress=not args.no_progress)
    print(f"statecast replay: sent {sent} observations to {args.topic}")
    return 0


def _cycle_length(text: str) -> int:
    """--cycle-length: a number of steps (0: none), or "day" (CYCLE_DAY: resolved from the data's
    frequency when it is read)."""
    from pipelines.config import CYCLE_DAY

    if text == "day":
        return CYCLE_DAY
    try:
        steps = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of steps or 'day', got {text!r}"
        ) from None
    if steps < 0:
        raise argparse.ArgumentTypeError(f"expected a number of steps >= 0 or 'day', got {steps}")
    return steps


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statecast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="Kafka + MLflow UI + train + Ray Serve + a live replay of ETTh1; Ctrl-C stops"
    )
    demo.add_argument("--model", default="selective_ssm", help="diagonal_ssm, selective_ssm, rwkv7")
    demo.add_argument("--data", default=None, help="an ETT-style CSV (default: bundled ETTh1)")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--steps-per-epoch", type=int, default=100)
    demo.add_argument("--d-model", type=int, default=32)
    demo.add_argument("--rate", type=float, default=20.0, help="observations/s (0 = unlimited)")
    demo.add_argument("--replay-limit", type=int, default=0, help="at most this many (0 = all)")
    demo.add_argument(
        "--bootstrap-servers", default=None, help="a running Kafka (default: start a local one)"
    )
    demo.add_argument("--kafka-port", type=int, default=9092)
    demo.add_argument("--rest-port", type=int, default=8000)
    demo.add_argument("--ui-port", type=int, default=5000)
    demo.add_argument(
        "--exit-after-replay", action="store_true", help="stop once the replay is forecast"
    )
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(fn=_demo)

    qs = sub.add_parser("quickstart", help="train a small model on the bundled CSV; no services")
    qs.add_argument("--model", default="selective_ssm", help="diagonal_ssm, selective_ssm or rwkv7")
    qs.add_argument("--data", default=None, help="a benchmark-style CSV (default: bundled ETTh1)")
    qs.add_argument("--steps", type=int, default=150, help="training steps")
    qs.add_argument("--horizon", type=int, default=24)
    qs.add_argument("--no-progress", action="store_true")
    qs.set_defaults(fn=_quickstart)

    def data_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, help="CSV, Parquet, NetCDF (.nc) or Zarr (.zarr)")
        p.add_argument("--time-column", default="date", help="time column (tables) or dim (grids)")
        p.add_argument("--channels", default=None, help="comma-separated channels (default: all)")
        p.add_argument("--frequency", default=None, help="e.g. 1h, 15min (default: inferred)")
        p.add_argument(
            "--split-mode", default="auto", choices=["auto", "ett-hourly", "ett-15min", "ratio"]
        )

    tr = sub.add_parser("train", help="train on Ray, track in MLflow")
    data_options(tr)
    tr.add_argument(
        "--recipe",
        default=None,
        choices=["benchmark"],  # pipelines/config.py RECIPES (not imported here: torch is slow)
        help="start from a named recipe (pipelines/config.py RECIPES; benchmark: the one "
        "docs/RESULTS.md's grid runs); the options given override it",
    )
    # Options left out take the recipe's value, else TrainConfig's default (shown).
    flag = argparse.BooleanOptionalAction
    tr.add_argument(
        "--model",
        default=None,
        choices=["diagonal_ssm", "selective_ssm", "rwkv7"],
        help="default: selective_ssm",
    )
    tr.add_argument("--lookback", type=int, default=None, help="default: 96")
    tr.add_argument("--horizon", type=int, default=None, help="default: 96")
    tr.add_argument("--epochs", type=int, default=None, help="default: 10")
    tr.add_argument("--batch-size", type=int, default=None, help="default: 32")
    tr.add_argument("--lr", type=float, default=None, help="default: 2e-3")
    tr.add_argument("--patience", type=int, default=None, help="default: 3")
    tr.add_argument(
        "--steps-per-epoch", type=int, default=None, help="0 (default): all training windows"
    )
    tr.add_argument("--d-model", type=int, default=None, help="default: 64")
    tr.add_argument("--n-layers", type=int, default=None, help="default: 2")
    tr.add_argument(
        "--norm-halflife",
        type=int,
        default=None,
        help="per-series running normalisation half-life (steps; 0 = off; default: 96)",
    )
    tr.add_argument("--weight-decay", type=float, default=None, help="default: 0.01")
    tr.add_argument(
        "--lr-schedule", default=None, choices=["constant", "cosine"], help="default: constant"
    )
    tr.add_argument("--warmup-epochs", type=float, default=None, help="default: 0")
    tr.add_argument("--linear-lr", type=float, default=None, help="linear path's rate (--lr)")
    tr.add_argument(
        "--linear-norm", default=None, choices=["running", "window"], help="default: running"
    )
    tr.add_argument("--zero-head", action=flag, default=None, help="quantile head starts at zero")
    tr.add_argument("--dropout", type=float, default=None, help="default: 0")
    tr.add_argument("--channel-independent", action=flag, default=None)
    tr.add_argument(
        "--linear-init",
        default=None,
        choices=["zero", "fit"],
        help="fit: the linear path starts at its closed-form fit (needs --linear-norm window; "
        "best with --zero-head), validated as a candidate (default: zero)",
    )
    tr.add_argument(
        "--shrink-backbone",
        action=flag,
        default=None,
        help="after training, scale the backbone's part of the forecast by the weight in "
        "1, 0.75, .., 0 best on validation (toward the linear path; with --linear-init fit)",
    )
    tr.add_argument(
        "--shrink-groups",
        default=None,
        choices=["model", "channel", "channel_horizon"],
        help="with --shrink-backbone: one weight for the model (default), one per output "
        "channel, or one per channel and quarter of the horizon, each chosen on validation",
    )
    tr.add_argument(
        "--cycle-length",
        type=_cycle_length,
        default=None,
        help="steps in a day for the linear path's learned daily cycle (0 = none, the default; "
        "'day': a day at the data's frequency, e.g. 24 hourly)",
    )
    tr.add_argument(
        "--linear-per-channel",
        action=flag,
        default=None,
        help="a linear map per channel (with --linear-init fit: each pulled toward the shared "
        "fit by the strength best on validation; default: one map for all channels)",
    )
    tr.add_argument(
        "--point-loss",
        default=None,
        choices=["pinball", "mse"],
        help="what trains the median (the point forecast): pinball + MSE (default), or MSE alone",
    )
    tr.add_argument("--mse-weight", type=float, default=None, help="default: 1")
    tr.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: 1)")
    tr.add_argument("--gpu", action="store_true", default=None, help="one GPU per worker")
    tr.add_argument("--seed", type=int, default=None, help="default: 0")
    tr.add_argument("--experiment", default=None, help="default: statecast")
    tr.add_argument("--register", default=None, help="registered model name (champion alias)")
    tr.add_argument("--run-name", default=None)
    tr.add_argument("--resume", action="store_true", help="continue the run's last checkpoint")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    tr.set_defaults(fn=_train)

    ev = sub.add_parser("evaluate", help="score a model under the standard protocol")
    ev.add_argument("--model-uri", required=True, help="models:/NAME@champion, runs:/ID/model, ...")
    ev.add_argument("--data", required=True)
    ev.add_argument("--horizon", type=int, required=True)
    ev.add_argument("--lookback", type=int, default=None, help="default: the training lookback")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument(
        "--split-mode", default="auto", choices=["auto", "ett-hourly", "ett-15min", "ratio"]
    )
    ev.add_argument("--full-history", action="store_true", help="carry state through all data")
    ev.add_argument(
        "--online",
        action="store_true",
        help="with --full-history: the linear path refitted online as targets arrive "
        "(docs/RESULTS.md, ninth and twelfth sections)",
    )
    ev.add_argument(
        "--online-rule",
        default="mean",
        choices=["mean", "val"],
        help="--online: mean, the maps hedged over the frozen fit and every half-life; val, the "
        "half-life best on val",
    )
    ev.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ev.set_defaults(fn=_evaluate)

    sb = sub.add_parser("submit", help="run `statecast train ARGS` as a Ray job")
    sb.add_argument("--address", default=None, help="Ray dashboard address (default: RAY_ADDRESS)")
    sb.add_argument("--working-dir", default=None, help="upload this folder with the job")
    sb.add_argument("--wait", action="store_true", help="wait for the job, print its logs")
    sb.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the train arguments")
    sb.set_defaults(fn=_submit)

    ui = sub.add_parser("mlflow-ui", help="serve the MLflow UI over statecast's tracking store")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(fn=_mlflow_ui)

    sv = sub.add_parser("serve", help="run the streaming service (Ray Serve + Kafka + REST)")
    sv.add_argument("--model-uri", required=True, help="models:/NAME@champion or runs:/ID/model")
    sv.add_argument("--bootstrap-servers", required=True, help="Kafka HOST:PORT")
    sv.add_argument("--in-topic", required=True, help="observations topic")
    sv.add_argument("--out-topic", required=True, help="forecasts topic")
    sv.add_argument("--dead-letter-topic", default="", help="default: OUT_TOPIC.dead-letter")
    sv.add_argument("--group", default="statecast", help="Kafka consumer group")
    sv.add_argument("--processors", type=int, default=1, help="stream processor replicas")
    sv.add_argument("--checkpoint-interval", type=float, default=5.0, help="seconds")
    sv.add_argument("--max-poll-records", type=int, default=5000)
    sv.add_argument("--model-poll", type=float, default=30.0, help="seconds between alias checks")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument(
        "--kafka-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="kafka-python client option, e.g. security_protocol=SASL_SSL (repeatable)",
    )
    sv.set_defaults(fn=_serve)

    pr = sub.add_parser(
        "process",
        help="run one stream processor in this process, without Ray (see --help)",
        add_help=False,
    )
    pr.add_argument("rest", nargs=argparse.REMAINDER)
    pr.set_defaults(fn=_process)

    rp = sub.add_parser("replay", help="publish a CSV/Parquet dataset as a live observation stream")
    rp.add_argument("--data", required=True)
    rp.add_argument("--topic", required=True)
    rp.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    rp.add_argument("--rate", type=float, default=0.0, help="messages per second (0 = unlimited)")
    rp.add_argument("--series-column", default=None, help="column naming each row's series")
    rp.add_argument("--time-column", default="date")
    rp.add_argument("--start", default=None, help="only rows at or after this ISO time")
    rp.add_argument("--limit", type=int, default=0, help="at most this many messages")
    rp.add_argument("--no-progress", action="store_true")
    rp.set_defaults(fn=_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except (ValueError, FileNotFoundError) as e:
        # Bad input is a clear message and exit code 2, not a traceback.
        print(f"statecast {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
