#!/usr/bin/env bash
# Local Apache Kafka 4.x broker, or a cluster of 3, for development, tests and the demo.
#
# Each node runs in KRaft mode (combined broker + controller) on 127.0.0.1, assembled from the
# Maven Central jars pinned in pom.xml next to this script. Needs Java 17+ and Maven (fetch only).
# With FLYWHEEL_KAFKA_NODES=3 the three nodes are the three controllers of one quorum, and topics
# default to replication factor 3 with min.insync.replicas 2 (one node may be down).
#
# Usage: infra/kafka/kafka.sh <command>
#   fetch    download the jars into the cache (skipped when already cached for this pom)
#   start    fetch if needed, write each node's server.properties, format storage once, start
#            the nodes in the background and wait until each answers API requests
#   stop     SIGTERM each node, wait up to 30 s for a clean shutdown, then SIGKILL
#   status   one line per node; exit 0 all running and answering, 3 none running, 4 a node
#            down or alive but not answering
#   logs [N] last N (default 100) lines of the broker log (of each node in a cluster)
#   bootstrap  the client listeners, host:port comma-separated (for bootstrap_servers)
#   start-node I | stop-node I | kill-node I   one node of a cluster (kill: SIGKILL, for
#            fault tests); start-node waits until that node answers
#
# Settings (environment):
#   FLYWHEEL_KAFKA_NODES            1 (default) or 3
#   FLYWHEEL_KAFKA_PORT             client listener port (default 9092); in a cluster node I
#                                   listens on PORT + 2(I-1) unless FLYWHEEL_KAFKA_PORTS lists them
#   FLYWHEEL_KAFKA_CONTROLLER_PORT  KRaft controller listener port (default 9093); in a cluster
#                                   CONTROLLER_PORT + 2(I-1) unless FLYWHEEL_KAFKA_CONTROLLER_PORTS
#   FLYWHEEL_KAFKA_PORTS, FLYWHEEL_KAFKA_CONTROLLER_PORTS  a cluster's ports, comma-separated
#   FLYWHEEL_KAFKA_DATA_DIR         config, pid, logs and partitions (default .flywheel/kafka,
#                                   relative to the current directory; node I of a cluster in
#                                   its node-I subdirectory)
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

readonly NODES="${FLYWHEEL_KAFKA_NODES:-1}"
readonly BASE_PORT="${FLYWHEEL_KAFKA_PORT:-9092}"
readonly BASE_CONTROLLER_PORT="${FLYWHEEL_KAFKA_CONTROLLER_PORT:-9093}"
readonly HEAP="${FLYWHEEL_KAFKA_HEAP:-512m}"
readonly START_TIMEOUT="${FLYWHEEL_KAFKA_START_TIMEOUT:-90}"
readonly STOP_TIMEOUT=30
readonly HOST=127.0.0.1
if ((NODES == 1)); then readonly MIN_ISR=1; else readonly MIN_ISR=2; fi

POM_HASH="$(sha256sum "$POM" | cut -d' ' -f1)"
readonly POM_HASH
readonly CACHE_DIR="${FLYWHEEL_KAFKA_CACHE:-$HOME/.cache/flywheel/kafka}/$POM_HASH"
readonly LIBS="$CACHE_DIR/libs"
readonly FETCHED_MARKER="$LIBS/.fetched"

# Absolute, because server.properties and the pid check must not depend on the caller's cwd.
BASE_DIR="$(realpath -m "${FLYWHEEL_KAFKA_DATA_DIR:-.flywheel/kafka}")"
readonly BASE_DIR
readonly CLUSTER_ID_FILE="$BASE_DIR/cluster.id"  # one cluster id for every node

IFS=, read -r -a PORT_LIST <<<"${FLYWHEEL_KAFKA_PORTS:-}"
IFS=, read -r -a CONTROLLER_PORT_LIST <<<"${FLYWHEEL_KAFKA_CONTROLLER_PORTS:-}"

# The node the functions below act on: select_node sets its id, ports and files.
NODE_ID= PORT= CONTROLLER_PORT= DATA_DIR= CONFIG= PID_FILE= OUT_FILE= SERVER_LOG= LOG_DIRS=

