#!/usr/bin/env bash
# Every test: the Rust suites (which start their own Firestore emulators), the security-rules
# tests in Node (which start theirs), and the contract test of the OpenAPI document against
# the running service. Needs Rust, Java 17, Node 20, Python 3 and the Google Cloud CLI's
# cloud-firestore-emulator component.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked
bash scripts/test-rules.sh
bash scripts/test-contract.sh
