#!/usr/bin/env bash
# Runs Prometheus for crossenc in the foreground: installs Debian's `prometheus` package if
# needed (scripts/install-prometheus.sh), checks conf/prometheus/prometheus.yml and its
# rules with promtool, and serves Prometheus on :9091 (UI and API: http://localhost:9091;
# Debian's package has the classic UI only: /classic/alerts, /classic/targets), scraping
# crossenc at localhost:8000 every second.
#
# Start crossenc first (scripts/serve.sh, HTTP on 127.0.0.1:8000); Prometheus shows the
# target DOWN (alert CrossencTargetDown) until it answers. Stop with Ctrl-C.
#
# Environment (all optional):
#   PROMETHEUS_LISTEN_ADDRESS  default 127.0.0.1:9091 (Grafana's data source uses port 9091)
#   PROMETHEUS_DATA_DIR        default ${XDG_DATA_HOME:-~/.local/share}/crossenc/prometheus
#   PROMETHEUS_RETENTION       how long samples are kept, default 7d
#   PROMETHEUS_RETENTION_SIZE  most disk the samples may take, default 2GB
#   PROMETHEUS_CONFIG          default conf/prometheus/prometheus.yml
# Extra arguments go to prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."

listen="${PROMETHEUS_LISTEN_ADDRESS:-127.0.0.1:9091}"
data_dir="${PROMETHEUS_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/crossenc/prometheus}"
retention="${PROMETHEUS_RETENTION:-7d}"
retention_size="${PROMETHEUS_RETENTION_SIZE:-2GB}"
config="${PROMETHEUS_CONFIG:-conf/prometheus/prometheus.yml}"

scripts/install-prometheus.sh

# `check config` also checks the rule files it names.
promtool check config "$config"
promtool test rules conf/prometheus/rules/tests/*.yml

if command -v curl >/dev/null 2>&1 && ! curl -fs -o /dev/null --max-time 2 http://localhost:8000/metrics; then
    echo "observability.sh: crossenc does not answer at http://localhost:8000/metrics yet" \
         "(start it with scripts/serve.sh); Prometheus keeps trying every second." >&2
fi

mkdir -p "$data_dir"
provisioning="$PWD/conf/grafana/provisioning"
cat >&2 <<MSG

Prometheus: http://localhost:${listen##*:}  (alerts: /classic/alerts, targets: /classic/targets)
  data: $data_dir, kept $retention / at most $retention_size

Grafana is not packaged by Debian; with Grafana installed (grafana.com packages or its
container image), start it with this repository's provisioning folder:

  GF_PATHS_PROVISIONING=$provisioning grafana-server --homepath /usr/share/grafana
  # or: docker run --network host -v $provisioning:/etc/grafana/provisioning grafana/grafana

It provisions the "Prometheus" data source (http://localhost:9091, uid prometheus) and the
"Prometheus Metrics Dashboard" (folder crossenc) at http://localhost:3000. The dashboards
provider (conf/grafana/provisioning/dashboards/provider.yml) reads its dashboards from
\$GF_PATHS_PROVISIONING/dashboards: edit its path if you install the folder elsewhere
without that variable (e.g. a deb/rpm Grafana service: /etc/grafana/provisioning).

MSG

exec prometheus \
    --config.file="$config" \
    --web.listen-address="$listen" \
    --storage.tsdb.path="$data_dir" \
    --storage.tsdb.retention.time="$retention" \
    --storage.tsdb.retention.size="$retention_size" \
    "$@"
