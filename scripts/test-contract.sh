#!/usr/bin/env bash
# Contract test: schemathesis generates requests from /openapi.json and sends them to the
# running service, once with a user's token and once with an admin's. It fails on any 5xx and
# on any response that does not match the document (status, content type, headers, schema).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/contract-venv
bash scripts/python-venv.sh "$venv" scripts/contract-requirements.txt

# Built as `cargo test` builds it, dev-dependencies' features and all: after the Rust suites
# nothing is compiled again (`cargo build` would compile six crates a second time).
cargo test --locked --quiet --no-run
bin=target/debug/token-limits
work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# The embedded store and the offline demo project, whose emulator tokens dev-token prints.
# Event streams end after a second, so that each generated request to them is answered whole.
HOST=127.0.0.1 PORT=$port SQLITE_PATH="$work/usage.db" LOG_FORMAT=text RUST_LOG=warn \
  STREAM_MAX_SECS=1 "$bin" serve >"$work/service.log" 2>&1 &
service=$!
trap 'kill $service 2>/dev/null; wait $service 2>/dev/null || true; rm -rf "$work"' EXIT

for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
for caller in "--uid contract-user" "--uid contract-admin --admin"; do
  # shellcheck disable=SC2086 # the caller's flags are meant to split
  token=$("$bin" dev-token $caller)
  echo "schemathesis as: $caller"
  "$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
    --checks "$checks" \
    --header "Authorization: Bearer $token" \
    --max-examples 60 \
    --workers 1 \
    --no-color || { echo "service log:"; tail -n 50 "$work/service.log"; exit 1; }
done
