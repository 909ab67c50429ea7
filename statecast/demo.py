"""`statecast demo`: the whole product on one machine, from the embedded defaults.

1. a local Kafka broker (deploy/kafka/kafka.sh; Java 17 and Maven), unless --bootstrap-servers
   names a running one; the sqlite MLflow store under STATECAST_HOME and an MLflow UI server;
2. trains a small model on the bundled ETTh1 CSV through the real pipeline (Ray Train, MLflow
   run, registry; the first version becomes `champion`);
3. starts the Ray Serve app on `models:/NAME@champion` (stream processor + REST);
4. replays the rows after the standard test period as a live stream (from `lookback` rows before
   it, so the state is warm when the unseen months begin), prints forecasts as they arrive and
   writes a PNG of live forecasts against actuals with the quantile band;
5. keeps serving until Ctrl-C (or SIGTERM), then stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np

from pipelines import settings
from pipelines.quickstart import BUNDLED_CSV

__all__ = ["DemoConfig", "run_demo"]

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
GROUP = "statecast-demo"  # the consumer group (and changelog topic prefix) of the demo


@dataclass(frozen=True)
class DemoConfig:
    data: Path = BUNDLED_CSV
    kind: str = "selective_ssm"
    lookback: int = 96
    horizon: int = 24
    epochs: int = 3
    steps_per_epoch: int = 100
    d_model: int = 32
    model_name: str = "statecast-demo"
    in_topic: str = "observations"
    out_topic: str = "forecasts"
    rate: float = 20.0  # observations per second of the replay (0 = as fast as possible)
    replay_limit: int = 0  # at most this many observations (0 = every row after the warm-up)
    bootstrap_servers: str | None = None  # None: start the local broker
    kafka_port: int = 9092
    rest_port: int = 8000
    ui_port: int = 5000
    hold: bool = True  # keep serving after the replay until Ctrl-C
    progress: bool = True
    channel: str = "OT"  # the channel printed and plotted


class _Stop(Exception):
    """SIGTERM, turned into an exception so the same cleanup runs as for Ctrl-C."""


_T0 = time.monotonic()


def _say(msg: str) -> None:
    print(f"statecast demo [{time.monotonic() - _T0:6.1f} s]: {msg}", flush=True)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _check_ports(cfg: DemoConfig) -> None:
    wanted = {"--rest-port": cfg.rest_port, "--ui-port": cfg.ui_port}
    if cfg.bootstrap_servers is None:
        wanted["--kafka-port"] = cfg.kafka_port
    for flag, port in wanted.items():
        if not _port_free(port):
            hint = " (or --bootstrap-servers HOST:PORT to use it)" if "kafka" in flag else ""
            raise RuntimeError(f"port {port} is in use: choose another with {flag}{hint}")


def _check_java() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"the local Kafka broker needs Java 17 and Maven; not found: {', '.join(missing)}. "
            "Install them (Debian: apt-get install openjdk-17-jre-headless maven) or give "
            "--bootstrap-servers HOST:PORT of a running Kafka broker."
        )


def _wait_http(url: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s")
        time.sleep(0.5)


class _Services:
    """What the demo started, stopped in reverse order by close()."""

    def __init__(self, home: Path):
        self.home = home
        self.kafka_env: dict[str, str] | None = None
        self.kafka_start: subprocess.Popen[bytes] | None = None
        self.kafka_log = home / "kafka-start.log"
        self.ui: subprocess.Popen[bytes] | None = None
        self.ray = False
        self.serve = False

    def start_kafka(self, port: int) -> str:
        """Begin the broker's start-up and return its address at once; wait_kafka() waits for it.
        The demo's other start-up work (MLflow UI, Ray, training) does not need the broker, so
        it runs meanwhile instead of after it."""
        _check_java()
        env = {
            **os.environ,
            "KAFKA_PORT": str(port),
            "KAFKA_CONTROLLER_PORT": str(_free_port()),
            "KAFKA_DIR": str(self.home / "kafka"),
        }
        # The demo's stream is replayed from the start each run: old topics, committed offsets and
        # states would make every replayed observation out of order.
        shutil.rmtree(env["KAFKA_DIR"], ignore_errors=True)
        _say(f"starting Kafka on 127.0.0.1:{port} (deploy/kafka/kafka.sh, in {env['KAFKA_DIR']})")
        self.kafka_env = env
        # Its own session: a Ctrl-C in the terminal must not cut the script off between starting
        # the broker and writing its pid file (close() waits for the script, then stops it).
        with self.kafka_log.open("w") as log:
            self.kafka_start = subprocess.Popen(
                [str(KAFKA_SH), "start"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return f"127.0.0.1:{port}"

    def wait_kafka(self) -> None:
        """Wait for the start-up that start_kafka() began (the script has its own deadline)."""
        if self.kafka_start is None:
            return
        if self.kafka_start.wait() != 0:
            raise RuntimeError(f"Kafka did not start:\n{self.kafka_log.read_text()}")
        _say("Kafka is up")

    def start_ui(self, port: int) -> str:
        """Start the MLflow UI server and return its address at once; wait_ui() waits for it."""
        uri = settings.tracking_uri()
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ]  # fmt: skip
        if uri.startswith("sqlite:"):
            cmd += ["--default-artifact-root", settings.artifact_root()]
        log = open(self.home / "mlflow-ui.log", "ab")  # noqa: SIM115 (the server keeps it)
        # Its own session, so the server and its workers are stopped as one group.
        self.ui = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return f"http://127.0.0.1:{port}"

    def wait_ui(self, url: str) -> None:
        # Training waits for this too: the server creates a new sqlite store's tables, and two
        # processes creating them at once can collide.
        _wait_http(url + "/health", 120, "the MLflow UI server")

    def close(self) -> None:
        if self.serve:
            from ray import serve

            try:
                serve.shutdown()
            except Exception as e:  # cleanup goes on
                _say(f"serve shutdown: {e}")
        if self.ray:
            import ray

            ray.shutdown()
        if self.ui is not None and self.ui.poll() is None:
            os.killpg(self.ui.pid, signal.SIGTERM)
            try:
                self.ui.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.ui.pid, signal.SIGKILL)
                self.ui.wait(10)
        if self.kafka_start is not None and self.kafka_start.poll() is None:
            _say("waiting for Kafka's start-up to finish, to stop it")
            self.kafka_start.wait()
        if self.kafka_env is not None:
            subprocess.run([str(KAFKA_SH), "stop"], env=self.kafka_env, capture_output=True)


def _fresh_topics(bootstrap: str, topics: list[str], group: str) -> None:
    """Delete the demo's topics and consumer group on a broker the demo did not start, so the
    replay starts from a clean slate (see start_kafka)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        present = [t for t in topics if t in set(admin.list_topics())]
        if present:
            _say(f"deleting the demo's topics from the last run: {', '.join(present)}")
            admin.delete_topics(present)
        with contextlib.suppress(KafkaError):  # no such group yet
            admin.delete_consumer_groups([group])
        deadline = time.monotonic() + 60
        while set(present) & set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not delete {present} within 60 s")
            time.sleep(0.5)
    finally:
        admin.close()


