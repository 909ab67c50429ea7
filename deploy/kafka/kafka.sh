#!/usr/bin/env bash
# One single-node Apache Kafka broker in KRaft mode (broker + controller) on 127.0.0.1, for tests and
# local use. The jars come from Maven Central through pom.xml beside this file (pinned version) and
# are cached outside git; nothing is downloaded from anywhere else.
#
#   kafka.sh fetch    resolve the jars (idempotent)
#   kafka.sh start    fetch, format storage if new, start, wait until it accepts connections
#   kafka.sh stop     stop the broker started from this data dir (by pid)
#   kafka.sh status   exit 0 if running
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_DIR (.run/kafka-PORT),
# STATECAST_CACHE (~/.cache/statecast), KAFKA_HEAP (512m), KAFKA_START_TIMEOUT (120 s).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(sed -n 's#.*<kafka.version>\(.*\)</kafka.version>.*#\1#p' "$here/pom.xml")
cache=${STATECAST_CACHE:-$HOME/.cache/statecast}
libs="$cache/kafka-$version/libs"
port=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
dir=${KAFKA_DIR:-$root/.run/kafka-$port}
pidfile="$dir/kafka.pid"
log="$dir/broker.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  [ -f "$libs/.complete" ] && return 0
  command -v mvn >/dev/null || die "mvn not found: install Maven (apt-get install maven) to resolve Kafka $version"
  command -v java >/dev/null || die "java not found: Kafka $version needs Java 17 or newer"
  echo "kafka.sh: resolving Apache Kafka $version from Maven Central into $libs" >&2
  rm -rf "$libs.tmp"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs.tmp" >&2 || die "mvn could not resolve Kafka $version"
  rm -rf "$libs" && mv "$libs.tmp" "$libs" && touch "$libs/.complete"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
  mkdir -p "$dir/data"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=4
auto.create.topics.enable=true
# One node: every internal topic must have replication factor 1, or transactions and groups fail.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
# Tests start consumer groups often; the default 3 s delay would slow every first join.
group.initial.rebalance.delay.ms=0
transaction.abort.timed.out.transaction.cleanup.interval.ms=5000
PROPS
  cat > "$dir/log4j2.properties" <<PROPS
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.apache.name = org.apache.kafka
logger.apache.level = warn
PROPS
}

start() {
  fetch
  if running; then echo "kafka.sh: already running on 127.0.0.1:$port (pid $(cat "$pidfile"))" >&2; return 0; fi
  port_open "$port" && die "127.0.0.1:$port is taken by another process; set KAFKA_PORT"
  write_config
  if [ ! -f "$dir/data/meta.properties" ]; then
    java -cp "$libs/*" -Dlog4j2.configurationFile="$dir/log4j2.properties" kafka.tools.StorageTool \
      format -t "$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || die "storage format failed; see $dir/format.log: $(tail -n 3 "$dir/format.log")"
  fi
  # setsid: the broker outlives this script and is stopped by pid.
  setsid java -Xms128m -Xmx"${KAFKA_HEAP:-512m}" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" -Dkafka.logs.dir="$dir" \
    -cp "$libs/*" kafka.Kafka "$dir/server.properties" >"$log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120}))
  until port_open "$port" && grep -q "Kafka Server started" "$dir/server.log" 2>/dev/null; do
    running || die "broker exited during start-up; last lines of $log: $(tail -n 5 "$log")"
    [ $SECONDS -lt $deadline ] || { stop; die "broker did not accept connections within ${KAFKA_START_TIMEOUT:-120} s"; }
    sleep 0.5
  done
  echo "kafka.sh: Kafka $version running on 127.0.0.1:$port (pid $(cat "$pidfile"), data $dir)" >&2
}

stop() {
  running || { rm -f "$pidfile"; return 0; }
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "kafka.sh: stopped broker on 127.0.0.1:$port" >&2
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) running ;;
  *) die "usage: kafka.sh fetch|start|stop|status" ;;
esac
