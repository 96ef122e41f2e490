#!/usr/bin/env bash
# Local Apache Kafka 4.x broker for development, tests and the demo.
#
# One node in KRaft mode (combined broker + controller) on 127.0.0.1, assembled from the Maven
# Central jars pinned in pom.xml next to this script. Needs Java 17+ and Maven (fetch only).
#
# Usage: infra/kafka/kafka.sh <command>
#   fetch    download the jars into the cache (skipped when already cached for this pom)
#   start    fetch if needed, write server.properties, format storage once, start the broker in
#            the background and wait until it answers API requests
#   stop     SIGTERM, wait up to 30 s for a clean shutdown, then SIGKILL
#   status   one line; exit 0 running and answering, 3 not running, 4 process alive but the
#            broker does not answer
#   logs [N] last N (default 100) lines of the broker log
#
# Settings (environment):
#   FLYWHEEL_KAFKA_PORT             client listener port (default 9092)
#   FLYWHEEL_KAFKA_CONTROLLER_PORT  KRaft controller listener port (default 9093)
#   FLYWHEEL_KAFKA_DATA_DIR         config, pid, logs and partitions (default .flywheel/kafka,
#                                   relative to the current directory)
#   FLYWHEEL_KAFKA_HEAP             broker max heap, java -Xmx syntax (default 512m)
#   FLYWHEEL_KAFKA_START_TIMEOUT    seconds `start` waits for readiness (default 90)
#   FLYWHEEL_KAFKA_CACHE            jar cache root (default $HOME/.cache/flywheel/kafka); jars go
#                                   to <root>/<sha256 of pom.xml>/libs
#
# Exit codes: 0 ok; 1 failure (fetch, start, port taken); 2 usage; 3 not running; 4 not answering.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly POM="$SCRIPT_DIR/pom.xml"
readonly LOG4J_CONFIG="$SCRIPT_DIR/log4j2.xml"

readonly PORT="${FLYWHEEL_KAFKA_PORT:-9092}"
readonly CONTROLLER_PORT="${FLYWHEEL_KAFKA_CONTROLLER_PORT:-9093}"
readonly HEAP="${FLYWHEEL_KAFKA_HEAP:-512m}"
readonly START_TIMEOUT="${FLYWHEEL_KAFKA_START_TIMEOUT:-90}"
readonly STOP_TIMEOUT=30
readonly HOST=127.0.0.1
readonly NODE_ID=1

POM_HASH="$(sha256sum "$POM" | cut -d' ' -f1)"
readonly POM_HASH
readonly CACHE_DIR="${FLYWHEEL_KAFKA_CACHE:-$HOME/.cache/flywheel/kafka}/$POM_HASH"
readonly LIBS="$CACHE_DIR/libs"
readonly FETCHED_MARKER="$LIBS/.fetched"

# Absolute, because server.properties and the pid check must not depend on the caller's cwd.
DATA_DIR="$(realpath -m "${FLYWHEEL_KAFKA_DATA_DIR:-.flywheel/kafka}")"
readonly DATA_DIR
readonly CONFIG="$DATA_DIR/server.properties"
readonly PID_FILE="$DATA_DIR/kafka.pid"
readonly OUT_FILE="$DATA_DIR/kafka.out"
readonly SERVER_LOG="$DATA_DIR/server.log"
readonly CLUSTER_ID_FILE="$DATA_DIR/cluster.id"
readonly LOG_DIRS="$DATA_DIR/logs"

die() {
  echo "kafka: $*" >&2
  exit 1
}

# Short-lived tool JVMs: small heap and C1 only, which starts about twice as fast.
run_tool() {
  timeout "${TOOL_TIMEOUT:-120}" java -Xmx128m -XX:TieredStopAtLevel=1 -cp "$LIBS/*" \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" -Dkafka.logs.dir="$DATA_DIR" \
    -Dkafka.log.file=tools.log "$@"
}

cmd_fetch() {
  if [[ -f "$FETCHED_MARKER" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found; install Maven 3.8+"
  echo "kafka: fetching jars into $LIBS"
  mkdir -p "$CACHE_DIR"
  # Download into a private directory and rename it into place, so a concurrent fetch or an
  # interrupted one never leaves a half-filled libs directory that looks complete.
  local tmp
  tmp="$(mktemp -d "$CACHE_DIR/libs.tmp.XXXXXX")"
  if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" -DincludeScope=runtime; then
    rm -rf "$tmp"
    die "mvn could not fetch the jars listed in $POM"
  fi
  touch "$tmp/.fetched"
  mv -T "$tmp" "$LIBS" 2>/dev/null || rm -rf "$tmp"
  [[ -f "$FETCHED_MARKER" ]] || die "fetch did not complete: $LIBS"
}

port_open() {
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# kill -0 also succeeds for a zombie, which is what a broker that died during `start` is until
# this shell exits.
alive() {
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ "$state" != Z* ]]
}

# The pid from the pid file, if that process is alive and is our broker (guards against pid reuse).
broker_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $CONFIG" || return 1
  echo "$pid"
}

