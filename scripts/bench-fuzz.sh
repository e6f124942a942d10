#!/usr/bin/env bash
# Longer schema fuzzing than scripts/test.sh runs: schemathesis against
# every service of a `dialstack up`, per role, with more examples per
# operation (default 100; first argument). Prints the cases per service and
# role; fails on any 5xx or response that breaks the documented schema.
#
#   scripts/bench-fuzz.sh [examples]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-env.sh >/dev/null
cargo build --bins --locked -p dialstack-cli
DIALSTACK_FUZZ_EXAMPLES="${1:-100}" cargo test --locked -p dialstack-tests --test schema_fuzz -- --nocapture 2>&1 |
  grep -E " as [a-z]+: |test result"
