// Command plumbline-vcsim serves the govmomi vCenter simulator for the e2e stack:
// a VPX inventory on vim25 SOAP over TLS with user/password auth, plus a loopback-only
// control endpoint that tests use to set per-VM virtual-disk latency and to drop sessions.
//
// Built with Debian's golang-github-vmware-govmomi-dev in GOPATH mode by
// e2e/lib/components/vcsim.sh; Debian ships the simulator library but not vcsim itself.
//
// Control endpoint (plain HTTP, loopback only, test-only):
//
//	GET    /healthz
//	GET    /vms                          every VM with its current host and cluster
//	POST   /vms/relocate {"vm": "<name|dns-name|uuid>", "host": "<name|moid>"}
//	                                     vMotion: RelocateVM_Task over SOAP (placement.go)
//	GET    /latency                      current per-VM latency (ms), JSON
//	PUT    /latency  {"vm": "<name|dns-name|uuid>", "read_ms": N, "write_ms": N}
//	DELETE /latency?vm=<name|dns-name|uuid>   back to the baseline
//	POST   /sessions/terminate           ends every SOAP session (clients must re-login)
//	POST   /sessions/terminate?session=K ends the one session whose key (cookie) is K
//	GET    /faults                       armed session faults, by VM name
//	PUT    /faults   {"vm": "<name|dns-name|uuid>", "at": "<point>"}
//	DELETE /faults?vm=<name|dns-name|uuid>
//	GET    /reconfigures?vm=<name|dns-name|uuid>   every ReconfigVM_Task the VM received
//	GET    /config?vm=<name|dns-name|uuid>         the VM's CPU shares and extraConfig
//	GET    /hosts                        each host's inMaintenanceMode, recentTask and lingering tasks
//	POST   /hosts/maintenance {"host": "<name|moid>", "running_s": N}
//	                                     starts an EnterMaintenanceMode_Task on the host, as another
//	                                     vSphere client would; it stays running N s, then the host is
//	                                     in maintenance mode
//	DELETE /hosts/maintenance?host=<name|moid>   cancels the host's running ones and takes it out
//	                                     of maintenance mode (a test's cleanup)
//	PUT    /hosts/linger {"host": "<name|moid>", "running_s": N}
//	                                     the host's next EnterMaintenanceMode_Task over SOAP stays
//	                                     running N s (its timeout argument honoured)
//	DELETE /hosts/linger?host=<name|moid>
//	GET    /stats                        SOAP calls answered, by method, and bytes each way (stats.go)
//	GET    /load, PUT /load {"vm", "iops", "fixed_ms", "ms_per_iop"}, DELETE /load?vm=
//	                                     a VM's I/O load and its host neighbours' contention
//	                                     (contention.go)
//
// A session fault ends the calling session once, at one point of the VM's next
// ReconfigVM_Task (see faultPoint). Ended sessions are refused with NotAuthenticated on
// every call, as vCenter does; the simulator alone would serve property reads to them.
//
// Host maintenance (see maintenance.go): every HostSystem's recentTask lists its tasks, as on
// vCenter; the simulator alone leaves it empty and runs each task to its end inside the call.
//
// QueryPerf: an unset maxSample returns up to 180 samples (the simulator alone returns none).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// diskLatency is what QueryPerf reports for one VM's virtual disks, in milliseconds.
type diskLatency struct {
	ReadMs  int64 `json:"read_ms"`
	WriteMs int64 `json:"write_ms"`
}

// latencyTable holds the injected latency per VM (keyed by managed object id).
type latencyTable struct {
	mu       sync.Mutex
	baseline diskLatency
	byVM     map[string]diskLatency
}

func (t *latencyTable) get(moid string) diskLatency {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l, ok := t.byVM[moid]; ok {
		return l
	}
	return t.baseline
}

// injected says whether the VM has a latency of its own (contention adds to the baseline only).
func (t *latencyTable) injected(moid string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.byVM[moid]
	return ok
}

func (t *latencyTable) set(moid string, l diskLatency) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byVM[moid] = l
}

func (t *latencyTable) clear(moid string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.byVM, moid)
}

