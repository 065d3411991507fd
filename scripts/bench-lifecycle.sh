#!/usr/bin/env bash
# Benchmark of the lifecycle commands on the release binary: documents per second of import,
# verify and export on both stores (SQLite file; the Firestore emulator), and each command's
# peak memory, at two sizes so that a memory that grows with the data shows. Not part of CI:
# it measures, it asserts nothing.
#
#   bash scripts/bench-lifecycle.sh [daily documents of the large run, default 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/firestore-emulator.sh

large=${1:-100000}
small=$((large / 10))
cargo build --release --locked --quiet
binary=$PWD/target/release/token-limits

work=$(mktemp -d)
emulator=
cleanup() {
  [ -n "$emulator" ] && kill -- "-$emulator" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# NDJSON of `days` daily documents: users of 30 days each in June 2025, and their months.
generate() {
  python3 - "$1" >"$2" <<'PY'
import json, sys
days = int(sys.argv[1])
for user in range((days + 29) // 30):
    uid = f"bench{user:06d}"
    usage = {}
    for day in range(1, 31):
        if user * 30 + day > days:
            break
        tokens = 100 + (user * 7 + day * 13) % 900
        usage[f"{day:02d}"] = tokens
        date = f"2025-06-{day:02d}"
        print(json.dumps({"collection": "daily_token_usage", "id": f"{uid}_{date}", "data": {
            "userId": uid, "date": date, "tokensUsed": tokens, "tokenLimit": 10000,
            "userType": "trial", "lastUpdated": f"{date}T12:00:00Z",
            "resetAt": f"{date}T23:59:59Z"}}, separators=(",", ":")))
    total = sum(usage.values())
    peak = max(usage, key=lambda d: (usage[d], -int(d)))
    print(json.dumps({"collection": "token_usage_history", "id": f"{uid}_2025_06", "data": {
        "userId": uid, "year": 2025, "month": 6, "dailyUsage": usage,
        "totalMonthlyTokens": total, "averageDailyUsage": total / len(usage),
        "peakUsageDate": peak, "peakUsageTokens": usage[peak], "userType": "trial",
        "createdAt": "2025-06-01T00:00:00Z", "updatedAt": "2025-06-30T12:00:00Z"}},
        separators=(",", ":")))
PY
}

# Runs a command under /usr/bin/time; prints documents/s and peak memory.
measure() {
  local store=$1 size=$2 documents=$3 name=$4
  shift 4
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" >"$work/out" 2>"$work/err" || {
    echo "$name failed:" >&2
    cat "$work/out" "$work/err" >&2
    exit 1
  }
  read -r seconds kib <"$work/time"
  printf '| %s | %s | %s | %s | %.1f | %s | %.1f |\n' "$store" "$size" "$name" "$documents" \
    "$seconds" "$(python3 -c "print(f'{$documents / max($seconds, 0.01):,.0f}')")" "$(echo "$kib / 1024" | bc -l)"
}

run_store() {
  local store=$1 days=$2
  local file="$work/data-$days.ndjson"
  [ -f "$file" ] || generate "$days" "$file"
  local documents
  documents=$(wc -l <"$file")
  measure "$store" "$days" "$documents" import "$binary" import --input "$file"
  measure "$store" "$days" "$documents" verify "$binary" verify
  measure "$store" "$days" "$documents" export "$binary" export --output "$work/export.ndjson"
}

echo "| store | daily documents | command | documents | seconds | documents/s | peak MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for days in "$small" "$large"; do
  rm -f "$work"/bench.db*
  STORE=sqlite SQLITE_PATH="$work/bench.db" run_store sqlite "$days"
done

start_firestore_emulator "$work/emulator.log"
for days in "$small" "$large"; do
  STORE=firestore FIRESTORE_EMULATOR_HOST="127.0.0.1:$emulator_port" FIREBASE_PROJECT_ID="demo-bench-$days" \
    run_store firestore "$days"
done