def _start_ray(attempts: int = 3) -> None:
    """A local Ray (or RAY_ADDRESS's cluster), quiet: the workers' logs go to Ray's log folder.
    Ray gives a new node 30 s to register, which a busy 2-core machine can miss: try again."""
    import psutil
    import ray

    me = psutil.Process()
    for attempt in range(1, attempts + 1):
        before = {c.pid for c in me.children(recursive=True)}
        try:
            ray.init(
                address=settings.ray_address(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            return
        except Exception as e:  # Ray raises a bare Exception for this timeout
            ray.shutdown()
            # A node that failed to register is not Ray's to shut down: stop what it started.
            for child in me.children(recursive=True):
                if child.pid not in before:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
            if attempt == attempts:
                raise RuntimeError(f"Ray did not start: {e}") from e
            _say(f"Ray did not start ({e}); trying again")


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replay_start(cfg: DemoConfig) -> tuple[str, str]:
    """(first replayed timestamp, first unseen timestamp): `lookback` rows before the end of the
    standard test period, and the end itself."""
    import polars as pl

    from pipelines.protocol import protocol_splits

    stamps = pl.read_csv(cfg.data, columns=["date"])["date"].cast(pl.Utf8).to_list()
    end = protocol_splits(cfg.data.stem, len(stamps)).test[1]
    if end >= len(stamps):
        raise ValueError(f"{cfg.data}: no rows after the standard test period to replay")
    return stamps[max(0, end - cfg.lookback)], stamps[end]


class _Subscriber(threading.Thread):
    """Reads the forecasts topic as a subscriber would (read_committed) and keeps them by time."""

    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.forecasts: dict[str, dict[str, object]] = {}
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="latest",
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        try:
            while not consumer.assignment() and not self.stop.is_set():
                consumer.poll(timeout_ms=200)
            consumer.seek_to_end()
            consumer.poll(timeout_ms=0)
            self.ready.set()
            while not self.stop.is_set():
                for records in consumer.poll(timeout_ms=300).values():
                    for r in records:
                        doc = json.loads(r.value)
                        self.forecasts[str(doc["ts"])] = doc
        finally:
            consumer.close()


def _line(doc: dict[str, object], channel: str, actual: dict[str, float | None]) -> str:
    channels = list(doc["channels"])  # type: ignore[call-overload]
    c = channels.index(channel)
    q = doc["quantiles"]
    assert isinstance(q, dict)
    lo, mid, hi = (q[k][0][c] for k in ("0.1", "0.5", "0.9"))
    ts = str(doc["ts"])
    seen = actual.get(ts)
    seen_s = "   n/a" if seen is None else f"{seen:6.2f}"
    flag = "  (warming up)" if doc.get("warming") else ""
    return f"{ts}  {channel} {seen_s}   next hour {mid:6.2f}  [{lo:6.2f}, {hi:6.2f}]{flag}"


def _plot(
    path: Path,
    docs: list[dict[str, object]],
    actual: dict[str, float | None],
    channel: str,
    ahead: int,
    unseen: str,
) -> Path:
    """Actuals of `channel` against the forecasts made `ahead` steps earlier (median + band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stamps = sorted(actual)
    index = {ts: i for i, ts in enumerate(stamps)}
    c = list(docs[0]["channels"]).index(channel)  # type: ignore[call-overload]
    t_f, lo, mid, hi = [], [], [], []
    for doc in docs:
        i = index.get(str(doc["ts"]))
        if i is None or i + ahead >= len(stamps) or doc.get("warming"):
            continue
        q = doc["quantiles"]
        assert isinstance(q, dict)
        t_f.append(np.datetime64(stamps[i + ahead]))
        lo.append(q["0.1"][ahead - 1][c])
        mid.append(q["0.5"][ahead - 1][c])
        hi.append(q["0.9"][ahead - 1][c])
    fig, ax = plt.subplots(figsize=(12, 4), dpi=100)
    t_a = [np.datetime64(ts) for ts in stamps]
    y_a = np.array([np.nan if actual[ts] is None else actual[ts] for ts in stamps], float)
    ax.plot(t_a, y_a, color="black", lw=1, label="actual")
    if t_f:
        ax.plot(t_f, mid, color="tab:blue", lw=1.2, label=f"forecast {ahead} h ahead (median)")
        ax.fill_between(t_f, lo, hi, color="tab:blue", alpha=0.25, label="10-90% band")
    ax.axvline(np.datetime64(unseen), color="0.5", ls="--", lw=1, label="end of the test period")  # type: ignore[arg-type]
    ax.set_title(f"statecast demo: live forecasts of {channel}, streamed from Kafka")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _train(cfg: DemoConfig) -> str:
    from pipelines.config import TrainConfig
    from pipelines.train import train

    _say(f"training a small {cfg.kind} on {cfg.data.name} (Ray Train, tracked in MLflow)")
    res = train(
        TrainConfig(
            data=str(cfg.data),
            kind=cfg.kind,
            lookback=cfg.lookback,
            horizon=cfg.horizon,
            epochs=cfg.epochs,
            steps_per_epoch=cfg.steps_per_epoch,
            d_model=cfg.d_model,
            experiment="statecast-demo",
            register=cfg.model_name,
            run_name=f"demo-{cfg.kind}-H{cfg.horizon}",
        ),
        progress=cfg.progress,
    )
    verdict = "is champion" if res.champion else "did not beat the champion, which stays"
    _say(
        f"trained {res.epochs} epochs: test MSE {res.test_mse:.3f} (scaled, H={cfg.horizon}); "
        f"version {res.registered_version} of {cfg.model_name} {verdict}"
    )
    return res.run_id


def _where(cfg: DemoConfig, bootstrap: str, rest: str, ui: str, series: str) -> None:
    print(
        "\n"
        f"  REST forecast   {rest}/v1/series/{series}/forecast   (API docs: {rest}/docs)\n"
        f"  forecast topic  {cfg.out_topic} on {bootstrap}   (observations: {cfg.in_topic})\n"
        f"  MLflow UI       {ui}   (experiment statecast-demo, model {cfg.model_name})\n"
        f"  metrics         {rest}/metrics\n",
        flush=True,
    )


def run_demo(cfg: DemoConfig) -> int:
    from serving.replay import ReplayConfig, observation_messages, replay

    home = settings.home()
    home.mkdir(parents=True, exist_ok=True)
    _check_ports(cfg)
    # The Serve replicas read the registry through this; set before Ray starts so they inherit it.
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.tracking_uri())
    first, unseen = _replay_start(cfg)
    services = _Services(home)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C must stop the demo even when it was started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    subscriber: _Subscriber | None = None
    try:
        if cfg.bootstrap_servers:
            bootstrap = cfg.bootstrap_servers
            out = cfg.out_topic
            _fresh_topics(
                bootstrap, [cfg.in_topic, out, f"{out}.dead-letter", f"{GROUP}.state"], GROUP
            )
        else:
            bootstrap = services.start_kafka(cfg.kafka_port)
        ui = services.start_ui(cfg.ui_port)
        services.wait_ui(ui)
        _say(f"MLflow UI at {ui} (store {settings.tracking_uri()})")
        services.ray = True
        _start_ray()
        _train(cfg)
        services.wait_kafka()
        # The processor consumes an existing topic (it never guesses a partition count).
        _create_topic(bootstrap, cfg.in_topic, partitions=2)
        # Ray installs its own handlers and Ray Train's fit() leaves its SIGINT handler behind
        # (it aborts a training run that is over, and swallows Ctrl-C): put the demo's back.
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, signal.default_int_handler)

        from ray import serve

        from serving.app import AppArgs, build_app

        _say("starting the Ray Serve app (stream processor + REST)")
        services.serve = True
        serve.start(http_options={"host": "127.0.0.1", "port": cfg.rest_port})
        args = AppArgs(
            model_uri=f"models:/{cfg.model_name}@champion",
            bootstrap_servers=bootstrap,
            in_topic=cfg.in_topic,
            out_topic=cfg.out_topic,
            group=GROUP,
            checkpoint_interval_s=2.0,
            model_poll_s=10.0,
        )
        serve.run(build_app(args), name="statecast", route_prefix="/")
        rest = f"http://127.0.0.1:{cfg.rest_port}"
        _wait_http(rest + "/healthz", 120, "the REST ingress")

        replay_cfg = ReplayConfig(
            data=cfg.data,
            topic=cfg.in_topic,
            bootstrap_servers=bootstrap,
            rate=cfg.rate,
            start=first,
            limit=cfg.replay_limit,
        )
        actual: dict[str, float | None] = {}
        for _, value in observation_messages(replay_cfg):
            doc = json.loads(value)
            actual[doc["ts"]] = doc["values"].get(cfg.channel)
        series = cfg.data.stem
        subscriber = _Subscriber(bootstrap, cfg.out_topic)
        subscriber.start()
        subscriber.ready.wait(60)
        _say(
            f"replaying {len(actual)} hours of {cfg.data.name} from {first} "
            f"(unseen from {unseen}) at {cfg.rate:g}/s to topic {cfg.in_topic}"
        )
        _where(cfg, bootstrap, rest, ui, series)
        sender = threading.Thread(
            target=replay, args=(replay_cfg,), kwargs={"progress": False}, daemon=True
        )
        sender.start()
        printed = 0
        last_print = 0.0
        deadline = None
        while len(subscriber.forecasts) < len(actual):
            time.sleep(0.5)
            if not sender.is_alive() and deadline is None:
                deadline = time.monotonic() + 300  # everything sent: forecasts due shortly
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(subscriber.forecasts)} of {len(actual)} forecasts arrived"
                )
            if time.monotonic() - last_print >= 2.0 and len(subscriber.forecasts) > printed:
                latest = max(subscriber.forecasts)
                print(_line(subscriber.forecasts[latest], cfg.channel, actual), flush=True)
                printed, last_print = len(subscriber.forecasts), time.monotonic()
        docs = [subscriber.forecasts[ts] for ts in sorted(subscriber.forecasts)]
        png = _plot(home / "demo" / "live_forecasts.png", docs, actual, cfg.channel, 24, unseen)
        _say(f"{len(docs)} forecasts received, one per observation")
        _say(f"live forecasts plot: {png}")
        _where(cfg, bootstrap, rest, ui, series)
        if cfg.hold:
            _say("serving; Ctrl-C stops everything the demo started")
            while True:
                time.sleep(3600)
        return 0
    except (KeyboardInterrupt, _Stop):
        _say("stopping")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if subscriber is not None:
            subscriber.stop.set()
            subscriber.join(10)
        services.close()
        _say("stopped everything it started")