// inventoryVM is one simulator VM as the stack and the tests name it.
type inventoryVM struct {
	Moid    string `json:"moid"`
	Name    string `json:"name"`
	DNSName string `json:"dnsName"`
	UUID    string `json:"uuid"`
	Host    string `json:"host"`
	// The host's cluster ("" for the standalone host).
	Cluster string `json:"cluster"`
}

// perfManager replaces the simulator's canned virtual-disk latency with the table's values.
// It embeds the simulator's object by value: the simulator finds an object's mo type by
// walking first fields (FindByUuid, PropertyCollector), which a pointer would break.
type perfManager struct {
	simulator.PerformanceManager
	latency    *latencyTable
	contention *contention
	readKey    int32
	writeKey   int32
	// virtualDisk.numberRead/WriteAveraged: the VM's IOPS under its load (contention.go).
	readOpsKey  int32
	writeOpsKey int32
}

func (p *perfManager) QueryPerf(ctx *simulator.Context, req *types.QueryPerf) soap.HasFault {
	// vCenter treats an unset maxSample as "no limit"; the simulator as zero samples.
	// Cap at the 180 samples (one hour of 20 s samples) vCenter keeps in real time.
	for i := range req.QuerySpec {
		if req.QuerySpec[i].MaxSample <= 0 {
			req.QuerySpec[i].MaxSample = 180
		}
	}
	res := p.PerformanceManager.QueryPerf(ctx, req)
	body, ok := res.(*methods.QueryPerfBody)
	if !ok || body.Res == nil {
		return res
	}
	for _, base := range body.Res.Returnval {
		metric, ok := base.(*types.PerfEntityMetric)
		if !ok || metric.Entity.Type != "VirtualMachine" {
			continue
		}
		moid := metric.Entity.Value
		l := p.latency.get(moid)
		if !p.latency.injected(moid) {
			extra := p.contention.extraMs(moid)
			l.ReadMs += extra
			l.WriteMs += extra
		}
		for _, s := range metric.Value {
			series, ok := s.(*types.PerfMetricIntSeries)
			if !ok {
				continue
			}
			var v int64
			switch series.Id.CounterId {
			case p.readKey:
				v = l.ReadMs
			case p.writeKey:
				v = l.WriteMs
			case p.readOpsKey:
				v = 0
			case p.writeOpsKey:
				v = p.contention.iops(moid)
			default:
				continue
			}
			for i := range series.Value {
				series.Value[i] = v
			}
		}
	}
	return body
}

func counterKey(pm *simulator.PerformanceManager, group, name string) int32 {
	for _, c := range pm.PerfCounter {
		if c.GroupInfo.GetElementDescription().Key == group &&
			c.NameInfo.GetElementDescription().Key == name &&
			c.RollupType == types.PerfSummaryTypeAverage {
			return c.Key
		}
	}
	log.Fatalf("the simulator has no %s.%s.average counter", group, name)
	return 0
}

func dnsName(name string) string {
	return strings.Trim(strings.NewReplacer("_", "-", ".", "-").Replace(strings.ToLower(name)), "-")
}

func inventory() []inventoryVM {
	var vms []inventoryVM
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		host, cluster := "", ""
		if vm.Runtime.Host != nil {
			if h, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem); ok {
				host = h.Name
				cluster = clusterOf(h)
			}
		}
		vms = append(vms, inventoryVM{
			Moid:    vm.Self.Value,
			Name:    vm.Name,
			DNSName: dnsName(vm.Name),
			UUID:    vm.Config.Uuid,
			Host:    host,
			Cluster: cluster,
		})
	}
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	return vms
}

func findVM(vms []inventoryVM, key string) (inventoryVM, bool) {
	for _, vm := range vms {
		if strings.EqualFold(key, vm.Name) || strings.EqualFold(key, vm.DNSName) ||
			strings.EqualFold(key, vm.UUID) || key == vm.Moid {
			return vm, true
		}
	}
	return inventoryVM{}, false
}

