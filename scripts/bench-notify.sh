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
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

python3 scripts/bench_notify.py --bin "$bin" --label sqlite --samples "$samples" \
  SQLITE_PATH="$work/usage.db"

sdk_root=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)
jar=$sdk_root/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar
if [ ! -f "$jar" ] || ! command -v java >/dev/null; then
  echo "Firestore: skipped, no emulator ($jar) or no java"
  exit 0
fi
emulator_port=$(free_port)
setsid java -Xmx2g -cp "$jar" com.google.cloud.datastore.emulator.firestore.CloudFirestore \
  --host 127.0.0.1 --port "$emulator_port" >"$work/emulator.log" 2>&1 &
emulator=$!
for _ in $(seq 1 200); do
  curl -sf "http://127.0.0.1:$emulator_port/" >/dev/null && break
  sleep 0.1
done
python3 scripts/bench_notify.py --bin "$bin" --label firestore --samples "$samples" \
  STORE=firestore GOOGLE_CLOUD_PROJECT=demo-token-limits-notify-bench \
  FIRESTORE_EMULATOR_HOST="127.0.0.1:$emulator_port"
