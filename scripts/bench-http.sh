#!/usr/bin/env bash
# HTTP benchmark of the release binary. wrk (installed from Debian's packages when missing)
# sends requests with real RS256 ID tokens of 1,000 users, checked against a local JWK set.
#
# On the embedded store it drives GET /healthz (the HTTP ceiling), GET /usage/today,
# POST /usage without and with an Idempotency-Key, and streamed replies' reservation pairs
# (reserve, then commit), each once per round (3 rounds by default); it prints each row's median
# requests/s, p50 and p99 over the rounds (and the range of p99), its share of the ceiling (the
# median of the shares measured in the same round, with their range), and the service's peak
# memory.
#
# Then, on a Firestore emulator, it sets POST /usage {"tokens": 1} beside a raw client:
# examples/firestore_raw.rs, which sends the store's two RPCs of a record without its cache
# (read the day and month, commit both under preconditions) straight from the gRPC client, at
# the same concurrency. The service runs twice, with its document cache (the default) and without it
# (FIRESTORE_CACHE_MIB=0). The emulator gets a minute of load before any run, and each run its
# own project and an unreported warm-up, so that the cache is warm. It prints records/s, p50, p99,
# each service run's share of the raw client's records/s, and the service's peak memory.
# Without the emulator (gcloud's cloud-firestore-emulator and java) that part is skipped.
#
# Not part of CI: it measures, it asserts nothing.
#
#   bash scripts/bench-http.sh [seconds per run, default 10] [connections, default 64] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/firestore-emulator.sh

duration=${1:-10}
connections=${2:-64}
rounds=${3:-3}
users=1000
project=token-limits-bench

if ! command -v wrk >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
cargo build --release --locked --quiet --bin token-limits --example firestore_raw

work=$(mktemp -d)
jwks_server='' service='' emulator=''
cleanup() {
  if [ -n "$service" ]; then kill "$service" 2>/dev/null || true; fi
  if [ -n "$jwks_server" ]; then kill "$jwks_server" 2>/dev/null || true; fi
  if [ -n "$emulator" ]; then kill -- "-$emulator" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The JWK set, served as Google serves it.
mkdir "$work/jwks"
printf '{"keys":[%s]}' "$(cat tests/fixtures/test-key-1.jwk.json)" >"$work/jwks/keys"
jwks_port=$(free_port)
(cd "$work/jwks" && exec python3 -m http.server "$jwks_port" --bind 127.0.0.1) >/dev/null 2>&1 &
jwks_server=$!

# One signed token per user, valid for an hour.
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
header=$(printf '{"alg":"RS256","kid":"test-key-1","typ":"JWT"}' | b64url)
now=$(date +%s)
for i in $(seq 1 "$users"); do
  payload=$(printf '{"iss":"https://securetoken.google.com/%s","aud":"%s","sub":"bench-%d","iat":%d,"auth_time":%d,"exp":%d}' \
    "$project" "$project" "$i" $((now - 10)) $((now - 60)) $((now + 3600)) | b64url)
  signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign tests/fixtures/test-key-1.pem | b64url)
  echo "$header.$payload.$signature"
done >"$work/tokens"

# Starts the release binary on a free port with the auth settings and the extra environment
# given; sets `port` and `service`. Returns 1, with the end of its log on stderr, when it does
# not become ready.
start_service() {
  local log=$1
  shift
  port=$(free_port)
  env HOST=127.0.0.1 PORT="$port" FIREBASE_PROJECT_ID=$project METRICS_PUBLIC=true \
    FIREBASE_JWKS_URL="http://127.0.0.1:$jwks_port/keys" DAILY_LIMIT_TRIAL=1000000000000 "$@" \
    target/release/token-limits >"$log" 2>&1 &
  service=$!
  for _ in $(seq 300); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$service" 2>/dev/null || break
    sleep 0.1
  done
  echo "the service ($*) did not become ready:" >&2
  tail -n 20 "$log" >&2
  stop_service
  return 1
}

stop_service() {
  kill "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  service=
}

# The service's peak memory so far.
peak_memory() {
  awk '/^VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$service/status"
}

