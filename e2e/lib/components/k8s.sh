# Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.
#
# No registry ships kube-apiserver, so we build 1.20.2 from Debian bookworm's `kubernetes`
# source package (full upstream tree with vendor/), with the reflect2 fix from
# ENVIRONMENT.md, and cache the binaries under a directory named after version and fix.

K8S_VERSION=1.20.2
# Bump when the build recipe changes, so stale caches are not reused.
K8S_FIX_TAG=reflect2-1.0.2
K8S_CACHE=$PLUMBLINE_CACHE_DIR/kubernetes-$K8S_VERSION-$K8S_FIX_TAG
K8S_BIN_DIR=$K8S_CACHE/bin
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)

K8S_DIR=$STATE_DIR/k8s
K8S_PKI=$K8S_DIR/pki
# Overridable, so a second instance (the scale bed, e2e/scale) runs beside the stack.
K8S_API_PORT=${PLUMBLINE_K8S_API_PORT:-6443}
K8S_API_URL=https://127.0.0.1:$K8S_API_PORT
ETCD_CLIENT_PORT=${PLUMBLINE_ETCD_CLIENT_PORT:-23790}
ETCD_PEER_PORT=${PLUMBLINE_ETCD_PEER_PORT:-23800}
# 0: no controller-manager and scheduler (the scale bed creates and binds its pods itself).
K8S_CONTROLLERS=${PLUMBLINE_K8S_CONTROLLERS:-1}
# More kube-apiserver flags, word-split (the scale bed's audit log).
K8S_APISERVER_ARGS=${PLUMBLINE_K8S_APISERVER_ARGS:-}
K8S_ADMIN_KUBECONFIG=$K8S_DIR/admin.kubeconfig
K8S_OPERATOR_KUBECONFIG=$K8S_DIR/operator.kubeconfig
K8S_OPERATOR_USER=plumbline-operator

# shellcheck source=../helm.sh
source "$E2E_DIR/lib/helm.sh"

k8s_binaries_cached() {
    local b
    for b in "${K8S_BINARIES[@]}"; do [ -x "$K8S_BIN_DIR/$b" ] || return 1; done
}

k8s_install() {
    ensure_packages etcd-server openssl
    # helm renders the chart's RBAC for the operator identity at `up`.
    helm_install || die "k8s: installing helm (e2e/lib/helm.sh) failed"
    k8s_binaries_cached && return 0
    ensure_packages golang-go rsync golang-github-modern-go-reflect2-dev dpkg-dev make xz-utils
    is_running k8s-build && return 0
    # The build takes minutes on 2 shared cores: run it in the background while the other
    # components install and start; k8s_up waits for it.
    log "building ${K8S_BINARIES[*]} $K8S_VERSION in the background; log: $LOG_DIR/k8s-build.log"
    : >"$LOG_DIR/k8s-build.log"
    start_bg k8s-build "$E2E_DIR/stack" k8s-build
}

