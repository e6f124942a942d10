# Shared by the bench scripts that run release services as local processes
# (sourced, not run). The caller sets RUN, LOGS, BIN, and COMMANDS_URL (the
# commands channel); every service gets its own MariaDB database named after
# RUN and the events channel on RabbitMQ in a RUN namespace. `start` records
# each process in `pids`; the trap stops them all on exit.

MYSQL="mysql://root@127.0.0.1:3306"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start() { # name port extra-env...
  local name=$1 port=$2; shift 2
  env -i PATH="$PATH" DIALSTACK_LOG_FORMAT=json RUST_LOG=warn \
    DIALSTACK_HTTP_ADDR="127.0.0.1:$port" \
    DIALSTACK_DATABASE_URL="$MYSQL/${RUN}_${name//-/_}" \
    DIALSTACK_EVENTS_URL="amqp://guest:guest@127.0.0.1:5672/%2f?namespace=$RUN&queue_expires_ms=600000" \
    DIALSTACK_COMMANDS_URL="$COMMANDS_URL" \
    "$@" "$BIN/$name" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 240); do
    curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  echo "$name did not become ready; see $LOGS/$name.log" >&2
  exit 1
}
