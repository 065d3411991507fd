#!/usr/bin/env bash
# HTTP benchmark of the release binary on the embedded store. wrk (installed from Debian's
# packages when missing) drives GET /healthz (the HTTP ceiling), GET /usage/today,
# POST /usage without and with an Idempotency-Key, and streamed replies' reservation pairs
# (reserve, then commit), for 1,000 users whose real RS256 ID tokens are checked against a
# local JWK set; it prints requests/s, p50, p99, the ratio to the ceiling, and the service's
# peak memory. Not part of CI: it measures, it asserts nothing.
#
#   bash scripts/bench-http.sh [seconds per run, default 10] [connections, default 64]
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-10}
connections=${2:-64}
users=1000
project=token-limits-bench

if ! command -v wrk >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
cargo build --release --locked --quiet

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The JWK set, served as Google serves it.
mkdir "$work/jwks"
printf '{"keys":[%s]}' "$(cat tests/fixtures/test-key-1.jwk.json)" >"$work/jwks/keys"
jwks_port=$(free_port)
(cd "$work/jwks" && exec python3 -m http.server "$jwks_port" --bind 127.0.0.1) >/dev/null 2>&1 &
pids+=($!)

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

port=$(free_port)
HOST=127.0.0.1 PORT=$port SQLITE_PATH="$work/usage.db" FIREBASE_PROJECT_ID=$project \
  FIREBASE_JWKS_URL="http://127.0.0.1:$jwks_port/keys" DAILY_LIMIT_TRIAL=1000000000000 \
  target/release/token-limits >"$work/service.log" 2>&1 &
service=$!
pids+=("$service")
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

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

# Runs wrk with a script; prints "requests/s p50 p99 non-2xx".
measure() {
  local output script=${4:-requests.lua}
  output=$(METHOD=$1 TARGET=$2 KEYED=$3 TOKENS="$work/tokens" \
    wrk -t1 -c"$connections" -d"${duration}s" --latency -s "$work/$script" "http://127.0.0.1:$port")
  echo "$output" >>"$work/wrk.log"
  local rps p50 p99 failed
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$output")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$output")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$output")
  failed=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$output")
  echo "$rps $p50 $p99 ${failed:-0}"
}

echo "wrk -t1 -c$connections, ${duration}s a run, $users users, $(nproc) cores, release build, RUST_LOG=info"
printf '%-32s %12s %10s %10s %12s %8s\n' request requests/s p50 p99 of-ceiling non-2xx
read -r ceiling p50 p99 failed <<<"$(measure GET /healthz 0)"
printf '%-32s %12s %10s %10s %11s%% %8s\n' "GET /healthz (ceiling)" "$ceiling" "$p50" "$p99" 100 "$failed"
for run in "GET /usage/today 0" "POST /usage 0" "POST /usage 1"; do
  read -r method path keyed <<<"$run"
  read -r rps p50 p99 failed <<<"$(measure "$method" "$path" "$keyed")"
  label="$method $path"
  [ "$keyed" = 1 ] && label="$label (Idempotency-Key)"
  ratio=$(awk -v a="$rps" -v b="$ceiling" 'BEGIN {printf "%.1f", 100 * a / b}')
  printf '%-32s %12s %10s %10s %11s%% %8s\n' "$label" "$rps" "$p50" "$p99" "$ratio" "$failed"
done
read -r rps p50 p99 failed <<<"$(measure POST /usage/reservations 0 pairs.lua)"
ratio=$(awk -v a="$rps" -v b="$ceiling" 'BEGIN {printf "%.1f", 100 * a / b}')
printf '%-32s %12s %10s %10s %11s%% %8s\n' "reserve+commit (each request)" "$rps" "$p50" "$p99" "$ratio" "$failed"
echo "reservation pairs/s: $(awk -v a="$rps" 'BEGIN {printf "%.0f", a / 2}')"
echo "service peak memory: $(awk '/^VmHWM/ {printf "%.0f MiB", $2 / 1024}' "/proc/$service/status")"
