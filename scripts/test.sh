#!/usr/bin/env bash
# The one test command (README and CI): brings up the real dependencies, then
# format check, clippy with warnings denied, and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/test-env.sh
# The suite's RabbitMQ node, started empty (see test-env.sh): the suite's
# queues are never deleted while it runs.
scripts/test-env.sh suite-broker
export DIALSTACK_TEST_AMQP="$(cat "${DIALSTACK_ENV_LOGS:-/tmp/dialstack-test-env}/suite-amqp-url")"
export PATH="${DIALSTACK_TOOLS:-$HOME/.cache/dialstack/tools}/venv/bin:${DIALSTACK_TOOLS:-$HOME/.cache/dialstack/tools}/bin:$HOME/.cargo/bin:$PATH"

echo "== deployment files"
bash deploy/check.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (service binaries for the end-to-end tests)"
cargo build --workspace --bins --locked
echo "== cargo test"
cargo test --workspace --locked -- --test-threads "${DIALSTACK_TEST_THREADS:-4}"
echo "== all checks passed"
