#!/usr/bin/env bash
# Runs a local image registry (Debian's `docker-registry`) with Shoal's own config, bound to
# loopback only, and seeds it with the busybox test image.
#
#   scripts/image/registry.sh start  STATE_DIR   # start (no-op if already running), wait until it answers
#   scripts/image/registry.sh seed   STATE_DIR   # build the busybox image, start if needed, push it
#   scripts/image/registry.sh status STATE_DIR   # exit 0 if running and answering
#   scripts/image/registry.sh stop   STATE_DIR   # stop it, remove its pid file and config
#
# Everything lives under STATE_DIR/registry/ (config.yml, data/, registry.log, pid).
# SHOAL_REGISTRY_ADDR (default 127.0.0.1:5000) picks the listen address; it must be a
# loopback address or the local cluster's underlay bridge address (198.18.0.254), which
# exists only on this host and is what agents in node namespaces can reach. The image is pushed as localhost:PORT/busybox:latest (override with
# SHOAL_REGISTRY_IMAGE=busybox:tag). All commands are idempotent.
set -euo pipefail

usage() { echo "usage: $0 start|stop|seed|status STATE_DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
CMD=$1
STATE=$2
ADDR=${SHOAL_REGISTRY_ADDR:-127.0.0.1:5000}
HOST=${ADDR%:*}
PORT=${ADDR##*:}
IMAGE=${SHOAL_REGISTRY_IMAGE:-busybox:latest}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

case "$HOST" in
  127.*|localhost|198.18.0.254) ;;
  *) echo "registry: refusing to listen on $ADDR: only loopback or 198.18.0.254 (the local underlay bridge)" >&2; exit 2 ;;
esac

mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
DIR=$STATE/registry
PIDFILE=$DIR/pid

log() { echo "registry: $*"; }

running() {
  [[ -f $PIDFILE ]] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# GET /v2/ over bash's /dev/tcp (no curl needed); succeeds on an HTTP 200.
answers() {
  local line
  { exec 3<>"/dev/tcp/$HOST/$PORT"; } 2>/dev/null || return 1
  printf 'GET /v2/ HTTP/1.0\r\nHost: %s\r\n\r\n' "$ADDR" >&3
  IFS= read -r -t 2 line <&3 || { exec 3<&-; return 1; }
  exec 3<&-
  [[ $line == HTTP/1.?\ 200* ]]
}

start() {
  if running; then
    if answers; then log "already running (pid $(cat "$PIDFILE")) on $ADDR"; return 0; fi
    log "pid $(cat "$PIDFILE") is alive but $ADDR does not answer; restarting"
    stop
  fi
  command -v docker-registry >/dev/null || {
    echo "registry: docker-registry not found; fix: apt-get install docker-registry" >&2; exit 1; }
  if answers; then
    echo "registry: something else already answers on $ADDR; stop it or set SHOAL_REGISTRY_ADDR" >&2
    exit 1
  fi
  mkdir -p "$DIR/data"
  cat >"$DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
  fields:
    service: shoal-registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: $DIR/data
  delete:
    enabled: true
http:
  addr: $ADDR
  secret: shoal-local-registry
EOF
  log "starting docker-registry on $ADDR (config $DIR/config.yml, log $DIR/registry.log)"
  setsid docker-registry serve "$DIR/config.yml" >>"$DIR/registry.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if answers; then log "ready (pid $(cat "$PIDFILE"))"; return 0; fi
    if ! running; then
      echo "registry: docker-registry exited; last log lines:" >&2
      tail -n 20 "$DIR/registry.log" >&2 || true
      rm -f "$PIDFILE"
      exit 1
    fi
    sleep 0.1
  done
  echo "registry: $ADDR did not answer within 10s; see $DIR/registry.log" >&2
  stop
  exit 1
}

stop() {
  if running; then
    local pid
    pid=$(cat "$PIDFILE")
    log "stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  else
    log "not running"
  fi
  rm -f "$PIDFILE" "$DIR/config.yml"
}

seed() {
  command -v skopeo >/dev/null || {
    echo "registry: skopeo not found; fix: apt-get install skopeo" >&2; exit 1; }
  start
  bash "$HERE/build-busybox.sh" "$STATE/image"
  mkdir -p "$DIR"
  # Our own policy, so seeding does not depend on /etc/containers/policy.json.
  printf '%s' '{"default":[{"type":"insecureAcceptAnything"}]}' >"$DIR/policy.json"
  # Images are named localhost:PORT/...; the push dials the listen address.
  local ref="localhost:$PORT/$IMAGE" dial="localhost:$PORT"
  case "$HOST" in 127.*|localhost) ;; *) dial="$ADDR" ;; esac
  log "pushing $STATE/image/busybox.oci.tar as $ref (via $dial)"
  skopeo --policy "$DIR/policy.json" copy --quiet --dest-tls-verify=false \
    "oci-archive:$STATE/image/busybox.oci.tar" "docker://$dial/$IMAGE"
  log "seeded $ref"
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  seed) seed ;;
  status) if running && answers; then log "running (pid $(cat "$PIDFILE")) on $ADDR"; else log "not running"; exit 1; fi ;;
  *) usage ;;
esac