# Each request takes the next user's token; keyed requests take a key never used before.
cat >"$work/requests.lua" <<'LUA'
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local method, path, keyed = os.getenv("METHOD"), os.getenv("TARGET"), os.getenv("KEYED") == "1"
local run, sent = tostring(os.time()), 0
request = function()
  sent = sent + 1
  local headers = { ["Authorization"] = "Bearer " .. tokens[sent % #tokens + 1] }
  local body = nil
  if method == "POST" then
    headers["Content-Type"] = "application/json"
    body = '{"tokens": 1}'
  end
  if keyed then headers["Idempotency-Key"] = "bench-" .. run .. "-" .. sent end
  return wrk.format(method, path, headers, body)
end
LUA

# Reservation pairs: each answered reservation is committed next, with its user's token; so
# half the requests are reservations and half their commits.
cat >"$work/pairs.lua" <<'LUA'
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do tokens[#tokens + 1] = line end
local sent, commits = 0, {}
local function headers(token)
  return { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }
end
request = function()
  local commit = table.remove(commits)
  if commit then
    return wrk.format("POST", "/usage/reservations/" .. commit.id .. "/commit",
      headers(commit.token), '{"tokens": 1}')
  end
  sent = sent + 1
  return wrk.format("POST", "/usage/reservations", headers(tokens[sent % #tokens + 1]),
    '{"tokens": 1}')
end
response = function(status, _, body)
  if status ~= 201 then return end
  local id = body:match('"id":"([^"]+)"')
  local user = tonumber(body:match('"userId":"bench%-(%d+)"'))
  if id and user then commits[#commits + 1] = { id = id, token = tokens[user] } end
end
LUA

# Runs wrk against the service on port $1 for $2 seconds with a script; prints
# "requests/s p50 p99 non-2xx".
wrk_run() {
  local target_port=$1 seconds=$2 method=$3 path=$4 keyed=$5 script=${6:-requests.lua} output
  output=$(METHOD=$method TARGET=$path KEYED=$keyed TOKENS="$work/tokens" \
    wrk -t1 -c"$connections" -d"${seconds}s" --latency -s "$work/$script" "http://127.0.0.1:$target_port")
  echo "$output" >>"$work/wrk.log"
  local rps p50 p99 failed
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$output")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$output")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$output")
  failed=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$output")
  echo "$rps $p50 $p99 ${failed:-0}"
}

# A run of the current service as long as the others: method, path, keyed, [script].
measure() {
  wrk_run "$port" "$duration" "$@"
}

# wrk's latency (850.00us, 1.23ms, 1.02s) in milliseconds.
in_ms() {
  awk -v t="$1" 'BEGIN {
    n = t + 0
    if (t ~ /us$/) n /= 1000
    else if (t ~ /[^m]s$/) n *= 1000
    else if (t ~ /m$/) n *= 60000
    printf "%.2fms", n
  }'
}

# The machine's speed drifts by 10-20 % over minutes, so every request runs once per round,
# rounds one after another, and each row shows the median over the rounds: its share of the
# ceiling is the median of the shares of the ceiling measured in the same round. Each round
# starts a service on a new file, so that every round measures the same data: reservation pairs
# leave settled entries in the users' days for ten minutes, which later rounds would read.
rows="GET /healthz 0 requests.lua|GET /usage/today 0 requests.lua|POST /usage 0 requests.lua|POST /usage 1 requests.lua|POST /usage/reservations 0 pairs.lua"
peak=0
for round in $(seq 1 "$rounds"); do
  start_service "$work/service-$round.log" SQLITE_PATH="$work/usage-$round.db" || exit 1
  IFS='|' read -ra runs <<<"$rows"
  for row in "${!runs[@]}"; do
    read -r method path keyed script <<<"${runs[$row]}"
    read -r rps p50 p99 failed <<<"$(measure "$method" "$path" "$keyed" "$script")"
    echo "$round $row $rps $(in_ms "$p50") $(in_ms "$p99") $failed" >>"$work/rounds"
  done
  peak=$(awk -v before="$peak" '/^VmHWM/ {kib = $2; print (kib > before ? kib : before)}' "/proc/$service/status")
  stop_service
done

echo "wrk -t1 -c$connections, ${duration}s a run, $rounds rounds, medians, $users users, $(nproc) cores, release build, RUST_LOG=info"
python3 - "$work/rounds" <<'PY'
import statistics, sys
labels = ["GET /healthz (ceiling)", "GET /usage/today", "POST /usage",
          "POST /usage (Idempotency-Key)", "reserve+commit (each request)"]
runs = {}
for line in open(sys.argv[1]):
    round_, row, rps, p50, p99, failed = line.split()
    runs[(int(round_), int(row))] = (float(rps), float(p50[:-2]), float(p99[:-2]), int(failed))
rounds = sorted({round_ for round_, _ in runs})
print(f"{'request':32} {'requests/s':>11} {'p50':>9} {'p99':>9} {'p99 range':>15} "
      f"{'of-ceiling':>11} {'range':>13} {'non-2xx':>8}")
for row, label in enumerate(labels):
    mine = [runs[(r, row)] for r in rounds]
    shares = [100 * runs[(r, row)][0] / runs[(r, 0)][0] for r in rounds]
    median = lambda i: statistics.median(run[i] for run in mine)
    p99s = [run[2] for run in mine]
    p99_range = f"{min(p99s):.2f}-{max(p99s):.2f}ms"
    share_range = f"{min(shares):.1f}-{max(shares):.1f}%"
    print(f"{label:32} {median(0):11.0f} {median(1):7.2f}ms {median(2):7.2f}ms {p99_range:>15} "
          f"{statistics.median(shares):10.1f}% {share_range:>13} {sum(run[3] for run in mine):8}")
    if row == 4:
        print(f"reservation pairs/s: {median(0) / 2:.0f}")
PY
echo "service peak memory: $((peak / 1024)) MiB (the highest of the rounds)"

echo
# A missing emulator (2) skips the Firestore part; one that does not start fails the run.
start_firestore_emulator "$work/emulator.log" || exit $(($? == 2 ? 0 : 1))

# The raw client against the emulator, in project $1, for $2 seconds; prints
# "records/s p50_ms p99_ms errors".
raw_client() {
  FIRESTORE_EMULATOR_HOST=127.0.0.1:$emulator_port target/release/examples/firestore_raw \
    --project "$1" --concurrency "$connections" --users "$users" --seconds "$2"
}

firestore_row() {
  printf '%-32s %12s %10s %10s %10s %8s %10s\n' "$@"
}

# A run of the service on Firestore, in its own project: label, project, extra environment.
firestore_service() {
  local label=$1 firestore_project=$2
  shift 2
  if ! start_service "$work/$firestore_project.log" STORE=firestore \
    GOOGLE_CLOUD_PROJECT="$firestore_project" FIRESTORE_EMULATOR_HOST="127.0.0.1:$emulator_port" "$@"; then
    firestore_row "$label" "did not start" - - - - -
    return
  fi
  wrk_run "$port" 3 POST /usage 0 >/dev/null
  local rps p50 p99 failed ratio
  read -r rps p50 p99 failed <<<"$(wrk_run "$port" "$duration" POST /usage 0)"
  ratio=$(awk -v a="$rps" -v b="$raw_rps" 'BEGIN {printf "%.1f", 100 * a / b}')
  firestore_row "$label" "$rps" "$(in_ms "$p50")" "$(in_ms "$p99")" "$ratio%" "$failed" "$(peak_memory)"
  stop_service
}

# A fresh emulator's throughput climbs about fivefold during its first minute of load, as its
# JIT compiles: that minute goes to a project of its own, so that no run measures it. Each
# run's own warm-up then creates its documents.
raw_client bench-warm-up 60 >/dev/null
raw_client bench-raw 3 >/dev/null
raw=$(raw_client bench-raw "$duration")
read -r raw_rps raw_p50 raw_p99 raw_errors <<<"$raw"

echo "Firestore emulator, POST /usage {\"tokens\": 1}: $connections in flight, ${duration}s a run, $users users"
firestore_row record records/s p50 p99 of-raw errors peak
firestore_row "raw gRPC client (2 RPCs)" "$raw_rps" "${raw_p50}ms" "${raw_p99}ms" "100.0%" "$raw_errors" -
firestore_service "service, document cache on" bench-cache-on
firestore_service "service, document cache off" bench-cache-off FIRESTORE_CACHE_MIB=0
