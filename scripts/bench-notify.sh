#!/usr/bin/env bash
# Threshold events on the release binary: the time from the record that crosses a threshold to
# the webhook receiver (scripts/bench_notify.py), on the embedded store, then on a Firestore
# emulator. Without the emulator (gcloud's cloud-firestore-emulator and java) that part is
# skipped.
#
# Not part of CI: it measures, it asserts nothing.
#
#   bash scripts/bench-notify.sh [samples, default 200]
#
# TOKEN_LIMITS_BIN names another build of the binary to measure instead of the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/firestore-emulator.sh

samples=${1:-200}
bin=${TOKEN_LIMITS_BIN:-target/release/token-limits}
if [ -z "${TOKEN_LIMITS_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin token-limits
fi

work=$(mktemp -d)
emulator=''
cleanup() {
  if [ -n "$emulator" ]; then kill -- "-$emulator" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

python3 scripts/bench_notify.py --bin "$bin" --label sqlite --samples "$samples" \
  SQLITE_PATH="$work/usage.db"

# A missing emulator (2) skips the Firestore part; one that does not start fails the run.
start_firestore_emulator "$work/emulator.log" || exit $(($? == 2 ? 0 : 1))
python3 scripts/bench_notify.py --bin "$bin" --label firestore --samples "$samples" \
  STORE=firestore GOOGLE_CLOUD_PROJECT=demo-token-limits-notify-bench \
  FIRESTORE_EMULATOR_HOST="127.0.0.1:$emulator_port"
