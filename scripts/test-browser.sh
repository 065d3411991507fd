#!/usr/bin/env bash
# The dashboard in a real browser: Debian's Chromium, driven by playwright-core, against the
# debug binary that `cargo test` (or `cargo build`) leaves in target/debug, with the Firebase
# Auth emulator of tests/auth-emulator (installed by scripts/test.sh). Installs Chromium from
# Debian's packages when /usr/bin/chromium is missing; a browser that cannot be had fails the
# run. Screenshots go to target/browser-artifacts/, and docs/dashboard.png is written anew.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/chromium ]]; then
  candidate=$(apt-cache policy chromium 2>/dev/null | sed -n 's/^ *Candidate: //p')
  if [[ -z $candidate || $candidate == "(none)" ]]; then
    apt-get update
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

cd tests/browser
npm ci --no-audit --no-fund
node --test --test-concurrency=1
