#!/usr/bin/env bash
# Eligibility benchmark (not a test): 10 million leads over 100 campaigns on
# MariaDB (filled once into the database `dialstack_elig`, reused after),
# then the dispatcher's pick of the next batch timed on random campaigns, with
# the query plan.
#
#   scripts/bench-eligibility.sh [leads] [campaigns] [queries]
set -euo pipefail
cd "$(dirname "$0")/.."
LEADS="${1:-10000000}"
CAMPAIGNS="${2:-100}"
QUERIES="${3:-2000}"
scripts/test-env.sh >/dev/null
cargo build --release -p dialstack-tests --bin eligibility-bench --locked -q
target/release/eligibility-bench --db-url "mysql://root@127.0.0.1:3306/dialstack_elig_${LEADS}" \
  --leads "$LEADS" --campaigns "$CAMPAIGNS" --queries "$QUERIES"
