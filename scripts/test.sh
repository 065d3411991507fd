#!/usr/bin/env bash
# Every test: the Rust suites (which start their own Firestore, Firebase Auth and Pub/Sub
# emulators, and a webhook receiver in Python), the dashboard in a real browser (against the
# debug binary that cargo test leaves), the security-rules tests in Node (which start theirs),
# the contract test of the OpenAPI document against the running service, and the alert rules'
# unit tests. Needs Rust, Java 17, Node 20, Python 3 and the Google Cloud CLI's
# cloud-firestore-emulator and pubsub-emulator components; installs Chromium and promtool from
# Debian's packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The Auth emulator (firebase-tools, locked). Its install scripts only build an optional native
# module that the Auth emulator does not use, and would compile it from source here.
(cd tests/auth-emulator && npm ci --no-audit --no-fund --ignore-scripts)
# The webhook receiver's Python: the Standard Webhooks reference library, pinned.
bash scripts/notify-venv.sh
cargo test --locked
bash scripts/test-browser.sh
bash scripts/test-rules.sh
bash scripts/test-contract.sh
bash scripts/test-alerts.sh