# `e2e/stack k8s-build`: fetch the source package with a private apt config, fix, build, cache.
cmd_k8s_build() {
    local work=$K8S_CACHE.build apt_dir tree
    apt_dir=$work/apt
    rm -rf "$work"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$work/src"
    # Our own sources list and state, so the system's apt configuration is untouched.
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
        >"$apt_dir/sources.list"
    local apt_opts=(
        -o "Dir::Etc::SourceList=$apt_dir/sources.list"
        -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache"
    )
    log "fetching the kubernetes source package"
    apt-get "${apt_opts[@]}" update
    (cd "$work/src" && apt-get "${apt_opts[@]}" source kubernetes)
    tree=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
    [ -n "$tree" ] && [ -f "$tree/Makefile" ] || die "no kubernetes source tree under $work/src"
    [ -f "$tree/debian/changelog" ] && head -n1 "$tree/debian/changelog" | grep -q "really$K8S_VERSION" ||
        die "the kubernetes source package is not upstream $K8S_VERSION: $(head -n1 "$tree/debian/changelog")"

    # reflect2 1.0.1 (vendored) breaks with Go >= 1.18: kube-apiserver SIGSEGVs on the first
    # custom-resource write. Debian's 1.0.2 is API-compatible and fixes it.
    local reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -d "$reflect2" ] || die "missing $reflect2 (golang-github-modern-go-reflect2-dev)"
    rm -rf "$tree/vendor/github.com/modern-go/reflect2"
    cp -r "$reflect2" "$tree/vendor/github.com/modern-go/reflect2"
    rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod" "$tree/vendor/github.com/modern-go/reflect2/go.sum"

    # GOPATH layout as in Debian's debian/rules; plain `go build -mod=vendor` does not work.
    mkdir -p "$tree/.go/src/k8s.io"
    ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes"
    log "building ${K8S_BINARIES[*]}"
    (
        cd "$tree/.go/src/k8s.io/kubernetes"
        export GOPATH=$tree/.go CGO_ENABLED=0 GOCACHE=$PLUMBLINE_CACHE_DIR/go-build GOFLAGS= GO111MODULE=
        export KUBE_GIT_VERSION=v$K8S_VERSION KUBE_GIT_TREE_STATE=clean
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler"
    )
    rm -rf "$K8S_CACHE/bin.tmp"
    mkdir -p "$K8S_CACHE/bin.tmp"
    local b
    for b in "${K8S_BINARIES[@]}"; do
        cp "$tree/_output/bin/$b" "$K8S_CACHE/bin.tmp/$b"
    done
    rm -rf "$K8S_BIN_DIR"
    mv "$K8S_CACHE/bin.tmp" "$K8S_BIN_DIR"
    rm -rf "$work"
    log "cached ${K8S_BINARIES[*]} in $K8S_BIN_DIR"
}

# Waits for the background build started by k8s_install (a no-op when cached).
k8s_wait_for_build() {
    local deadline=$((SECONDS + 2400))
    until k8s_binaries_cached; do
        if ! is_running k8s-build; then
            # It may have finished between the two checks.
            k8s_binaries_cached && break
            die "k8s: building kube-apiserver failed; see $LOG_DIR/k8s-build.log"
        fi
        [ $SECONDS -ge $deadline ] && die "k8s: build did not finish within 40 min; see $LOG_DIR/k8s-build.log"
        sleep 2
    done
    rm -f "$PID_DIR/k8s-build.pid"
}

