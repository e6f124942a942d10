#!/usr/bin/env bash
# The SIP edge's seeded mutation fuzzer (services/media-processor/tests/
# sip_fuzz.rs) for 10 million executions (or $1), with a seed (or $2).
# scripts/test.sh runs the same loop for 100,000.
#
#   scripts/bench-sip-fuzz.sh [executions (default 10000000)] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
export DIALSTACK_FUZZ_ITERATIONS="${1:-10000000}"
export DIALSTACK_FUZZ_SEED="${2:-24301}"
echo "seed $DIALSTACK_FUZZ_SEED, $DIALSTACK_FUZZ_ITERATIONS executions"
cargo test -p media-processor --locked --test sip_fuzz -- mutated_messages --nocapture 2>&1 |
  grep -E '^fuzz:|test result|panicked'