# A real request, not just a TCP accept: the broker returns its metadata and API versions, which
# it only does once it has caught up with the metadata log and is unfenced.
api_answers() {
  port_open "$PORT" || return 1
  # timeout: a stopped (SIGSTOP) or wedged broker accepts TCP but never replies.
  TOOL_TIMEOUT=20 run_tool org.apache.kafka.tools.BrokerApiVersionsCommand \
    --bootstrap-server "$HOST:$PORT" 2>/dev/null | grep -q "^$HOST:$PORT (id: $NODE_ID "
}

write_config() {
  cat >"$CONFIG" <<EOF
# Generated by infra/kafka/kafka.sh; edits are overwritten on the next start.
process.roles=broker,controller
node.id=$NODE_ID
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
# Static quorum of one voter: the ports may change between starts without reformatting.
controller.quorum.voters=$NODE_ID@$HOST:$CONTROLLER_PORT
log.dirs=$LOG_DIRS
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Few threads: the machine is shared with model inference.
num.network.threads=2
num.io.threads=2
background.threads=2
EOF
}

format_storage() {
  [[ -f "$LOG_DIRS/meta.properties" ]] && return 0
  if [[ ! -s "$CLUSTER_ID_FILE" ]]; then
    run_tool kafka.tools.StorageTool random-uuid >"$CLUSTER_ID_FILE"
  fi
  run_tool kafka.tools.StorageTool format -t "$(<"$CLUSTER_ID_FILE")" -c "$CONFIG" \
    >>"$OUT_FILE" 2>&1 || die "formatting $LOG_DIRS failed; see $OUT_FILE"
}

show_log_tail() {
  echo "--- last 40 lines of $SERVER_LOG ---" >&2
  tail -n 40 "$SERVER_LOG" >&2 2>/dev/null || true
  echo "--- $OUT_FILE ---" >&2
  tail -n 40 "$OUT_FILE" >&2 2>/dev/null || true
}

wait_ready() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then
      rm -f "$PID_FILE"
      show_log_tail
      die "broker exited during startup"
    fi
    # A cheap TCP probe first; the API check costs a JVM start.
    if port_open "$PORT" && api_answers; then
      return 0
    fi
    sleep 0.5
  done
  show_log_tail
  # A half-started broker would make the next `start` report "already running".
  cmd_stop >&2
  die "broker not ready after ${START_TIMEOUT}s; stopped it (see $SERVER_LOG)"
}

cmd_start() {
  local pid
  if pid="$(broker_pid)"; then
    wait_ready "$pid"
    echo "kafka: already running (pid $pid) on $HOST:$PORT, data $DATA_DIR"
    return 0
  fi
  rm -f "$PID_FILE"
  if port_open "$PORT"; then
    die "port $PORT is already in use by another process; set FLYWHEEL_KAFKA_PORT"
  fi
  if port_open "$CONTROLLER_PORT"; then
    die "port $CONTROLLER_PORT is already in use by another process; set FLYWHEEL_KAFKA_CONTROLLER_PORT"
  fi
  mkdir -p "$DATA_DIR"
  cmd_fetch
  write_config
  format_storage
  # setsid: the broker outlives this shell and ignores Ctrl-C sent to the caller's process group.
  setsid nohup java -Xms256m -Xmx"$HEAP" -XX:+ExitOnOutOfMemoryError -cp "$LIBS/*" \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" -Dkafka.logs.dir="$DATA_DIR" \
    kafka.Kafka "$CONFIG" >"$OUT_FILE" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  wait_ready "$pid"
  echo "kafka: started (pid $pid) on $HOST:$PORT, data $DATA_DIR"
}

cmd_stop() {
  local pid
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE"
    echo "kafka: not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if alive "$pid"; then
    echo "kafka: no clean shutdown after ${STOP_TIMEOUT}s; killing pid $pid" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  echo "kafka: stopped (pid $pid)"
}

cmd_status() {
  local pid
  if ! pid="$(broker_pid)"; then
    echo "kafka: not running (port $HOST:$PORT, data $DATA_DIR)"
    exit 3
  fi
  if ! api_answers; then
    echo "kafka: pid $pid is alive but not answering on $HOST:$PORT, data $DATA_DIR"
    exit 4
  fi
  echo "kafka: running (pid $pid) on $HOST:$PORT, data $DATA_DIR"
}

cmd_logs() {
  local lines="${1:-100}"
  [[ -f "$SERVER_LOG" ]] || die "no broker log at $SERVER_LOG"
  tail -n "$lines" "$SERVER_LOG"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    *)
      echo "usage: $0 {fetch|start|stop|status|logs [N]}" >&2
      exit 2
      ;;
  esac
}

main "$@"
