# VM-backed nodes: kubelet-sim registers every VM listed in $STATE_DIR/nodes.d/*.json (written
# by the hypervisor components) as a Node, keeps it Ready with Lease and status heartbeats,
# and plays the kubelet's part for pods bound to it (see e2e/src/bin/kubelet-sim/).

NODES_DIR=$STATE_DIR/nodes.d
NODES_SIM_BIN=$STATE_DIR/bin/kubelet-sim
# Seconds between each node's Lease and status renewals (kubelet-sim --heartbeat-seconds).
NODES_HEARTBEAT_SECONDS=${PLUMBLINE_NODES_HEARTBEAT_SECONDS:-10}

# The binary is cached by a hash of its sources, so a warm `up` never waits for cargo
# (whose target dir and lock are shared with every other build on the machine).
nodes_sim_cached() {
    local hash
    hash=$(cd "$REPO_DIR" &&
        find e2e/src/bin/kubelet-sim e2e/src/node_list.rs e2e/src/cluster.rs e2e/src/lib.rs e2e/Cargo.toml -type f | sort |
        xargs sha256sum | sha256sum | cut -c1-12)
    echo "$PLUMBLINE_CACHE_DIR/kubelet-sim-$hash/kubelet-sim"
}

nodes_install() {
    # `up` on a running stack stays a no-op: no rebuild under a running kubelet-sim.
    is_running kubelet-sim && return 0
    local cached
    cached=$(nodes_sim_cached)
    [ -x "$cached" ] && return 0
    command -v cargo >/dev/null || { [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
    command -v cargo >/dev/null || die "nodes: cargo is needed to build kubelet-sim (install rustup)"
    log "building kubelet-sim"
    (cd "$REPO_DIR" && cargo build -p plumbline-e2e --bin kubelet-sim) >>"$LOG_DIR/kubelet-sim-build.log" 2>&1 ||
        die "nodes: building kubelet-sim failed; see $LOG_DIR/kubelet-sim-build.log"
    # Only the newest build is kept.
    rm -rf "$PLUMBLINE_CACHE_DIR"/kubelet-sim-*
    mkdir -p "$(dirname "$cached")"
    strip -o "$cached.tmp" "${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/kubelet-sim"
    mv "$cached.tmp" "$cached"
}

# A Ready node without the not-ready taint is one the scheduler will use.
nodes_is_schedulable() {
    local out
    out=$(kubectl --kubeconfig "$K8S_ADMIN_KUBECONFIG" get node "$1" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}') || return 1
    [[ $out == True* ]] && [[ $out != *node.kubernetes.io/not-ready* ]]
}

# nodes_start: kubelet-sim runs (it registers the listed nodes in the background).
nodes_start() {
    k8s_apiserver_ready || die "nodes: the apiserver is not up; start it with 'e2e/stack up k8s'"
    mkdir -p "$NODES_DIR" "$(dirname "$NODES_SIM_BIN")"
    if ! is_running kubelet-sim; then
        local cached
        cached=$(nodes_sim_cached)
        [ -x "$cached" ] || die "nodes: kubelet-sim is not built; run 'e2e/stack install nodes'"
        cp "$cached" "$NODES_SIM_BIN"
    fi
    start_bg kubelet-sim "$NODES_SIM_BIN" --kubeconfig "$K8S_DIR/kubelet-sim.kubeconfig" --nodes-dir "$NODES_DIR" \
        --heartbeat-seconds "$NODES_HEARTBEAT_SECONDS"
}

nodes_up() {
    nodes_start
    local names node
    names=$("$NODES_SIM_BIN" --kubeconfig "$K8S_DIR/kubelet-sim.kubeconfig" --nodes-dir "$NODES_DIR" --list-nodes) ||
        die "nodes: reading the node lists in $NODES_DIR failed"
    [ -n "$names" ] || log "warning: no VM-backed nodes listed in $NODES_DIR"
    for node in $names; do
        wait_until kubelet-sim 120 nodes_is_schedulable "$node"
    done
    env_set PLUMBLINE_NODES_DIR "$NODES_DIR"
}

nodes_down() {
    stop_pid kubelet-sim
}

nodes_status() {
    status_line kubelet-sim
}
