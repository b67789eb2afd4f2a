# libvirt component: libvirtd + virtlogd and four tiny real QEMU (TCG) guests.
#
#   pl-vm1, pl-vm2, pl-vm3  steady, modest direct I/O on their virtio disk
#   pl-noisy                much more I/O: the obvious noisy neighbour
#
# Guests are transient (`virsh create`), so `down` (virsh destroy) leaves nothing defined.
# Their UUIDs are derived from their names, so Node providerIDs stay the same across restarts.
# Boot files are built once into $PLUMBLINE_CACHE_DIR/guest-v1 (see e2e/guest/).
#
# Writes:  $PLUMBLINE_STACK_DIR/nodes.d/libvirt.json  (Nodes for kubelet-sim)
#          env LIBVIRT_URI=qemu:///system, LIBVIRT_DOMAINS=pl-vm1,pl-vm2,pl-vm3,pl-noisy
#
# Latency injection (both accept libvirt domains and simulator VMs):
#   e2e/stack inject-latency <vm> [--iops N]                 libvirt: blkdeviotune total-iops-sec N (default 50)
#   e2e/stack inject-latency <vm> [--read-ms R] [--write-ms W] simulator VM: QueryPerf latency (default 50/50)
#   e2e/stack clear-latency <vm>
# <vm> is a domain name (pl-vm2, or vm2 for short) or a simulator VM (DC0_H0_VM0, its DNS name
# dc0-h0-vm0, or its BIOS uuid); `--vsphere` forces the simulator.
#
#   e2e/stack restart-libvirtd   stop libvirtd by its recorded pid, start it again, wait until it answers

LIBVIRT_URI_SYSTEM=qemu:///system
LIBVIRT_GUEST_CACHE=$PLUMBLINE_CACHE_DIR/guest-v1
LIBVIRT_DOMAINS=(pl-vm1 pl-vm2 pl-vm3 pl-noisy)
LIBVIRT_STATE=$STATE_DIR/libvirt
# Pidfiles the daemons write themselves (their defaults when run as root).
LIBVIRTD_PIDFILE=/run/libvirtd.pid
VIRTLOGD_PIDFILE=/run/virtlogd.pid
LIBVIRT_QEMU_CONF=/etc/libvirt/qemu.conf

virsh_sys() { virsh -q -c "$LIBVIRT_URI_SYSTEM" "$@"; }

libvirt_install() {
    # The machine image may carry a newer qemu-utils (backports) that Breaks bookworm's
    # qemu-system-common; align it with the archive's QEMU, the version ENVIRONMENT.md verified.
    if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q "install ok installed" &&
        dpkg-query -W -f='${Status}' qemu-utils 2>/dev/null | grep -q "install ok installed"; then
        if [ -z "$APT_UPDATED" ]; then
            apt-get update -qq >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed; see $LOG_DIR/apt.log"
            APT_UPDATED=1
        fi
        local have want
        have=$(dpkg-query -W -f='${Version}' qemu-utils)
        want=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
        if [ "$have" != "$want" ]; then
            log "installing qemu-system-x86 $want (aligning qemu-utils $have with it)"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades --no-install-recommends \
                -o DPkg::Lock::Timeout=600 "qemu-utils=$want" "qemu-system-x86=$want" >>"$LOG_DIR/apt.log" 2>&1 ||
                die "installing qemu-system-x86 $want failed; see $LOG_DIR/apt.log"
        fi
    fi
    ensure_packages libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
        libvirt-dev qemu-utils cpio busybox-static curl
    libvirt_configure
    libvirt_build_guest
}

# Settings ENVIRONMENT.md found necessary in this sandbox: run QEMU as root, no security
# driver, and cgroup controllers only where the host mounts them. Writes qemu.conf only when
# a value differs: its mtime tells whether a running libvirtd predates a change.
libvirt_configure() {
    getent group kvm >/dev/null || groupadd -r kvm
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 ||
        useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    mkdir -p /etc/libvirt /var/log/libvirt /var/run/libvirt /var/lib/libvirt/qemu
    local conf=$LIBVIRT_QEMU_CONF key value controllers='[ ]'
    [ -e "$conf" ] || : >"$conf"
    # With cpu and blkio mounted read-write as cgroup v1 hierarchies each guest gets its own
    # group there, which is what makes CPU shares and blkio weight real. libvirt's default
    # list would also ask for controllers the host may lack; an empty list keeps guests out
    # of cgroups, and the adapter then reports both tunables unsupported.
    if libvirt_cgroup_v1_writable cpu && libvirt_cgroup_v1_writable blkio; then
        controllers='[ "cpu", "cpuacct", "blkio" ]'
        log "cgroup v1 cpu and blkio are mounted read-write: qemu.conf cgroup_controllers = $controllers"
    else
        log "cgroup v1 cpu or blkio is not mounted read-write under /sys/fs/cgroup: qemu.conf cgroup_controllers = [ ] (no CPU shares, no blkio weight)"
    fi
    while read -r key value; do
        if grep -qE "^[[:space:]]*${key}[[:space:]]*=" "$conf"; then
            grep -qxF "$key = $value" "$conf" || sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*|$key = $value|" "$conf"
        else
            echo "$key = $value" >>"$conf"
        fi
    done <<EOF
user "root"
group "root"
security_driver "none"
cgroup_controllers $controllers
EOF
}

