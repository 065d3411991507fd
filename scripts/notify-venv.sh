#!/usr/bin/env bash
# The Python of tests/notify_sinks.rs: its webhook receiver checks signatures with the
# Standard Webhooks reference library, which the service does not share.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/python-venv.sh target/notify-venv scripts/notify-requirements.txt
