# Shared helpers for e2e/stack. Components live in lib/components/<name>.sh and define
# <name>_install, <name>_up, <name>_down and <name>_status.

STATE_DIR=$PLUMBLINE_STACK_DIR
LOG_DIR=$STATE_DIR/logs
PID_DIR=$STATE_DIR/pids
STACK_ENV_FILE=$STATE_DIR/env

log() { printf '[stack %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

ensure_dirs() { mkdir -p "$STATE_DIR" "$LOG_DIR" "$PID_DIR" "$PLUMBLINE_CACHE_DIR"; }

APT_UPDATED=
# Install Debian packages that are missing; no-op when all are present.
ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ -z "$APT_UPDATED" ]; then
        apt-get update -qq -o DPkg::Lock::Timeout=600 >"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed; see $LOG_DIR/apt.log"
        APT_UPDATED=1
    fi
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" \
        >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed; see $LOG_DIR/apt.log"
}

pid_of() { cat "$PID_DIR/$1.pid" 2>/dev/null || true; }

# is_running NAME: the process recorded for NAME is alive.
is_running() {
    local pid
    pid=$(pid_of "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# close_inherited_fds: closes every descriptor above stderr in the current (sub)shell. A daemon
# started from a test must not keep the caller's descriptors: a lock taken with flock(1) around
# a test run would otherwise be held for as long as the daemon lives. Call it in the subshell
# that then execs the daemon, so the recorded pid stays the daemon's.
close_inherited_fds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    return 0
}

# start_bg NAME CMD...: start CMD in the background, logging to $LOG_DIR/NAME.log,
# and record its pid. A no-op when NAME is already running.
start_bg() {
    local name=$1
    shift
    if is_running "$name"; then
        return 0
    fi
    (
        close_inherited_fds
        exec setsid "$@"
    ) >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$PID_DIR/$name.pid"
    # setsid made it a process-group leader: stop_pid signals the whole group, so children
    # it spawned (e.g. a build's compilers) stop with it.
    touch "$PID_DIR/$name.group"
}

# record_pid NAME PID: for daemons that fork and write their own pidfile.
record_pid() { echo "$2" >"$PID_DIR/$1.pid"; }

# stop_pid NAME: TERM the recorded pid, wait, then KILL. Removes the record.
stop_pid() {
    local name=$1 pid i
    local target
    pid=$(pid_of "$name")
    target=$pid
    [ -e "$PID_DIR/$name.group" ] && target=-$pid
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "$target" 2>/dev/null || true
        for i in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) ignored TERM; killing"
            kill -KILL -- "$target" 2>/dev/null || true
        fi
    fi
    rm -f "$PID_DIR/$name.pid" "$PID_DIR/$name.group"
}

# wait_until NAME TIMEOUT_S CMD...: poll CMD until it succeeds; on timeout fail naming
# the component and its log.
wait_until() {
    local name=$1 timeout=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if [ -f "$PID_DIR/$name.pid" ] && ! is_running "$name"; then
            die "$name exited during start; see $LOG_DIR/$name.log"
        fi
        [ $SECONDS -ge $deadline ] && die "$name did not become ready within ${timeout}s; see $LOG_DIR/$name.log"
        sleep 0.5
    done
}

# env_set KEY VALUE: record a value in the stack's env file (shell syntax, read by tests).
env_set() {
    touch "$STACK_ENV_FILE"
    grep -v "^$1=" "$STACK_ENV_FILE" >"$STACK_ENV_FILE.tmp" || true
    # Plain KEY=VALUE lines: values must not contain spaces or newlines.
    printf '%s=%s\n' "$1" "$2" >>"$STACK_ENV_FILE.tmp"
    mv "$STACK_ENV_FILE.tmp" "$STACK_ENV_FILE"
}