# libvirt_cgroup_v1_writable CONTROLLER: /sys/fs/cgroup/CONTROLLER (or the co-mounted
# hierarchy it links to, e.g. cpu,cpuacct) is a read-write cgroup v1 mount of CONTROLLER.
libvirt_cgroup_v1_writable() {
    local dir
    dir=$(readlink -f "/sys/fs/cgroup/$1" 2>/dev/null) || return 1
    [ -d "$dir" ] && [ -w "$dir" ] || return 1
    awk -v dir="$dir" -v want="$1" '
        $2 == dir && $3 == "cgroup" {
            n = split($4, opt, ",")
            rw = 0; has = 0
            for (i = 1; i <= n; i++) {
                if (opt[i] == "rw") rw = 1
                if (opt[i] == want) has = 1
            }
            if (rw && has) found = 1
        }
        END { exit !found }' /proc/self/mounts
}

# libvirt_daemon_predates_config PID: the daemon started before qemu.conf last changed.
# libvirtd reads qemu.conf only when it starts.
libvirt_daemon_predates_config() {
    local lstart started changed
    lstart=$(ps -o lstart= -p "$1" 2>/dev/null) && [ -n "$lstart" ] || return 1
    started=$(date -d "$lstart" +%s 2>/dev/null) || return 1
    changed=$(stat -c %Y "$LIBVIRT_QEMU_CONF" 2>/dev/null) || return 1
    # Same second counts as fresh: `up` writes the file and starts the daemon right after.
    [ "$changed" -gt "$started" ]
}

# A libvirtd the stack started before qemu.conf changed is restarted, and so are its guests:
# a guest's cgroup is made when it starts, so a restarted daemon alone would still find the
# running guests outside any cgroup. A libvirtd the stack did not start is left alone.
libvirt_restart_if_config_changed() {
    local pid
    if is_running libvirtd; then
        pid=$(pid_of libvirtd)
        libvirt_daemon_predates_config "$pid" || return 0
        log "libvirtd (pid $pid) started before $LIBVIRT_QEMU_CONF changed; restarting it and its guests to apply it"
        libvirt_destroy_domains
        stop_pid libvirtd
    elif pidfile_alive "$LIBVIRTD_PIDFILE"; then
        pid=$(cat "$LIBVIRTD_PIDFILE")
        if libvirt_daemon_predates_config "$pid"; then
            log "warning: libvirtd (pid $pid, not started by the stack) started before $LIBVIRT_QEMU_CONF changed; restart it and its guests to apply the change"
        fi
    fi
}

