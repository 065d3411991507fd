#!/usr/bin/env bash
# A Python venv with pinned requirements, made again only when they change:
#   python-venv.sh VENV REQUIREMENTS
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$1
requirements=$2
if ! cmp -s "$requirements" "$venv/installed.txt" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/installed.txt"
fi
