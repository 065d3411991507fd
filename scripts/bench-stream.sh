#!/usr/bin/env bash
# Usage event streams on the release binary: memory per open stream and the latency from a
# write to its event (scripts/bench_stream.py), on the embedded store (one instance), then on a
# Firestore emulator with two instances: the write on one, the stream on the other (the day
# document's listener), and both on one (the instance's own notice). Without the emulator
# (gcloud's cloud-firestore-emulator and java) that part is skipped.
#
# Not part of CI: it measures, it asserts nothing.
#
#   bash scripts/bench-stream.sh [streams, default 1000] [samples, default 200]
#
# TOKEN_LIMITS_BIN names another build of the binary to measure instead of the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/firestore-emulator.sh

streams=${1:-1000}
samples=${2:-200}
project=demo-token-limits-stream-bench

bin=${TOKEN_LIMITS_BIN:-target/release/token-limits}
if [ -z "${TOKEN_LIMITS_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin token-limits
fi

work=$(mktemp -d)
services=() emulator=''
cleanup() {
  for pid in "${services[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -n "$emulator" ]; then kill -- "-$emulator" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# Raised for the streams and the measuring client, as far as allowed.
ulimit -n "$(ulimit -Hn)"

# Starts the release binary on a free port with the environment given; sets `port` and `pid`.
start_service() {
  local log=$1
  shift
  port=$(free_port)
  env HOST=127.0.0.1 PORT="$port" FIREBASE_PROJECT_ID=$project DAILY_LIMIT_TRIAL=1000000000 \
    MAX_CONNECTIONS=$((streams + 100)) MAX_STREAMS=$((streams + 10)) LOG_FORMAT=text RUST_LOG=warn \
    "$@" "$bin" >"$log" 2>&1 &
  pid=$!
  services+=("$pid")
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "the service did not become ready:" >&2
  tail -n 20 "$log" >&2
  return 1
}

start_service "$work/sqlite.log" SQLITE_PATH="$work/usage.db"
python3 scripts/bench_stream.py --label sqlite --stream-port "$port" --write-port "$port" \
  --pid "$pid" --project $project --streams "$streams" --samples "$samples"

# A missing emulator (2) skips the Firestore part; one that does not start fails the run.
start_firestore_emulator "$work/emulator.log" || exit $(($? == 2 ? 0 : 1))
firestore=(STORE=firestore GOOGLE_CLOUD_PROJECT=$project FIRESTORE_EMULATOR_HOST="127.0.0.1:$emulator_port")
start_service "$work/a.log" "${firestore[@]}"
write_port=$port
start_service "$work/b.log" "${firestore[@]}"
python3 scripts/bench_stream.py --label "firestore, write on another instance" \
  --stream-port "$port" --write-port "$write_port" --pid "$pid" --project $project \
  --streams "$streams" --samples "$samples"
python3 scripts/bench_stream.py --label "firestore, write on the same instance" \
  --stream-port "$port" --write-port "$port" --pid "$pid" --project $project \
  --streams 0 --samples "$samples"