# CA, apiserver serving cert, service-account keys and tokens; made once per stack.
k8s_make_pki() {
    [ -f "$K8S_PKI/done" ] && return 0
    mkdir -p "$K8S_PKI"
    (
        cd "$K8S_PKI"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=plumbline-stack-ca" \
            -keyout ca.key -out ca.crt
        openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr
        # 10.0.0.1 is the `kubernetes` Service IP in --service-cluster-ip-range.
        printf 'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' >apiserver.ext
        openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile apiserver.ext -out apiserver.crt
        openssl genrsa -out sa.key 2048
        openssl rsa -in sa.key -pubout -out sa.pub
        # token,user,uid,"groups"
        {
            echo "$(openssl rand -hex 24),plumbline-admin,plumbline-admin,\"system:masters\""
            echo "$(openssl rand -hex 24),$K8S_OPERATOR_USER,$K8S_OPERATOR_USER"
            echo "$(openssl rand -hex 24),system:kube-controller-manager,system:kube-controller-manager"
            echo "$(openssl rand -hex 24),system:kube-scheduler,system:kube-scheduler"
            # The simulated kubelet writes nodes, leases and pod status for many nodes, which
            # the Node authorizer would restrict to one node per identity.
            echo "$(openssl rand -hex 24),plumbline-kubelet-sim,plumbline-kubelet-sim,\"system:masters\""
        } >tokens.csv
        chmod 600 tokens.csv ./*.key
    ) >>"$LOG_DIR/k8s-pki.log" 2>&1 || die "k8s: making certificates failed; see $LOG_DIR/k8s-pki.log"
    touch "$K8S_PKI/done"
}

k8s_token_of() { awk -F, -v u="$1" '$2 == u { print $1 }' "$K8S_PKI/tokens.csv"; }

# k8s_write_kubeconfig PATH USER: a token kubeconfig that verifies the apiserver with our CA.
k8s_write_kubeconfig() {
    local path=$1 user=$2
    cat >"$path" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: plumbline
  cluster:
    server: $K8S_API_URL
    certificate-authority-data: $(base64 -w0 "$K8S_PKI/ca.crt")
users:
- name: $user
  user:
    token: $(k8s_token_of "$user")
contexts:
- name: $user@plumbline
  context:
    cluster: plumbline
    user: $user
current-context: $user@plumbline
KUBECONFIG
    chmod 600 "$path"
}

k8s_etcd_healthy() { curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
k8s_apiserver_ready() {
    curl -fsS --cacert "$K8S_PKI/ca.crt" -H "Authorization: Bearer $(k8s_token_of plumbline-admin)" \
        "$K8S_API_URL/readyz" | grep -qx ok
}
k8s_secure_healthz() { curl -fsSk "https://127.0.0.1:$1/healthz" | grep -qx ok; }
# Pods are rejected until the service-account controller made the namespace's `default` account.
k8s_default_sa_exists() { kubectl --kubeconfig "$K8S_ADMIN_KUBECONFIG" -n default get serviceaccount default; }

k8s_up() {
    k8s_wait_for_build
    mkdir -p "$K8S_DIR"
    k8s_make_pki
    k8s_write_kubeconfig "$K8S_ADMIN_KUBECONFIG" plumbline-admin
    k8s_write_kubeconfig "$K8S_OPERATOR_KUBECONFIG" "$K8S_OPERATOR_USER"
    k8s_write_kubeconfig "$K8S_DIR/controller-manager.kubeconfig" system:kube-controller-manager
    k8s_write_kubeconfig "$K8S_DIR/scheduler.kubeconfig" system:kube-scheduler
    k8s_write_kubeconfig "$K8S_DIR/kubelet-sim.kubeconfig" plumbline-kubelet-sim

    start_bg etcd etcd --name plumbline --data-dir "$K8S_DIR/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "plumbline=http://127.0.0.1:$ETCD_PEER_PORT"
    wait_until etcd 60 k8s_etcd_healthy

    local bin=$K8S_BIN_DIR
    # The apiserver advertises 127.0.0.1, which Endpoints reject, so it does not manage the
    # `kubernetes` Service's endpoints (nothing runs in-cluster here). The requestheader CA
    # only fills the configmap the controller-manager and scheduler read at start.
    start_bg kube-apiserver "$bin/kube-apiserver" \
        --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$K8S_API_PORT" \
        --insecure-port=0 \
        --tls-cert-file="$K8S_PKI/apiserver.crt" --tls-private-key-file="$K8S_PKI/apiserver.key" \
        --client-ca-file="$K8S_PKI/ca.crt" \
        --requestheader-client-ca-file="$K8S_PKI/ca.crt" --requestheader-allowed-names=front-proxy-client \
        --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
        --requestheader-extra-headers-prefix=X-Remote-Extra- \
        --token-auth-file="$K8S_PKI/tokens.csv" \
        --authorization-mode=RBAC \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$K8S_PKI/sa.pub" \
        --service-account-signing-key-file="$K8S_PKI/sa.key" \
        --service-cluster-ip-range=10.0.0.0/24 \
        --allow-privileged=true \
        --endpoint-reconciler-type=none \
        --cert-dir="$K8S_DIR/apiserver-certs" $K8S_APISERVER_ARGS
    wait_until kube-apiserver 120 k8s_apiserver_ready

    if [ "$K8S_CONTROLLERS" = 1 ]; then
        k8s_controllers_up
    else
        # Pods need their service account; without the controller-manager nobody makes it.
        kubectl --kubeconfig "$K8S_ADMIN_KUBECONFIG" -n default create serviceaccount default \
            >>"$LOG_DIR/k8s-rbac.log" 2>&1 || k8s_default_sa_exists >/dev/null ||
            die "k8s: creating the default service account failed; see $LOG_DIR/k8s-rbac.log"
    fi

    k8s_apply_operator_rbac

    env_set KUBECONFIG "$K8S_ADMIN_KUBECONFIG"
    env_set PLUMBLINE_OPERATOR_KUBECONFIG "$K8S_OPERATOR_KUBECONFIG"
    env_set KUBE_APISERVER_URL "$K8S_API_URL"
    env_set KUBE_CA_FILE "$K8S_PKI/ca.crt"
    env_set PLUMBLINE_KUBELET_SIM_KUBECONFIG "$K8S_DIR/kubelet-sim.kubeconfig"
}

k8s_controllers_up() {
    local bin=$K8S_BIN_DIR
    # Node-lifecycle stays on: kubelet-sim renews Leases and status, as a kubelet would.
    start_bg kube-controller-manager "$bin/kube-controller-manager" \
        --kubeconfig="$K8S_DIR/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$K8S_DIR/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$K8S_DIR/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port=10257 --port=0 \
        --service-account-private-key-file="$K8S_PKI/sa.key" \
        --root-ca-file="$K8S_PKI/ca.crt" \
        --use-service-account-credentials=true \
        --cluster-signing-cert-file="$K8S_PKI/ca.crt" --cluster-signing-key-file="$K8S_PKI/ca.key" \
        --leader-elect=false \
        --cert-dir="$K8S_DIR/controller-manager-certs"
    start_bg kube-scheduler "$bin/kube-scheduler" \
        --kubeconfig="$K8S_DIR/scheduler.kubeconfig" \
        --authentication-kubeconfig="$K8S_DIR/scheduler.kubeconfig" \
        --authorization-kubeconfig="$K8S_DIR/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port=10259 --port=0 \
        --leader-elect=false \
        --cert-dir="$K8S_DIR/scheduler-certs"
    wait_until kube-controller-manager 60 k8s_secure_healthz 10257
    wait_until kube-scheduler 60 k8s_secure_healthz 10259
    wait_until kube-controller-manager 60 k8s_default_sa_exists
}

# The operator identity gets exactly the chart's RBAC: the ClusterRole rendered from
# charts/plumbline/templates/rbac.yaml, bound to the stack's user by
# e2e/manifests/operator-rbac.yaml (which also grants the chart's release-namespace Role in
# every namespace; see there).
K8S_CHART_ROLE=plumbline-operator-chart
k8s_apply_operator_rbac() {
    local helm rendered
    helm=$(helm_bin) || die "k8s: installing helm (e2e/lib/helm.sh) failed"
    # The tests run the operator with --taint-degraded-nodes and --host-maintenance, which the
    # chart grants only with operator.taintDegradedNodes and operator.hostMaintenance.
    rendered=$("$helm" template plumbline "$REPO_DIR/charts/plumbline" \
        --set fullnameOverride=$K8S_CHART_ROLE --set operator.taintDegradedNodes=true \
        --set operator.hostMaintenance=true \
        --show-only templates/rbac.yaml 2>>"$LOG_DIR/k8s-rbac.log") ||
        die "k8s: rendering the chart's RBAC failed; see $LOG_DIR/k8s-rbac.log"
    # Only the ClusterRole: the chart binds it to its ServiceAccount, the stack to its user.
    printf '%s\n---\n' "$rendered" | awk '
        /^---$/ { if (doc ~ /\nkind: ClusterRole\n/) printf "---%s", doc; doc = "\n"; next }
        { doc = doc $0 "\n" }' >"$K8S_DIR/operator-chart-role.yaml"
    grep -q "^  name: $K8S_CHART_ROLE\$" "$K8S_DIR/operator-chart-role.yaml" ||
        die "k8s: no ClusterRole $K8S_CHART_ROLE in the chart's rendered RBAC; see $K8S_DIR/operator-chart-role.yaml"
    {
        kubectl --kubeconfig "$K8S_ADMIN_KUBECONFIG" apply -f "$K8S_DIR/operator-chart-role.yaml" &&
            kubectl --kubeconfig "$K8S_ADMIN_KUBECONFIG" apply -f "$E2E_DIR/manifests/operator-rbac.yaml"
    } >>"$LOG_DIR/k8s-rbac.log" 2>&1 || die "k8s: applying operator RBAC failed; see $LOG_DIR/k8s-rbac.log"
}

k8s_down() {
    local pid
    pid=$(pid_of k8s-build)
    # The build is a tree of make/go processes in its own session: signal the whole group.
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || true
    fi
    stop_pid k8s-build
    stop_pid kube-scheduler
    stop_pid kube-controller-manager
    stop_pid kube-apiserver
    stop_pid etcd
}

k8s_status() {
    local p
    for p in etcd kube-apiserver kube-controller-manager kube-scheduler; do status_line "$p"; done
    if is_running k8s-build; then status_line k8s-build; fi
}