// writeNodes writes the VMs in the format kubelet-sim registers as Nodes.
func writeNodes(path string, vms []inventoryVM) error {
	type node struct {
		Name       string            `json:"name"`
		ProviderID string            `json:"providerID"`
		Labels     map[string]string `json:"labels"`
	}
	nodes := make([]node, 0, len(vms))
	for _, vm := range vms {
		nodes = append(nodes, node{
			Name:       vm.DNSName,
			ProviderID: "vsphere://" + vm.UUID,
			Labels: map[string]string{
				"plumbline.dev/hypervisor":   "vsphere",
				"plumbline.dev/vsphere-vm":   vm.Name,
				"plumbline.dev/vsphere-host": dnsName(vm.Host),
			},
		})
	}
	data, err := json.MarshalIndent(nodes, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// terminateSessions logs in over SOAP (the simulator keeps sessions private) and ends the
// sessions whose keys are in only, or every other session when only is empty, then its own.
// It returns the keys it ended.
func terminateSessions(ctx context.Context, sdk *url.URL, caFile string, only []string) ([]string, error) {
	sc := soap.NewClient(sdk, false)
	if err := sc.SetRootCAs(caFile); err != nil {
		return nil, fmt.Errorf("loading CA %s: %w", caFile, err)
	}
	c, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", sdk.Host, err)
	}
	sm := session.NewManager(c)
	if err := sm.Login(ctx, sdk.User); err != nil {
		return nil, fmt.Errorf("logging in: %w", err)
	}
	own, err := sm.UserSession(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading own session: %w", err)
	}
	var m mo.SessionManager
	if err := property.DefaultCollector(c).RetrieveOne(ctx, sm.Reference(), []string{"sessionList"}, &m); err != nil {
		return nil, fmt.Errorf("listing sessions: %w", err)
	}
	wanted := map[string]bool{}
	for _, k := range only {
		wanted[k] = true
	}
	var ids []string
	for _, s := range m.SessionList {
		if s.Key != own.Key && (len(only) == 0 || wanted[s.Key]) {
			ids = append(ids, s.Key)
		}
	}
	if len(ids) > 0 {
		if err := sm.TerminateSession(ctx, ids); err != nil {
			return nil, fmt.Errorf("terminating %d sessions: %w", len(ids), err)
		}
	}
	return ids, sm.Logout(ctx)
}

// faultPoint is where, in a VM's next ReconfigVM_Task, the calling session is ended.
type faultPoint string

const (
	// The call arrives after its session ended: it is refused, no task starts.
	beforeReconfigure faultPoint = "before-reconfigure"
	// The task runs and its reference is answered, then the session ends: reading the
	// task's result needs a new login.
	afterReconfigure faultPoint = "after-reconfigure"
	// The task runs, the session ends and the answer is lost (the connection closes): the
	// client cannot tell whether the change happened.
	loseReconfigureAnswer faultPoint = "lose-reconfigure-answer"
)

func (p faultPoint) valid() bool {
	return p == beforeReconfigure || p == afterReconfigure || p == loseReconfigureAnswer
}

// reconfiguration is one ReconfigVM_Task call as the simulator saw it.
type reconfiguration struct {
	// Refused: the call was answered with a fault and started no task.
	Refused         bool       `json:"refused"`
	CPUSharesBefore int32      `json:"cpu_shares_before"`
	CPUSharesAfter  int32      `json:"cpu_shares_after"`
	SessionEnded    faultPoint `json:"session_ended,omitempty"`
}

// sessionFaults stands in front of the simulator's /sdk handler. The simulator has no hook
// inside a method call, so the points around ReconfigVM_Task are made here, between the
// HTTP request and the simulator's answer; the log is kept here for the same reason.
type sessionFaults struct {
	sdk http.HandlerFunc
	end func(ctx context.Context, keys []string) ([]string, error)

	mu sync.Mutex
	// Keys of the sessions ended through this endpoint (the simulator forgets them).
	ended map[string]bool
	// VM moid → the point of its next ReconfigVM_Task where the caller's session ends.
	armed map[string]faultPoint
	// VM moid → every ReconfigVM_Task it received, in order.
	log map[string][]reconfiguration
	// Clusters whose ReconfigureComputeResource_Task calls are refused.
	rules *ruleRejections
}

// Methods vCenter serves without a session; every other call on an ended session is refused.
var sessionless = map[string]bool{
	"RetrieveServiceContent": true, "Login": true, "LoginByToken": true,
	"LoginExtensionByCertificate": true, "CloneSession": true,
}

const sessionCookie = "vmware_soap_session"

func (f *sessionFaults) isEnded(key string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ended[key]
}

func (f *sessionFaults) endSessions(ctx context.Context, keys []string) ([]string, error) {
	ids, err := f.end(ctx, keys)
	f.mu.Lock()
	for _, id := range ids {
		f.ended[id] = true
	}
	f.mu.Unlock()
	return ids, err
}

func (f *sessionFaults) arm(moid string, at faultPoint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if at == "" {
		delete(f.armed, moid)
	} else {
		f.armed[moid] = at
	}
}

func (f *sessionFaults) armedAt(moid string) faultPoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.armed[moid]
}

