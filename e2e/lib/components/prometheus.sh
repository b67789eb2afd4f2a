# prometheus component: Debian's prometheus on 127.0.0.1:9090 with its own config and
# TSDB in the state dir (config template: e2e/prometheus/prometheus.yml.tmpl).
#
# Later work adds a scrape target by dropping a file_sd file into
# $PLUMBLINE_STACK_DIR/prometheus/targets/ (env PROMETHEUS_TARGETS_DIR), e.g.
#   [{"targets": ["127.0.0.1:8080"], "labels": {"component": "operator"}}]
# Prometheus picks it up within 5 s and scrapes it every 5 s under job "plumbline".
#
# It also runs Debian's prometheus-libvirt-exporter on 127.0.0.1:9177 (the guests' real block
# read/write/flush counters and times, per domain) as the first such target.
#
# Writes:  env PROMETHEUS_URL, PROMETHEUS_TARGETS_DIR, LIBVIRT_EXPORTER_URL

PROMETHEUS_LISTEN=127.0.0.1:9090
PROMETHEUS_STATE=$STATE_DIR/prometheus
LIBVIRT_EXPORTER_LISTEN=127.0.0.1:9177

prometheus_install() { ensure_packages prometheus prometheus-libvirt-exporter curl; }

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

    start_bg libvirt-exporter /usr/bin/prometheus-libvirt-exporter \
        --web.listen-address="$LIBVIRT_EXPORTER_LISTEN" --libvirt.uri=qemu:///system
    # Any HTTP answer will do: scrapes fail (and show as such) while libvirt is not up.
    wait_until libvirt-exporter 30 curl -s -o /dev/null "http://$LIBVIRT_EXPORTER_LISTEN/metrics"
    printf '[{"targets": ["%s"], "labels": {"component": "libvirt-exporter"}}]\n' "$LIBVIRT_EXPORTER_LISTEN" \
        >"$PROMETHEUS_STATE/targets/libvirt-exporter.json"

    env_set PROMETHEUS_URL "http://$PROMETHEUS_LISTEN"
    env_set PROMETHEUS_TARGETS_DIR "$PROMETHEUS_STATE/targets"
    env_set LIBVIRT_EXPORTER_URL "http://$LIBVIRT_EXPORTER_LISTEN"
}

prometheus_down() {
    stop_pid libvirt-exporter
    stop_pid prometheus
    rm -rf "$PROMETHEUS_STATE"
}

prometheus_status() {
    status_line prometheus
    status_line libvirt-exporter
}