libvirt_build_guest() {
    local stamp
    stamp=$(cat "$E2E_DIR/guest/init" "$E2E_DIR/guest/build-image.sh" | sha256sum | cut -c1-16)
    if [ -f "$LIBVIRT_GUEST_CACHE/vmlinuz" ] && [ -f "$LIBVIRT_GUEST_CACHE/initrd.gz" ] &&
        [ "$(cat "$LIBVIRT_GUEST_CACHE/stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    log "building the guest kernel and initramfs into $LIBVIRT_GUEST_CACHE"
    "$E2E_DIR/guest/build-image.sh" "$LIBVIRT_GUEST_CACHE" >>"$LOG_DIR/guest-build.log" 2>&1 ||
        die "building the guest image failed; see $LOG_DIR/guest-build.log"
    echo "$stamp" >"$LIBVIRT_GUEST_CACHE/stamp"
}

# pidfile_alive FILE: the daemon that wrote FILE is running.
pidfile_alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# libvirt_start_daemon NAME PIDFILE CMD...: start a self-daemonising daemon unless one is
# already running; only a daemon we started gets a pid record (and so is stopped by `down`).
libvirt_start_daemon() {
    local name=$1 pidfile=$2
    shift 2
    if is_running "$name"; then
        return 0
    fi
    if pidfile_alive "$pidfile"; then
        log "$name already running (pid $(cat "$pidfile")) and not started by the stack; using it"
        return 0
    fi
    (
        close_inherited_fds
        exec "$@"
    ) >>"$LOG_DIR/$name.log" 2>&1 </dev/null || die "$name failed to start; see $LOG_DIR/$name.log"
    local deadline=$((SECONDS + 15)) pid=""
    until [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -ge $deadline ] && die "$name is not running (no live pid in $pidfile); see $LOG_DIR/$name.log"
        sleep 0.2
        pid=$(cat "$pidfile" 2>/dev/null || true)
    done
    record_pid "$name" "$pid"
}

# A stable UUID per domain name, so Nodes keep their providerID across restarts.
libvirt_domain_uuid() {
    local h
    h=$(printf 'plumbline-libvirt-%s' "$1" | md5sum | cut -c1-32)
    echo "${h:0:8}-${h:8:4}-4${h:13:3}-a${h:17:3}-${h:20:12}"
}

libvirt_domain_xml() {
    local name=$1 role=$2
    cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <uuid>$(libvirt_domain_uuid "$name")</uuid>
  <memory unit='MiB'>80</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$LIBVIRT_GUEST_CACHE/vmlinuz</kernel>
    <initrd>$LIBVIRT_GUEST_CACHE/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 plumbline.role=$role</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='$LIBVIRT_STATE/$name.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='$LOG_DIR/$name.console.log'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

libvirt_domain_running() { [ "$(virsh_sys domstate "$1" 2>/dev/null)" = "running" ]; }

# The guest's disk has done I/O: its init reached the dd loop.
libvirt_domain_doing_io() {
    virsh_sys domstats --block "$1" 2>/dev/null | grep -qE 'block\.0\.wr\.reqs=[1-9]'
}

libvirt_up() {
    mkdir -p "$LIBVIRT_STATE" "$STATE_DIR/nodes.d"
    libvirt_restart_if_config_changed
    libvirt_start_daemon virtlogd "$VIRTLOGD_PIDFILE" virtlogd -d
    LIBVIRT_LOG_OUTPUTS="3:file:$LOG_DIR/libvirtd.log" libvirt_start_daemon libvirtd "$LIBVIRTD_PIDFILE" libvirtd -d
    wait_until libvirtd 30 virsh_sys version

    local name role
    for name in "${LIBVIRT_DOMAINS[@]}"; do
        libvirt_domain_running "$name" && continue
        role=steady
        [ "$name" = pl-noisy ] && role=noisy
        [ -f "$LIBVIRT_STATE/$name.qcow2" ] ||
            qemu-img create -q -f qcow2 "$LIBVIRT_STATE/$name.qcow2" 64M
        libvirt_domain_xml "$name" "$role" >"$LIBVIRT_STATE/$name.xml"
        virsh_sys create "$LIBVIRT_STATE/$name.xml" >>"$LOG_DIR/libvirt-domains.log" 2>&1 ||
            die "creating domain $name failed; see $LOG_DIR/libvirt-domains.log and $LOG_DIR/libvirtd.log"
    done
    local deadline=$((SECONDS + 120))
    for name in "${LIBVIRT_DOMAINS[@]}"; do
        until libvirt_domain_doing_io "$name"; do
            libvirt_domain_running "$name" || die "guest $name stopped while booting; see $LOG_DIR/$name.console.log"
            [ $SECONDS -ge $deadline ] && die "guest $name does no disk I/O after 120s; see $LOG_DIR/$name.console.log"
            sleep 0.5
        done
    done

    libvirt_write_nodes >"$STATE_DIR/nodes.d/libvirt.json.tmp"
    mv "$STATE_DIR/nodes.d/libvirt.json.tmp" "$STATE_DIR/nodes.d/libvirt.json"
    env_set LIBVIRT_URI "$LIBVIRT_URI_SYSTEM"
    env_set LIBVIRT_DOMAINS "$(IFS=,; echo "${LIBVIRT_DOMAINS[*]}")"
    env_set LIBVIRT_NOISY_DOMAIN pl-noisy
    env_set LIBVIRT_CGROUP_CONTROLLERS "$(libvirt_configured_controllers)"
}

# The controllers qemu.conf gives guests, comma-separated (empty: none), for tests that
# expect CPU shares and blkio weight to work or to be reported unsupported.
libvirt_configured_controllers() {
    sed -nE 's/^[[:space:]]*cgroup_controllers[[:space:]]*=//p' "$LIBVIRT_QEMU_CONF" |
        grep -oE '"[a-z_]+"' | tr -d '"' | paste -sd, || true
}

libvirt_write_nodes() {
    local name sep=""
    echo "["
    for name in "${LIBVIRT_DOMAINS[@]}"; do
        printf '%s  {"name": "%s", "providerID": "libvirt:///%s", "labels": {"plumbline.dev/hypervisor": "libvirt"}}' \
            "$sep" "$name" "$(virsh_sys domuuid "$name")"
        sep=$',\n'
    done
    printf '\n]\n'
}

libvirt_down() {
    libvirt_destroy_domains
    stop_pid libvirtd
    stop_pid virtlogd
    rm -rf "$LIBVIRT_STATE" "$STATE_DIR/nodes.d/libvirt.json"
}

libvirt_destroy_domains() {
    local name
    virsh_sys version >/dev/null 2>&1 || return 0
    # In parallel: each TCG guest takes about 2 s to go. Wait for these pids only: the
    # shell may have other children (`stack test` starts and stops the stack in one shell).
    local destroying=() pid
    for name in "${LIBVIRT_DOMAINS[@]}"; do
        if virsh_sys domstate "$name" >/dev/null 2>&1; then
            (virsh_sys destroy "$name" >/dev/null 2>&1 || log "destroying domain $name failed") &
            destroying+=($!)
        fi
    done
    for pid in "${destroying[@]}"; do wait "$pid" || true; done
}

libvirt_status() {
    status_line libvirtd
    status_line virtlogd
    local name state
    for name in "${LIBVIRT_DOMAINS[@]}"; do
        state=$(virsh_sys domstate "$name" 2>/dev/null || echo "absent")
        printf '  %-22s %s\n' "$name" "${state:-absent}"
    done
}

# A daemon restart as clients see it: their connections close, the guests keep running
# (QEMU outlives libvirtd, which reattaches to them), and the component's up starts the daemon
# and waits until `virsh version` answers. Only a libvirtd the stack started is restarted.
cmd_restart_libvirtd() {
    [ $# -eq 0 ] || die "usage: restart-libvirtd"
    if is_running libvirtd; then
        log "stopping libvirtd (pid $(pid_of libvirtd))"
        stop_pid libvirtd
    elif pidfile_alive "$LIBVIRTD_PIDFILE"; then
        die "libvirtd (pid $(cat "$LIBVIRTD_PIDFILE")) was not started by the stack; not restarting it"
    fi
    libvirt_up
    log "libvirtd is up again (pid $(pid_of libvirtd))"
}

# --- latency injection -------------------------------------------------------------------

# libvirt_resolve_domain NAME: prints the domain name (accepts vm2 for pl-vm2), or fails.
libvirt_resolve_domain() {
    virsh_sys version >/dev/null 2>&1 || return 1
    if virsh_sys domstate "$1" >/dev/null 2>&1; then
        echo "$1"
    elif virsh_sys domstate "pl-$1" >/dev/null 2>&1; then
        echo "pl-$1"
    else
        return 1
    fi
}

cmd_inject_latency() {
    local vm="" iops=50 read_ms=50 write_ms=50 vsphere=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --iops) iops=${2:?--iops needs a number}; shift 2 ;;
            --read-ms) read_ms=${2:?--read-ms needs a number}; shift 2 ;;
            --write-ms) write_ms=${2:?--write-ms needs a number}; shift 2 ;;
            --vsphere) vsphere=1; shift ;;
            -*) die "inject-latency: unknown option $1" ;;
            *) vm=$1; shift ;;
        esac
    done
    [ -n "$vm" ] || die "usage: inject-latency <vm> [--iops N] | <vsphere-vm> [--read-ms R] [--write-ms W] [--vsphere]"
    local dom
    if [ -z "$vsphere" ] && dom=$(libvirt_resolve_domain "$vm"); then
        virsh_sys blkdeviotune "$dom" vda --total-iops-sec "$iops" --live >/dev/null ||
            die "setting total-iops-sec $iops on $dom via $LIBVIRT_URI_SYSTEM failed"
        log "$dom: disk limited to $iops IOPS"
    else
        vcsim_set_latency "$vm" "$read_ms" "$write_ms"
    fi
}

cmd_clear_latency() {
    local vm="" vsphere=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --vsphere) vsphere=1; shift ;;
            -*) die "clear-latency: unknown option $1" ;;
            *) vm=$1; shift ;;
        esac
    done
    [ -n "$vm" ] || die "usage: clear-latency <vm> [--vsphere]"
    local dom
    if [ -z "$vsphere" ] && dom=$(libvirt_resolve_domain "$vm"); then
        virsh_sys blkdeviotune "$dom" vda --total-iops-sec 0 --live >/dev/null ||
            die "clearing the IOPS limit on $dom via $LIBVIRT_URI_SYSTEM failed"
        log "$dom: disk limit cleared"
    else
        vcsim_clear_latency "$vm"
    fi
}
