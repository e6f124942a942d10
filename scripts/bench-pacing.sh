#!/usr/bin/env bash
# Pacing benchmark (issue 11; not a test): VICIdial's adaptive pacer against
# dialstack's predictive pacer in the seeded simulator
# (task_scheduler::domain::pacing::sim), over agents 10/50/200 × answer rate
# 15/30/60 % × talk time 60/180 s, 8-hour shifts, release build. Prints a
# Markdown table; no services, brokers or databases needed.
#
#   scripts/bench-pacing.sh [dialstack simulate options...]
#
# e.g. scripts/bench-pacing.sh --hours 2 --agents 10,50 --seed 7
#      scripts/bench-pacing.sh --baseline-drop-method hard-limit   (VICIdial
#      held to the 3 % cap instead of the issue's TAPERED baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p dialstack-cli --bin dialstack --locked -q
exec target/release/dialstack simulate "$@"
