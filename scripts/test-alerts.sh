#!/usr/bin/env bash
# The alerting rules: checks deploy/alerts.yaml with promtool, then runs its unit tests,
# deploy/alerts.test.yaml. Installs promtool (Debian's prometheus package) when missing,
# without starting the Prometheus server that the package brings.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
  candidate=$(apt-cache policy prometheus 2>/dev/null | sed -n 's/^ *Candidate: //p')
  if [[ -z $candidate || $candidate == "(none)" ]]; then
    apt-get update
  fi
  # invoke-rc.d asks policy-rc.d whether to start a service; 101 says no. Only ours is removed.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
  # Under systemd the package also enables the server at boot; only promtool is wanted.
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now --quiet prometheus
  fi
fi

promtool check rules deploy/alerts.yaml
promtool test rules deploy/alerts.test.yaml