node_port() { # node_port I LIST BASE: the I-th entry of LIST, else BASE + 2(I-1)
  local i="$1" base="$3"
  local -n list="$2"
  if ((${#list[@]} > 0)); then echo "${list[i - 1]}"; else echo $((base + 2 * (i - 1))); fi
}

select_node() {
  NODE_ID="$1"
  PORT="$(node_port "$1" PORT_LIST "$BASE_PORT")"
  CONTROLLER_PORT="$(node_port "$1" CONTROLLER_PORT_LIST "$BASE_CONTROLLER_PORT")"
  if ((NODES == 1)); then DATA_DIR="$BASE_DIR"; else DATA_DIR="$BASE_DIR/node-$1"; fi
  CONFIG="$DATA_DIR/server.properties"
  PID_FILE="$DATA_DIR/kafka.pid"
  OUT_FILE="$DATA_DIR/kafka.out"
  SERVER_LOG="$DATA_DIR/server.log"
  LOG_DIRS="$DATA_DIR/logs"
}

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

# addresses LIST BASE [ids]: every node's 127.0.0.1:port from LIST (or BASE + 2(I-1)),
# comma-separated; with "ids", each as I@host:port (the controller quorum's voters)
addresses() {
  local i out=() prefix=
  for ((i = 1; i <= NODES; i++)); do
    [[ "${3:-}" == ids ]] && prefix="$i@"
    out+=("$prefix$HOST:$(node_port "$i" "$1" "$2")")
  done
  (IFS=,; echo "${out[*]}")
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
# Static quorum (every node a voter): the ports may change between starts without reformatting.
controller.quorum.voters=$(addresses CONTROLLER_PORT_LIST "$BASE_CONTROLLER_PORT" ids)
log.dirs=$LOG_DIRS
num.partitions=1
auto.create.topics.enable=false
# A cluster keeps 3 copies and accepts a write once 2 have it: one node may be down.
default.replication.factor=$NODES
min.insync.replicas=$MIN_ISR
offsets.topic.replication.factor=$NODES
transaction.state.log.replication.factor=$NODES
transaction.state.log.min.isr=$MIN_ISR
share.coordinator.state.topic.replication.factor=$NODES
share.coordinator.state.topic.min.isr=$MIN_ISR
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
  stop_node TERM >&2
  die "broker not ready after ${START_TIMEOUT}s; stopped it (see $SERVER_LOG)"
}

# Start the selected node in the background unless it runs; sets STARTED_PID.
launch_node() {
  local pid
  if pid="$(broker_pid)"; then
    STARTED_PID="$pid"
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
  write_config
  format_storage
  # setsid: the broker outlives this shell and ignores Ctrl-C sent to the caller's process group.
  setsid nohup java -Xms256m -Xmx"$HEAP" -XX:+ExitOnOutOfMemoryError -cp "$LIBS/*" \
    -Dlog4j2.configurationFile="$LOG4J_CONFIG" -Dkafka.logs.dir="$DATA_DIR" \
    kafka.Kafka "$CONFIG" >"$OUT_FILE" 2>&1 </dev/null &
  STARTED_PID=$!
  echo "$STARTED_PID" >"$PID_FILE"
  echo "kafka: started (pid $STARTED_PID) on $HOST:$PORT, data $DATA_DIR"
}

# Every node is launched before any is waited for: a controller quorum needs a majority up.
cmd_start() {
  local i pids=()
  mkdir -p "$BASE_DIR"
  cmd_fetch
  for ((i = 1; i <= NODES; i++)); do
    select_node "$i"
    launch_node
    pids+=("$STARTED_PID")
  done
  for ((i = 1; i <= NODES; i++)); do
    select_node "$i"
    wait_ready "${pids[i - 1]}"
  done
  if ((NODES > 1)); then
    echo "kafka: cluster of $NODES ready; bootstrap servers $(cmd_bootstrap)"
  fi
}

stop_node() {
  local pid signal="${1:-TERM}"
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE"
    echo "kafka: not running$( ((NODES == 1)) || echo " (node $NODE_ID)")"
    return 0
  fi
  kill -"$signal" "$pid" 2>/dev/null || true
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

cmd_stop() {
  local i
  for ((i = NODES; i >= 1; i--)); do
    select_node "$i"
    stop_node TERM
  done
}

# exit 0 all nodes answer, 3 none runs, 4 otherwise
cmd_status() {
  local i pid up=0 answering=0
  for ((i = 1; i <= NODES; i++)); do
    select_node "$i"
    if ! pid="$(broker_pid)"; then
      echo "kafka: not running (port $HOST:$PORT, data $DATA_DIR)"
      continue
    fi
    up=$((up + 1))
    if ! api_answers; then
      echo "kafka: pid $pid is alive but not answering on $HOST:$PORT, data $DATA_DIR"
      continue
    fi
    answering=$((answering + 1))
    echo "kafka: running (pid $pid) on $HOST:$PORT, data $DATA_DIR"
  done
  ((up > 0)) || exit 3
  ((answering == NODES)) || exit 4
}

cmd_logs() {
  local i lines="${1:-100}"
  for ((i = 1; i <= NODES; i++)); do
    select_node "$i"
    [[ -f "$SERVER_LOG" ]] || die "no broker log at $SERVER_LOG"
    ((NODES == 1)) || echo "--- node $i: $SERVER_LOG ---"
    tail -n "$lines" "$SERVER_LOG"
  done
}

cmd_bootstrap() {
  addresses PORT_LIST "$BASE_PORT"
}

# One node of a cluster: start-node (and wait), stop-node, kill-node.
cmd_node() {
  local action="$1" i="${2:-}"
  [[ "$i" =~ ^[0-9]+$ ]] && ((i >= 1 && i <= NODES)) || {
    echo "usage: $0 $action I (a node, 1..$NODES)" >&2
    exit 2
  }
  select_node "$i"
  case "$action" in
    start-node)
      cmd_fetch
      launch_node
      wait_ready "$STARTED_PID"
      ;;
    stop-node) stop_node TERM ;;
    kill-node) stop_node KILL ;;
  esac
}

main() {
  local cmd="${1:-}"
  [[ "$NODES" == 1 || "$NODES" == 3 ]] || {
    echo "kafka: FLYWHEEL_KAFKA_NODES must be 1 or 3, got $NODES" >&2
    exit 2
  }
  if ((${#PORT_LIST[@]} > 0 && ${#PORT_LIST[@]} != NODES)) || ((${#CONTROLLER_PORT_LIST[@]} > 0 && ${#CONTROLLER_PORT_LIST[@]} != NODES)); then
    echo "kafka: FLYWHEEL_KAFKA_PORTS and FLYWHEEL_KAFKA_CONTROLLER_PORTS must list $NODES ports each" >&2
    exit 2
  fi
  select_node 1
  shift || true
  case "$cmd" in
    fetch) cmd_fetch ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    bootstrap) cmd_bootstrap ;;
    start-node | stop-node | kill-node) cmd_node "$cmd" "$@" ;;
    *)
      echo "usage: $0 {fetch|start|stop|status|logs [N]|bootstrap|start-node I|stop-node I|kill-node I}" >&2
      exit 2
      ;;
  esac
}

main "$@"