# selected_components [NAME...]: the named components in start order, or all of them.
selected_components() {
    local c want
    if [ $# -eq 0 ]; then
        echo "${COMPONENTS[@]}"
        return
    fi
    for want in "$@"; do
        declare -F "${want}_up" >/dev/null || die "unknown component '$want' (components: ${COMPONENTS[*]})"
    done
    for c in "${COMPONENTS[@]}"; do
        for want in "$@"; do [ "$c" = "$want" ] && echo -n "$c "; done
    done
}

stack_install() {
    ensure_dirs
    local c
    for c in $(selected_components "$@"); do "${c}_install"; done
}

stack_up() {
    local start=$SECONDS c
    stack_install "$@"
    for c in $(selected_components "$@"); do
        log "starting $c"
        "${c}_up"
    done
    env_set PLUMBLINE_STACK_DIR "$STATE_DIR"
    log "stack is up in $((SECONDS - start))s; env: $STACK_ENV_FILE"
    stack_status
}

stack_down() {
    local selected i
    read -r -a selected <<<"$(selected_components "$@")"
    for ((i = ${#selected[@]} - 1; i >= 0; i--)); do
        "${selected[i]}_down" || log "stopping ${selected[i]} reported an error"
    done
    [ $# -eq 0 ] || return 0
    # Anything still recorded was started by us: stop it by pid.
    local f
    for f in "$PID_DIR"/*.pid; do
        [ -e "$f" ] || continue
        stop_pid "$(basename "$f" .pid)"
    done
    rm -rf "$STATE_DIR"
    log "stack is down"
}

stack_status() {
    local c
    for c in "${COMPONENTS[@]}"; do "${c}_status" || true; done
}

stack_logs() {
    if [ $# -eq 0 ]; then ls -1 "$LOG_DIR"; else cat "$LOG_DIR/$1.log"; fi
}

# status_line NAME: one line saying whether the recorded process is up.
status_line() {
    if is_running "$1"; then
        printf '  %-22s up    pid %s\n' "$1" "$(pid_of "$1")"
    else
        printf '  %-22s down\n' "$1"
    fi
}

stack_test() {
    local status=0
    # A failed start must not leave half a stack running.
    [ -n "${KEEP_STACK:-}" ] || trap 'stack_down >/dev/null 2>&1' EXIT
    # The demo leaves its operator, intent and provider behind: the operator would act on the
    # guests the tests inject latency into, and the provider would sample them. Start afresh.
    if [ -e "$STATE_DIR/demo-ran" ] || is_running operator; then
        log "the demo ran on this stack: stopping it first, so the tests start from a fresh one"
        stack_down
    fi
    stack_up
    cd "$REPO_DIR"
    "$REPO_DIR/e2e/run-tests" "$@" || status=$?
    if [ -n "${KEEP_STACK:-}" ]; then
        log "KEEP_STACK is set: leaving the stack up"
        return $status
    fi
    stack_down_verified || status=$?
    return $status
}

# stack_down_verified: down, then check that no process the stack recorded is still alive.
stack_down_verified() {
    local pids=() f pid alive=()
    for f in "$PID_DIR"/*.pid; do
        [ -e "$f" ] && pids+=("$(basename "$f" .pid)=$(cat "$f")")
    done
    stack_down
    for f in "${pids[@]}"; do
        pid=${f#*=}
        kill -0 "$pid" 2>/dev/null && alive+=("$f")
    done
    if [ ${#alive[@]} -gt 0 ]; then
        log "down left processes running: ${alive[*]}"
        return 1
    fi
    if ss -Hltn | grep -qE '127\.0\.0\.1:(6443|23790|23800|8989|8990|9090) '; then
        log "down left a stack port listening: $(ss -Hltn | grep -E '127\.0\.0\.1:(6443|23790|23800|8989|8990|9090) ' | tr -s ' ' | tr '\n' ';')"
        return 1
    fi
    log "down check: all ${#pids[@]} recorded processes stopped"
}

stack_demo() {
    stack_up
    touch "$STATE_DIR/demo-ran"
    "$REPO_DIR/e2e/demo" "$@"
}
