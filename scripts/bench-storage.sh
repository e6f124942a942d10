#!/usr/bin/env bash
# storage-service benchmark (not a test): call records and customers are
# generated once into MariaDB (database dialstack_store_<cdrs>, reused after)
# and into a SQLite file for `dialstack up` sizes; then reads through the
# HTTP API (p50/p99 with query plans), a CSV export with the process's RSS,
# and ingest of call events through RabbitMQ and the real consumer.
#
#   scripts/bench-storage.sh [cdrs] [customers] [events]
set -euo pipefail
cd "$(dirname "$0")/.."
CDRS="${1:-10000000}"
CUSTOMERS="${2:-1000000}"
EVENTS="${3:-200000}"
SQLITE_DIR="${DIALSTACK_BENCH_DIR:-$HOME/.cache/dialstack/bench}"
scripts/test-env.sh >/dev/null
cargo build --release -p dialstack-tests --bin storage-bench --locked -q
# A buffer pool that holds the CDR indexes (docs/OPERATIONS.md); both
# settings are dynamic and stay until MariaDB restarts.
mysql -uroot -h127.0.0.1 -e "SET GLOBAL innodb_buffer_pool_size = 4294967296; SET GLOBAL innodb_log_file_size = 1073741824"
echo "== MariaDB"
target/release/storage-bench --db-url "mysql://root@127.0.0.1:3306/dialstack_store_${CDRS}" \
  --cdrs "$CDRS" --customers "$CUSTOMERS" --events "$EVENTS"
echo "== SQLite (dialstack up sizes)"
mkdir -p "$SQLITE_DIR"
target/release/storage-bench --db-url "sqlite://${SQLITE_DIR}/storage-1000000.db" \
  --cdrs 1000000 --customers 100000 --export-rows 1000000 --events "$EVENTS"