func (f *sessionFaults) take(moid string) faultPoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	at := f.armed[moid]
	delete(f.armed, moid)
	return at
}

func (f *sessionFaults) record(moid string, r reconfiguration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log[moid] = append(f.log[moid], r)
}

func (f *sessionFaults) reconfigurations(moid string) []reconfiguration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]reconfiguration{}, f.log[moid]...)
}

func (f *sessionFaults) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	method, this := soapCall(body)
	key := ""
	if c, err := r.Cookie(sessionCookie); err == nil {
		key = c.Value
	}
	if method == "ReconfigureComputeResource_Task" && f.rules.rejects(this.Value) {
		log.Printf("rejecting ReconfigureComputeResource_Task on %s", this.Value)
		invalidArgument(w, "rulesSpec")
		return
	}
	if method != "ReconfigVM_Task" {
		if key != "" && !sessionless[method] && f.isEnded(key) {
			notAuthenticated(w, this)
			return
		}
		f.sdk(w, r)
		return
	}

	at := f.take(this.Value)
	if at == beforeReconfigure && key != "" {
		if _, err := f.endSessions(r.Context(), []string{key}); err != nil {
			log.Printf("ending session before ReconfigVM_Task on %s: %v", this.Value, err)
		}
	}
	before := cpuShares(this)
	if key != "" && f.isEnded(key) {
		f.record(this.Value, reconfiguration{Refused: true, CPUSharesBefore: before, CPUSharesAfter: before, SessionEnded: at})
		notAuthenticated(w, this)
		return
	}
	// The answer is held back, so that it can still be dropped after the task ran.
	answer := httptest.NewRecorder()
	f.sdk(answer, r)
	f.record(this.Value, reconfiguration{
		Refused:         answer.Code != http.StatusOK,
		CPUSharesBefore: before,
		CPUSharesAfter:  cpuShares(this),
		SessionEnded:    at,
	})
	if (at == afterReconfigure || at == loseReconfigureAnswer) && key != "" {
		if _, err := f.endSessions(r.Context(), []string{key}); err != nil {
			log.Printf("ending session after ReconfigVM_Task on %s: %v", this.Value, err)
		}
	}
	if at == loseReconfigureAnswer {
		log.Printf("ReconfigVM_Task on %s ran; dropping its answer", this.Value)
		panic(http.ErrAbortHandler) // closes the connection without a response
	}
	for k, v := range answer.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(answer.Code)
	_, _ = w.Write(answer.Body.Bytes())
}

