#!/usr/bin/env bash
# The docker-compose integration test, for a machine with a Docker engine:
# brings up deploy/docker-compose.yml (NATS, etcd, ingress, two edges) under
# its own project name, runs the delivery tests against it instead of
# starting processes, and tears the stack down again, whatever happened.
# CI has no Docker engine; there the same tests run against processes
# (`cargo test -p gpush-integration-tests --test delivery`).
set -euo pipefail
cd "$(dirname "$0")/.."

compose=(docker compose -f deploy/docker-compose.yml -p gpush-compose-test)
# The tests log in with tokens signed by this secret (integration-tests/src/auth.rs).
export GPUSH_JWT_SECRET=gpush-integration-test-secret-0123456789
# The push API key the stack requires, and the tests send.
export GPUSH_API_KEY=gpush-integration-test-api-key
export GPUSH_IT_API_KEY=gpush-integration-test-api-key
trap '"${compose[@]}" down --volumes --remove-orphans' EXIT
"${compose[@]}" up --build --detach --wait

export GPUSH_IT_WS_URLS=ws://127.0.0.1:9992/ws,ws://127.0.0.1:9993/ws
export GPUSH_IT_PUSH_HTTP=http://127.0.0.1:10068
export GPUSH_IT_PUSH_GRPC=http://127.0.0.1:10067
# The scenarios share the stack's edges: one at a time.
cargo test --locked -p gpush-integration-tests --test delivery -- cluster --test-threads=1
