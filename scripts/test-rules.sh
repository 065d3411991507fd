#!/usr/bin/env bash
# The Firestore security-rules tests: installs the locked Node packages, then runs the tests
# against a Firestore emulator that tests/rules starts (and stops) with firestore.rules.
# Needs Node 20+, Java and the Google Cloud CLI's cloud-firestore-emulator component.
set -euo pipefail
cd "$(dirname "$0")/../tests/rules"

npm ci --no-audit --no-fund
npm test
