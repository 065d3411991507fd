# Sourced by the benchmark scripts: a free port, and a Firestore emulator of their own.
#
#   free_port                     prints a free port of 127.0.0.1
#   start_firestore_emulator LOG  starts the Google Cloud CLI's Firestore emulator on a free
#                                 port, logging to LOG, and waits until it answers; sets
#                                 `emulator` (its process group: `kill -- -$emulator` ends it)
#                                 and `emulator_port`. Returns 2 when the emulator or java is
#                                 missing (and says so), 1 when it does not start.

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_firestore_emulator() {
  local log=$1 sdk_root jar
  sdk_root=$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null || echo /usr/lib/google-cloud-sdk)
  jar=$sdk_root/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar
  if [ ! -f "$jar" ] || ! command -v java >/dev/null; then
    echo "Firestore: skipped, no emulator ($jar) or no java"
    return 2
  fi
  emulator_port=$(free_port)
  setsid java -Xmx2g -cp "$jar" com.google.cloud.datastore.emulator.firestore.CloudFirestore \
    --host 127.0.0.1 --port "$emulator_port" >"$log" 2>&1 &
  emulator=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$emulator_port/" >/dev/null && return 0
    kill -0 "$emulator" 2>/dev/null || break
    sleep 0.1
  done
  echo "the Firestore emulator did not start:" >&2
  tail -n 20 "$log" >&2
  return 1
}
