# prometheus component: Debian's prometheus on 127.0.0.1:9090 with its own config and
# TSDB in the state dir (config template: e2e/prometheus/prometheus.yml.tmpl).
#
# Later work adds a scrape target by dropping a file_sd file into
# $PLUMBLINE_STACK_DIR/prometheus/targets/ (env PROMETHEUS_TARGETS_DIR), e.g.
#   [{"targets": ["127.0.0.1:8080"], "labels": {"component": "operator"}}]
# Prometheus picks it up within 5 s and scrapes it every 5 s under job "plumbline".
#
# Writes:  env PROMETHEUS_URL, PROMETHEUS_TARGETS_DIR

PROMETHEUS_LISTEN=127.0.0.1:9090
PROMETHEUS_STATE=$STATE_DIR/prometheus

prometheus_install() { ensure_packages prometheus curl; }

prometheus_ready() { curl -sf "http://$PROMETHEUS_LISTEN/-/ready" >/dev/null; }

prometheus_up() {
    mkdir -p "$PROMETHEUS_STATE/targets" "$PROMETHEUS_STATE/data"
    sed -e "s|@TARGETS_DIR@|$PROMETHEUS_STATE/targets|g" -e "s|@LISTEN@|$PROMETHEUS_LISTEN|g" \
        "$E2E_DIR/prometheus/prometheus.yml.tmpl" >"$PROMETHEUS_STATE/prometheus.yml"
    start_bg prometheus /usr/bin/prometheus \
        --config.file="$PROMETHEUS_STATE/prometheus.yml" \
        --storage.tsdb.path="$PROMETHEUS_STATE/data" \
        --storage.tsdb.retention.time=1d \
        --web.listen-address="$PROMETHEUS_LISTEN" \
        --web.enable-lifecycle
    wait_until prometheus 60 prometheus_ready
    env_set PROMETHEUS_URL "http://$PROMETHEUS_LISTEN"
    env_set PROMETHEUS_TARGETS_DIR "$PROMETHEUS_STATE/targets"
}

prometheus_down() {
    stop_pid prometheus
    rm -rf "$PROMETHEUS_STATE"
}

prometheus_status() { status_line prometheus; }