// soapCall reads the method name and its _this reference from a SOAP request.
func soapCall(body []byte) (string, types.ManagedObjectReference) {
	var ref types.ManagedObjectReference
	d := xml.NewDecoder(bytes.NewReader(body))
	inBody, method := false, ""
	for {
		tok, err := d.Token()
		if err != nil {
			return method, ref
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		switch {
		case !inBody:
			inBody = start.Name.Local == "Body"
		case method == "":
			method = start.Name.Local
		case start.Name.Local == "_this":
			for _, a := range start.Attr {
				if a.Name.Local == "type" {
					ref.Type = a.Value
				}
			}
			var value string
			if d.DecodeElement(&value, &start) == nil {
				ref.Value = strings.TrimSpace(value)
			}
			return method, ref
		}
	}
}

func notAuthenticated(w http.ResponseWriter, this types.ManagedObjectReference) {
	escape := func(s string) string {
		var b bytes.Buffer
		_ = xml.EscapeText(&b, []byte(s))
		return b.String()
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>The session is not authenticated.</faultstring><detail><NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated"><object type="%s">%s</object><privilegeId>System.View</privilegeId></NotAuthenticatedFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`,
		escape(this.Type), escape(this.Value))
}

func simVM(ref types.ManagedObjectReference) *simulator.VirtualMachine {
	vm, _ := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	return vm
}

// cpuShares is the VM's CPU share count, -1 when the reference is no VM.
func cpuShares(ref types.ManagedObjectReference) int32 {
	vm := simVM(ref)
	if vm == nil {
		return -1
	}
	var shares int32
	simulator.Map.WithLock(vm, func() {
		if a := vm.Config.CpuAllocation; a != nil && a.Shares != nil {
			shares = a.Shares.Shares
		}
	})
	return shares
}

// vmConfig is what the simulator holds for a VM's tunables, read without vim25.
type vmConfig struct {
	CPUShares      int32  `json:"cpu_shares"`
	CPUSharesLevel string `json:"cpu_shares_level"`
	// The last value of each key (the simulator appends); keys set to "" are removed.
	ExtraConfig map[string]string `json:"extra_config"`
}

func configOf(ref types.ManagedObjectReference) vmConfig {
	out := vmConfig{ExtraConfig: map[string]string{}}
	vm := simVM(ref)
	if vm == nil {
		return out
	}
	simulator.Map.WithLock(vm, func() {
		if a := vm.Config.CpuAllocation; a != nil && a.Shares != nil {
			out.CPUShares = a.Shares.Shares
			out.CPUSharesLevel = string(a.Shares.Level)
		}
		for _, o := range vm.Config.ExtraConfig {
			v := o.GetOptionValue()
			value := fmt.Sprint(v.Value)
			if value == "" {
				delete(out.ExtraConfig, v.Key)
			} else {
				out.ExtraConfig[v.Key] = value
			}
		}
	})
	return out
}

func control(latency *latencyTable, faults *sessionFaults, hosts *hostMaintenance, vms []inventoryVM) http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, code int, v interface{}) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	fail := func(w http.ResponseWriter, code int, format string, args ...interface{}) {
		reply(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("/vms", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, vms)
	})
	mux.HandleFunc("/latency", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			out := map[string]diskLatency{}
			for _, vm := range vms {
				out[vm.Name] = latency.get(vm.Moid)
			}
			reply(w, http.StatusOK, out)
		case http.MethodPut, http.MethodPost:
			var in struct {
				VM string `json:"vm"`
				diskLatency
			}
			if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
				fail(w, http.StatusBadRequest, "decoding latency request: %v", err)
				return
			}
			vm, ok := findVM(vms, in.VM)
			if !ok {
				fail(w, http.StatusNotFound, "no simulator VM named %q", in.VM)
				return
			}
			if in.ReadMs < 0 || in.WriteMs < 0 {
				fail(w, http.StatusBadRequest, "latency must not be negative")
				return
			}
			latency.set(vm.Moid, in.diskLatency)
			log.Printf("latency of %s (%s) set to read %d ms, write %d ms", vm.Name, vm.Moid, in.ReadMs, in.WriteMs)
			reply(w, http.StatusOK, map[string]interface{}{"vm": vm, "latency": in.diskLatency})
		case http.MethodDelete:
			vm, ok := findVM(vms, r.URL.Query().Get("vm"))
			if !ok {
				fail(w, http.StatusNotFound, "no simulator VM named %q", r.URL.Query().Get("vm"))
				return
			}
			latency.clear(vm.Moid)
			log.Printf("latency of %s (%s) cleared", vm.Name, vm.Moid)
			reply(w, http.StatusOK, map[string]interface{}{"vm": vm, "latency": latency.get(vm.Moid)})
		default:
			fail(w, http.StatusMethodNotAllowed, "use GET, PUT or DELETE")
		}
	})
	mux.HandleFunc("/sessions/terminate", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			fail(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		var only []string
		if key := r.URL.Query().Get("session"); key != "" {
			only = []string{key}
		}
		ids, err := faults.endSessions(r.Context(), only)
		if err != nil {
			fail(w, http.StatusInternalServerError, "terminating sessions: %v", err)
			return
		}
		log.Printf("terminated %d sessions", len(ids))
		reply(w, http.StatusOK, map[string]int{"terminated": len(ids)})
	})
	mux.HandleFunc("/faults", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			out := map[string]faultPoint{}
			for _, vm := range vms {
				if at := faults.armedAt(vm.Moid); at != "" {
					out[vm.Name] = at
				}
			}
			reply(w, http.StatusOK, out)
		case http.MethodPut, http.MethodPost:
			var in struct {
				VM string     `json:"vm"`
				At faultPoint `json:"at"`
			}
			if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
				fail(w, http.StatusBadRequest, "decoding fault request: %v", err)
				return
			}
			vm, ok := findVM(vms, in.VM)
			if !ok {
				fail(w, http.StatusNotFound, "no simulator VM named %q", in.VM)
				return
			}
			if !in.At.valid() {
				fail(w, http.StatusBadRequest, "no fault point %q (use %s, %s or %s)", in.At,
					beforeReconfigure, afterReconfigure, loseReconfigureAnswer)
				return
			}
			faults.arm(vm.Moid, in.At)
			log.Printf("session fault armed on %s (%s): %s", vm.Name, vm.Moid, in.At)
			reply(w, http.StatusOK, map[string]interface{}{"vm": vm, "at": in.At})
		case http.MethodDelete:
			vm, ok := findVM(vms, r.URL.Query().Get("vm"))
			if !ok {
				fail(w, http.StatusNotFound, "no simulator VM named %q", r.URL.Query().Get("vm"))
				return
			}
			faults.arm(vm.Moid, "")
			reply(w, http.StatusOK, map[string]interface{}{"vm": vm})
		default:
			fail(w, http.StatusMethodNotAllowed, "use GET, PUT or DELETE")
		}
	})
	perVM := func(path string, read func(types.ManagedObjectReference) interface{}) {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet {
				fail(w, http.StatusMethodNotAllowed, "use GET")
				return
			}
			vm, ok := findVM(vms, r.URL.Query().Get("vm"))
			if !ok {
				fail(w, http.StatusNotFound, "no simulator VM named %q", r.URL.Query().Get("vm"))
				return
			}
			reply(w, http.StatusOK, read(types.ManagedObjectReference{Type: "VirtualMachine", Value: vm.Moid}))
		})
	}
	perVM("/reconfigures", func(ref types.ManagedObjectReference) interface{} {
		return faults.reconfigurations(ref.Value)
	})
	perVM("/config", func(ref types.ManagedObjectReference) interface{} {
		return configOf(ref)
	})
	maintenanceControl(mux, hosts, reply, fail)
	return mux
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8989", "address for vim25 SOAP over TLS")
	controlAddr := flag.String("control", "127.0.0.1:8990", "loopback address for the test control endpoint")
	certFile := flag.String("cert", "", "server certificate (PEM)")
	keyFile := flag.String("key", "", "server key (PEM)")
	caFile := flag.String("ca", "", "CA that signed -cert (used by the control endpoint's own SOAP client)")
	username := flag.String("username", "plumbline", "SOAP username")
	password := flag.String("password", "", "SOAP password")
	hosts := flag.Int("cluster-hosts", 2, "hosts in each cluster")
	clusters := flag.Int("clusters", 1, "clusters")
	standalone := flag.Int("standalone-hosts", 1, "standalone hosts")
	datastores := flag.Int("datastores", 1, "datastores (LocalDS_N), mounted on every host; VMs live on LocalDS_0")
	machines := flag.Int("machines", 2, "VMs per standalone host and per cluster resource pool")
	nodesFile := flag.String("nodes-file", "", "write the VMs as Node descriptions to this file")
	baseRead := flag.Int64("baseline-read-ms", 1, "virtual-disk read latency reported when none is injected")
	baseWrite := flag.Int64("baseline-write-ms", 1, "virtual-disk write latency reported when none is injected")
	flag.Parse()
	if *certFile == "" || *keyFile == "" || *caFile == "" || *password == "" {
		log.Fatal("-cert, -key, -ca and -password are required")
	}

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("loading TLS key pair %s: %v", *certFile, err)
	}

	model := simulator.VPX()
	model.Host = *standalone
	model.Cluster = *clusters
	model.ClusterHost = *hosts
	model.Machine = *machines
	model.Datastore = *datastores
	if err := model.Create(); err != nil {
		log.Fatalf("creating the simulator inventory: %v", err)
	}

	latency := &latencyTable{baseline: diskLatency{ReadMs: *baseRead, WriteMs: *baseWrite}, byVM: map[string]diskLatency{}}
	loads := &contention{loads: map[string]load{}}
	si := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	pm := simulator.Map.Get(*si.Content.PerfManager).(*simulator.PerformanceManager)
	simulator.Map.Put(&perfManager{
		PerformanceManager: *pm,
		latency:            latency,
		contention:         loads,
		readKey:            counterKey(pm, "virtualDisk", "totalReadLatency"),
		writeKey:           counterKey(pm, "virtualDisk", "totalWriteLatency"),
		readOpsKey:         counterKey(pm, "virtualDisk", "numberReadAveraged"),
		writeOpsKey:        counterKey(pm, "virtualDisk", "numberWriteAveraged"),
	})

	simulator.Map.AddHandler(recentTasks{})
	maintenance := newHostMaintenance()

	sdk := &url.URL{Scheme: "https", Host: *listen, Path: "/sdk", User: url.UserPassword(*username, *password)}
	stats := &soapStats{requests: map[string]int64{}}
	faults := &sessionFaults{
		sdk: (&lingeringCalls{sdk: model.Service.ServeSDK, hosts: maintenance}).ServeHTTP,
		end: func(ctx context.Context, keys []string) ([]string, error) {
			return terminateSessions(ctx, sdk, *caFile, keys)
		},
		ended: map[string]bool{},
		armed: map[string]faultPoint{},
		log:   map[string][]reconfiguration{},
		rules: &ruleRejections{clusters: map[string]bool{}},
	}
	// NewServer registers ServeSDK for /sdk itself; a host-specific pattern takes precedence
	// over it in a ServeMux, which puts the faults in front of every SOAP call made to the
	// listen address.
	listenHost, _, err := net.SplitHostPort(*listen)
	if err != nil || listenHost == "" {
		log.Fatalf("-listen %s must name a host (%v)", *listen, err)
	}
	model.Service.ServeMux = http.NewServeMux()
	model.Service.ServeMux.Handle(listenHost+"/sdk", stats.wrap(faults))
	if listenHost != "localhost" {
		model.Service.ServeMux.Handle("localhost/sdk", stats.wrap(faults))
	}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	model.Service.NewServer()

	vms := inventory()
	if *nodesFile != "" {
		if err := writeNodes(*nodesFile, vms); err != nil {
			log.Fatalf("writing nodes file %s: %v", *nodesFile, err)
		}
	}

	ln, err := net.Listen("tcp", *controlAddr)
	if err != nil {
		log.Fatalf("listening for control on %s: %v", *controlAddr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", control(latency, faults, maintenance, vms))
	placementControl(mux, sdk, *caFile, replyJSON, failJSON)
	rulesControl(mux, faults.rules, replyJSON, failJSON)
	contentionControl(mux, loads, replyJSON, failJSON)
	statsControl(mux, stats, replyJSON, failJSON)
	go func() {
		if err := http.Serve(ln, mux); err != nil {
			log.Printf("control endpoint stopped: %v", err)
		}
	}()

	for _, vm := range vms {
		log.Printf("vm %s uuid %s on %s", vm.Name, vm.UUID, vm.Host)
	}
	log.Printf("serving vim25 on https://%s/sdk, control on http://%s", *listen, *controlAddr)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	log.Printf("stopping on %v", <-sig)
	// No graceful server.Close(): it waits for clients' open long polls (WaitForUpdatesEx).
	model.Remove()
	os.Exit(0)
}
