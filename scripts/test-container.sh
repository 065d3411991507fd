#!/usr/bin/env bash
# Container test: builds the Dockerfile with podman, then runs the image as Cloud Run would and
# checks that it serves a real signed request as uid 65532, serves within a second of starting,
# serves /metrics only for its METRICS_TOKEN, and on `podman stop` finishes the request in
# flight and exits 0. Needs root, apt, Python 3 and OpenSSL. Base images that cannot be pulled
# are replaced by local stand-ins (Debian via debootstrap, the machine's Rust toolchain, so
# rustc too), built once and then reused.
set -euo pipefail
cd "$(dirname "$0")/.."

image=localhost/token-limits:test
build_stage_image=localhost/token-limits-build:test
rust_image=docker.io/library/rust:1-slim-bookworm
runtime_image=gcr.io/distroless/cc-debian12:nonroot
base_image=localhost/debian-base:bookworm
project='token-limits-ct'
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [ "$(id -u)" -ne 0 ]; then
  echo "run as root: podman, apt-get and /etc/containers are used as root" >&2
  exit 1
fi

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

work=$(mktemp -d)
containers=()
helpers=()
cleanup() {
  for c in "${containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  for p in "${helpers[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Tools ------------------------------------------------------------------------------------
# crun (Debian's default) refuses hybrid cgroups, where cgroup v2 also has controllers; runc
# runs there.
runtime=
[ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ] && runtime=runc
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v slirp4netns >/dev/null || missing+=(slirp4netns)
[ -z "$runtime" ] || command -v "$runtime" >/dev/null || missing+=("$runtime")
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
conf=/etc/containers/containers.conf
conf_set() { # table, key, value: only when the key is not set yet
  grep -qs "^$2 *=" "$conf" && return
  if grep -qs "^\[$1\]" "$conf"; then
    sed -i "/^\[$1\]/a $2 = $3" "$conf"
  else
    printf '[%s]\n%s = %s\n' "$1" "$2" "$3" >>"$conf"
  fi
}
# Sandboxes that cannot raise rlimits fail every run (RUN steps too) with "error setting rlimit
# type 7": pin the defaults to values that need no raising.
conf_set containers default_ulimits '["nofile=20000:20000", "nproc=32768:32768"]'
[ -z "$runtime" ] || conf_set engine runtime "\"$runtime\""

# --- Base images: pulled when a registry answers, else local stand-ins ------------------------
extra_cas=(/usr/local/share/ca-certificates/*.crt)
[ -e "${extra_cas[0]}" ] || extra_cas=()

build_base() {
  podman image exists "$base_image" && return
  command -v debootstrap >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  echo "building $base_image (debootstrap from $mirror)"
  local rootfs=$work/rootfs
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; return 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # The machine's own CAs (a TLS-inspecting proxy, say), so that apt and cargo can fetch.
  mkdir -p "$rootfs/usr/local/share/ca-certificates"
  [ ${#extra_cas[@]} -eq 0 ] || cp "${extra_cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
  tar -C "$rootfs" -c . | podman import -q \
    --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$base_image" >/dev/null
  rm -rf "$rootfs"
}

build_runtime_standin() {
  build_base
  echo "building a stand-in for $runtime_image"
  local ctx=$work/distroless
  mkdir -p "$ctx"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  cat >"$ctx/Containerfile" <<EOF
FROM $base_image
LABEL description="local stand-in for $runtime_image (full Debian: it has a shell)"
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN groupadd -g 65532 nonroot && useradd -u 65532 -g 65532 -m -d /home/nonroot -s /sbin/nologin nonroot
USER 65532
WORKDIR /home/nonroot
CMD []
EOF
  podman build --pull=never -t "$runtime_image" "$ctx" >"$work/distroless.log" 2>&1 ||
    { tail -20 "$work/distroless.log" >&2; return 1; }
}

build_rust_standin() {
  build_base
  echo "building a stand-in for $rust_image (the machine's Rust toolchain)"
  local ctx=$work/rust sysroot
  sysroot=$(rustc --print sysroot)
  mkdir -p "$ctx/rustup/toolchains"
  # A hard-linked copy is instant and takes no space. Files may be dropped from it but never
  # changed (no chmod either): that would change the machine's own toolchain.
  cp -al "$sysroot" "$ctx/rustup/toolchains/" 2>/dev/null || {
    rm -rf "$ctx/rustup/toolchains/$(basename "$sysroot")"
    cp -a "$sysroot" "$ctx/rustup/toolchains/"
  }
  rm -rf "$ctx/rustup/toolchains/$(basename "$sysroot")/share/doc"
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$(basename "$sysroot")" \
    >"$ctx/rustup/settings.toml"
  cp -a "${CARGO_HOME:-$HOME/.cargo}/bin" "$ctx/cargo-bin"
  cat >"$ctx/Containerfile" <<EOF
FROM $base_image
LABEL description="local stand-in for $rust_image"
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY rustup /usr/local/rustup
COPY cargo-bin /usr/local/cargo/bin
EOF
  podman build --pull=never -t "$rust_image" "$ctx" >"$work/rust.log" 2>&1 ||
    { tail -20 "$work/rust.log" >&2; return 1; }
  rm -rf "$ctx"
}

ensure_image() { # name, stand-in builder
  podman image exists "$1" && return
  # Offline, a pull fails at once ("no such host").
  if timeout 60 podman pull -q "$1" >/dev/null 2>&1; then return; fi
  "$2"
}

started=$(date +%s%N)
ensure_image "$rust_image" build_rust_standin
ensure_image "$runtime_image" build_runtime_standin
base_ms=$(ms_since "$started")

# --- Build ------------------------------------------------------------------------------------
echo "building $image (about 10 min on 2 cores when nothing is cached)"
started=$(date +%s%N)
# The build stage is tagged too, as the next run's cache; the images of an earlier run that
# this one replaces are removed with their untagged layers (they added up to gigabytes).
replaced=$(podman image inspect --format '{{.Id}}' "$image" "$build_stage_image" 2>/dev/null || true)
{ podman build --pull=never --target build -t "$build_stage_image" . &&
  podman build --pull=never -t "$image" .; } >"$work/build.log" 2>&1 ||
  { tail -40 "$work/build.log" >&2; echo "FAIL: podman build" >&2; exit 1; }
build_ms=$(ms_since "$started")
current=$(podman image inspect --format '{{.Id}}' "$image" "$build_stage_image")
for id in $replaced; do
  grep -qx "$id" <<<"$current" && continue
  podman rmi "$id" >/dev/null || echo "could not remove the replaced image $id" >&2
done
total=$(podman image inspect --format '{{.Size}}' "$image")
runtime_base=$(podman image inspect --format '{{.Size}}' "$runtime_image")
own=$((total - runtime_base))
human() { numfmt --to=si --suffix=B --format=%.1f "$1"; }
echo "image $image: $(human "$total") in all, $(human "$own") in its own layers over $runtime_image"
echo "base images ready in $((base_ms / 1000)) s; image built in $((build_ms / 1000)) s"

# --- A JWK endpoint and a real signed ID token -----------------------------------------------
mkdir -p "$work/jwks" "$work/data"
printf '{"keys":[%s]}\n' "$(cat tests/fixtures/test-key-1.jwk.json)" >"$work/jwks/keys.json"
python3 - "$work/jwks" "$work/jwks.port" >"$work/jwks.log" 2>&1 <<'EOF' &
import functools, http.server, os, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()
EOF
helpers+=($!)
for _ in $(seq 100); do [ -s "$work/jwks.port" ] && break; sleep 0.05; done
jwks_port=$(cat "$work/jwks.port")

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '%s' '{"alg":"RS256","kid":"test-key-1","typ":"JWT"}' | b64url)
claims=$(printf '{"iss":"https://securetoken.google.com/%s","aud":"%s","sub":"ct-user","user_id":"ct-user","iat":%d,"auth_time":%d,"exp":%d}' \
  "$project" "$project" $((now - 10)) $((now - 60)) $((now + 3600)) | b64url)
signature=$(printf '%s.%s' "$header" "$claims" |
  openssl dgst -sha256 -sign tests/fixtures/test-key-1.pem -binary | b64url)
token=$header.$claims.$signature

# --- Run it as Cloud Run would ----------------------------------------------------------------
# The SQLite directory, writable by the image's nonroot user.
chown 65532:65532 "$work/data"
# slirp4netns with allow_host_loopback lets the container reach the JWK endpoint on the host's
# loopback (as 10.0.2.2) while the service listens on 8080 as on Cloud Run; it is published on
# a free loopback port so that parallel runs do not clash.
port=$(free_port)
url=http://127.0.0.1:$port
# A scraper's bearer token: production refuses to start with /metrics open to anyone.
metrics_token=$(openssl rand -hex 16)
ctr=token-limits-ct-$port
containers+=("$ctr")
launched=$(date +%s%N)
podman run -d --name "$ctr" --network slirp4netns:allow_host_loopback=true -p "127.0.0.1:$port:8080" \
  -e PORT=8080 -e K_SERVICE=token-limits -e K_REVISION=token-limits-00001-abc \
  -e K_CONFIGURATION=token-limits \
  -e FIREBASE_PROJECT_ID=$project -e FIREBASE_JWKS_URL="http://10.0.2.2:$jwks_port/keys.json" \
  -e METRICS_TOKEN="$metrics_token" \
  -v "$work/data:/data:Z" "$image" >/dev/null
run_ms=$(ms_since "$launched")

# Poll /healthz every 20 ms; measure from the moment podman started the process.
serving_ns=
for _ in $(seq 500); do
  if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url/healthz")" = 200 ]; then
    serving_ns=$(date +%s%N)
    break
  fi
  [ "$(podman inspect --format '{{.State.Running}}' "$ctr")" = true ] || break
  sleep 0.02
done
started_ns=$(podman inspect --format '{{.State.StartedAt.UnixNano}}' "$ctr")
if [ -z "$serving_ns" ]; then
  podman logs "$ctr" 2>&1 | tail -20 >&2
  fail "/healthz never answered 200"
  exit 1
fi
start_ms=$(((serving_ns - started_ns) / 1000000))
echo "ok   /healthz 200, ${start_ms} ms after the container started (podman run took ${run_ms} ms)"
[ "$start_ms" -lt 1000 ] || fail "serving took ${start_ms} ms, more than a second"

# Ready: the store answers and the signing keys were fetched from the JWK endpoint.
ready=
for _ in $(seq 100); do
  ready=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url/readyz")
  [ "$ready" = 200 ] && break
  sleep 0.05
done
if [ "$ready" = 200 ]; then
  echo "ok   /readyz 200 (store and signing keys at hand)"
else
  fail "/readyz answered $ready"
fi

usage=$(curl -s -w '\n%{http_code}' -X POST "$url/usage" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' -d '{"tokens": 5}')
if [ "${usage##*$'\n'}" = 200 ] && grep -q '"tokensUsed":5[,}]' <<<"$usage" &&
  grep -q '"userId":"ct-user"' <<<"$usage"; then
  echo "ok   POST /usage with a signed token: 200, tokensUsed 5"
else
  fail "POST /usage: $usage"
fi
anonymous=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$url/metrics")
scraped=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $metrics_token" "$url/metrics")
if [ "$anonymous" = 401 ] && [ "$scraped" = 200 ]; then
  echo "ok   /metrics 401 without METRICS_TOKEN, 200 with it"
else
  fail "/metrics: $anonymous without the token, $scraped with it"
fi
if [ -f "$work/data/token-limits.db" ]; then
  echo "ok   SQLite file created on the volume"
else
  fail "no token-limits.db on the /data volume"
fi

# `podman top` reads /proc itself for these descriptors (others need ps in the image).
user=$(podman inspect --format '{{.Config.User}}' "$ctr")
huser=$(podman top "$ctr" huser | tail -n +2 | sort -u | xargs)
pid=$(podman inspect --format '{{.State.Pid}}' "$ctr")
uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
if [ "$user" = 65532:65532 ] && [ "$huser" = 65532 ] && [ "$uids" = "65532 65532 65532 65532" ]; then
  echo "ok   runs as uid 65532 (User $user; podman top huser $huser; real/effective/saved/fs uids $uids)"
else
  fail "user: config '$user', podman top huser '$huser', process uids '$uids'"
fi

# --- podman stop with a request in flight -----------------------------------------------------
# The client sends the head and half the body, waits for the go file, sends the rest, and
# writes the answer's status line and body.
python3 - "$port" "$token" "$work/slow" >"$work/slow.log" 2>&1 <<'EOF' &
import os, socket, sys, time
port, token, base = int(sys.argv[1]), sys.argv[2], sys.argv[3]
body = b'{"tokens": 7}'
s = socket.create_connection(("127.0.0.1", port), timeout=20)
s.sendall((f"POST /usage HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
           "Connection: close\r\n\r\n").encode() + body[:6])
open(base + ".sent", "w").close()
while not os.path.exists(base + ".go"):
    time.sleep(0.01)
s.sendall(body[6:])
answer = b""
while chunk := s.recv(65536):
    answer += chunk
head, _, rest = answer.partition(b"\r\n\r\n")
with open(base + ".answer", "wb") as f:
    f.write(head.split(b"\r\n")[0] + b"\n" + rest)
EOF
helpers+=($!)
client=$!
for _ in $(seq 250); do [ -e "$work/slow.sent" ] && break; sleep 0.02; done
stop_started=$(date +%s%N)
podman stop -t 10 "$ctr" >/dev/null 2>&1 &
stopper=$!
# Finish the body only once the service has taken the signal, so the request is really in flight.
for _ in $(seq 250); do podman logs "$ctr" 2>&1 | grep -q 'SIGTERM received' && break; sleep 0.02; done
sleep 0.2
touch "$work/slow.go"
wait "$stopper" || true
stop_ms=$(ms_since "$stop_started")
wait "$client" || true
answer=$(cat "$work/slow.answer" 2>/dev/null || true)
if grep -q '^HTTP/1.1 200' <<<"$answer" && grep -q '"tokensUsed":12[,}]' <<<"$answer"; then
  echo "ok   the request in flight at SIGTERM was answered 200 (tokensUsed 12)"
else
  fail "request in flight at SIGTERM: ${answer:-no answer} $(cat "$work/slow.log")"
fi
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$ctr")
if [ "$exit_code" = 0 ]; then
  echo "ok   exit code 0 after SIGTERM"
else
  fail "exit code $exit_code after SIGTERM"
fi
if [ "$stop_ms" -lt 5000 ]; then
  echo "ok   podman stop took ${stop_ms} ms (of the 10 s allowed)"
else
  fail "podman stop took ${stop_ms} ms"
fi
if [ "$failures" -gt 0 ]; then
  echo "--- container log" >&2
  podman logs "$ctr" 2>&1 | tail -30 >&2
fi

echo "summary: image $(human "$total") ($(human "$own") own layers), serving ${start_ms} ms after start, stopped in ${stop_ms} ms with a request in flight, ${failures} failed check(s)"
[ "$failures" -eq 0 ]
