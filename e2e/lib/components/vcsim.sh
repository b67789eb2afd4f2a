# vcsim component: the govmomi vCenter simulator (e2e/vcsim/main.go) built against Debian's
# golang-github-vmware-govmomi-dev, serving a VPX inventory (3 hosts: one standalone, two in
# a cluster; 4 VMs) on vim25 SOAP over TLS with user/password auth.
#
# TLS: a CA generated here signs the server certificate (127.0.0.1, localhost);
# clients verify with VSPHERE_CA_FILE.
# Control endpoint (test-only, plain HTTP on loopback, see main.go): VCSIM_CONTROL_URL
#   PUT /latency {"vm","read_ms","write_ms"}, DELETE /latency?vm=, POST /sessions/terminate, GET /vms,
#   GET /hosts, POST /hosts/maintenance {"host","running_s"}, DELETE /hosts/maintenance?host=,
#   PUT /hosts/linger {"host","running_s"}
#
# Writes:  $PLUMBLINE_STACK_DIR/nodes.d/vsphere.json  (Nodes for kubelet-sim)
#          env VSPHERE_URL, VSPHERE_USERNAME, VSPHERE_PASSWORD, VSPHERE_CA_FILE, VCSIM_CONTROL_URL

# Overridable, so a second instance (the scale bed, e2e/scale) runs beside the stack.
VCSIM_SDK_ADDR=${PLUMBLINE_VCSIM_SDK_ADDR:-127.0.0.1:8989}
VCSIM_CONTROL_ADDR=${PLUMBLINE_VCSIM_CONTROL_ADDR:-127.0.0.1:8990}
# The inventory: main.go's flags (-clusters, -cluster-hosts, -machines, ...), word-split.
VCSIM_INVENTORY_ARGS=${PLUMBLINE_VCSIM_INVENTORY:-}
VCSIM_USERNAME=plumbline@vsphere.local
VCSIM_STATE=$STATE_DIR/vcsim

vcsim_bin() {
    local govmomi src
    govmomi=$(dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev 2>/dev/null || echo none)
    src=$(cat "$E2E_DIR"/vcsim/*.go | sha256sum | cut -c1-12)
    echo "$PLUMBLINE_CACHE_DIR/vcsim-${govmomi}-${src}/plumbline-vcsim"
}

vcsim_install() {
    ensure_packages golang-go golang-github-vmware-govmomi-dev openssl curl
    local bin
    bin=$(vcsim_bin)
    [ -x "$bin" ] && return 0
    log "building the vSphere simulator into $(dirname "$bin")"
    mkdir -p "$(dirname "$bin")"
    # GOPATH mode: Debian installs the govmomi sources under /usr/share/gocode.
    (cd "$E2E_DIR/vcsim" && GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= \
        GOCACHE="$PLUMBLINE_CACHE_DIR/go-build" go build -o "$bin.tmp" .) >>"$LOG_DIR/vcsim-build.log" 2>&1 ||
        die "building the vSphere simulator failed; see $LOG_DIR/vcsim-build.log"
    mv "$bin.tmp" "$bin"
}

# A CA and a server certificate for 127.0.0.1, regenerated with each fresh state dir.
vcsim_certs() {
    [ -f "$VCSIM_STATE/server.pem" ] && return 0
    local d=$VCSIM_STATE
    {
        openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=plumbline-e2e-ca" \
            -keyout "$d/ca.key" -out "$d/ca.pem"
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
            -keyout "$d/server.key" -out "$d/server.csr"
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
        openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
            -days 30 -extfile "$d/server.ext" -out "$d/server.pem"
    } >>"$LOG_DIR/vcsim-certs.log" 2>&1 || die "generating the simulator's certificates failed; see $LOG_DIR/vcsim-certs.log"
}

vcsim_ready() {
    curl -sf "http://$VCSIM_CONTROL_ADDR/healthz" >/dev/null &&
        curl -sf --cacert "$VCSIM_STATE/ca.pem" "https://$VCSIM_SDK_ADDR/about" >/dev/null
}

vcsim_up() {
    mkdir -p "$VCSIM_STATE" "$STATE_DIR/nodes.d"
    vcsim_certs
    [ -f "$VCSIM_STATE/password" ] || openssl rand -hex 16 >"$VCSIM_STATE/password"
    start_bg vcsim "$(vcsim_bin)" \
        -listen "$VCSIM_SDK_ADDR" -control "$VCSIM_CONTROL_ADDR" \
        -cert "$VCSIM_STATE/server.pem" -key "$VCSIM_STATE/server.key" -ca "$VCSIM_STATE/ca.pem" \
        -username "$VCSIM_USERNAME" -password "$(cat "$VCSIM_STATE/password")" \
        -nodes-file "$STATE_DIR/nodes.d/vsphere.json" $VCSIM_INVENTORY_ARGS
    wait_until vcsim 120 vcsim_ready
    env_set VSPHERE_URL "https://$VCSIM_SDK_ADDR/sdk"
    env_set VSPHERE_USERNAME "$VCSIM_USERNAME"
    env_set VSPHERE_PASSWORD "$(cat "$VCSIM_STATE/password")"
    env_set VSPHERE_CA_FILE "$VCSIM_STATE/ca.pem"
    env_set VCSIM_CONTROL_URL "http://$VCSIM_CONTROL_ADDR"
}

# Keeps the CA and password, so restarting just this component does not invalidate what
# clients already read from the env file; a full `down` removes the whole state dir.
vcsim_down() {
    stop_pid vcsim
    rm -f "$STATE_DIR/nodes.d/vsphere.json"
}

vcsim_status() { status_line vcsim; }

vcsim_set_latency() {
    local vm=$1 read_ms=$2 write_ms=$3 out
    out=$(curl -sS -X PUT "http://$VCSIM_CONTROL_ADDR/latency" \
        -d "{\"vm\": \"$vm\", \"read_ms\": $read_ms, \"write_ms\": $write_ms}" 2>&1) &&
        ! grep -q '"error"' <<<"$out" || die "setting simulator latency on $vm: $out"
    log "simulator VM $vm: disk latency read ${read_ms} ms, write ${write_ms} ms"
}

vcsim_clear_latency() {
    local vm=$1 out
    out=$(curl -sS -X DELETE "http://$VCSIM_CONTROL_ADDR/latency?vm=$vm" 2>&1) &&
        ! grep -q '"error"' <<<"$out" || die "clearing simulator latency on $vm: $out"
    log "simulator VM $vm: disk latency back to baseline"
}
