# VM-backed nodes: kubelet-sim registers every VM listed in $STATE_DIR/nodes.d/*.json (written
# by the hypervisor components) as a Node, keeps it Ready with Lease and status heartbeats,
# and plays the kubelet's part for pods bound to it (see e2e/src/kubelet_sim/).

NODES_DIR=$STATE_DIR/nodes.d
NODES_SIM_BIN=$STATE_DIR/bin/kubelet-sim

nodes_install() {
    # `up` on a running stack stays a no-op: no rebuild under a running kubelet-sim.
    is_running kubelet-sim && return 0
    command -v cargo >/dev/null || { [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"; }
    command -v cargo >/dev/null || die "nodes: cargo is needed to build kubelet-sim (install rustup)"
    log "building kubelet-sim"
    (cd "$REPO_DIR" && cargo build -p plumbline-e2e --bin kubelet-sim) >>"$LOG_DIR/kubelet-sim-build.log" 2>&1 ||
        die "nodes: building kubelet-sim failed; see $LOG_DIR/kubelet-sim-build.log"
}

# A Ready node without the not-ready taint is one the scheduler will use.
nodes_is_schedulable() {
    local out
    out=$(kubectl --kubeconfig "$K8S_ADMIN_KUBECONFIG" get node "$1" \
        -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}') || return 1
    [[ $out == True* ]] && [[ $out != *node.kubernetes.io/not-ready* ]]
}

nodes_up() {
    k8s_apiserver_ready || die "nodes: the apiserver is not up; start it with 'e2e/stack up k8s'"
    mkdir -p "$NODES_DIR" "$(dirname "$NODES_SIM_BIN")"
    if ! is_running kubelet-sim; then
        # A private copy, so a rebuild in the shared target dir does not swap it underneath.
        cp "${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/kubelet-sim" "$NODES_SIM_BIN"
    fi
    start_bg kubelet-sim "$NODES_SIM_BIN" --kubeconfig "$K8S_DIR/kubelet-sim.kubeconfig" --nodes-dir "$NODES_DIR"
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
