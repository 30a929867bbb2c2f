#!/usr/bin/env bash
# Runs every test: unit tests beside the code, and the end-to-end tests that
# start the real binaries against the real PostgreSQL and RabbitMQ (each test
# gets its own database and queue prefix, and removes them).
set -euo pipefail
cd "$(dirname "$0")/.."
source deploy/lib.sh

ensure_tools
ensure_postgres
ensure_rabbitmq
ensure_python_peers
ensure_browser_peers
ensure_compose_peers

say "building the binaries"
cargo build --workspace --bins
say "running the tests"
cargo test --workspace "$@"
