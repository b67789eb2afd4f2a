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
//	GET    /latency                      current per-VM latency (ms), JSON
//	PUT    /latency  {"vm": "<name|dns-name|uuid>", "read_ms": N, "write_ms": N}
//	DELETE /latency?vm=<name|dns-name|uuid>   back to the baseline
//	POST   /sessions/terminate           ends every SOAP session (clients must re-login)
//
// QueryPerf: an unset maxSample returns up to 180 samples (the simulator alone returns none).
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
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
}

// perfManager replaces the simulator's canned virtual-disk latency with the table's values.
// It embeds the simulator's object by value: the simulator finds an object's mo type by
// walking first fields (FindByUuid, PropertyCollector), which a pointer would break.
type perfManager struct {
	simulator.PerformanceManager
	latency  *latencyTable
	readKey  int32
	writeKey int32
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
		l := p.latency.get(metric.Entity.Value)
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
		host := ""
		if vm.Runtime.Host != nil {
			if h, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem); ok {
				host = h.Name
			}
		}
		vms = append(vms, inventoryVM{
			Moid:    vm.Self.Value,
			Name:    vm.Name,
			DNSName: dnsName(vm.Name),
			UUID:    vm.Config.Uuid,
			Host:    host,
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

// terminateSessions logs in over SOAP (the simulator keeps sessions private) and ends
// every other session, then its own.
func terminateSessions(ctx context.Context, sdk *url.URL, caFile string) (int, error) {
	sc := soap.NewClient(sdk, false)
	if err := sc.SetRootCAs(caFile); err != nil {
		return 0, fmt.Errorf("loading CA %s: %w", caFile, err)
	}
	c, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return 0, fmt.Errorf("connecting to %s: %w", sdk.Host, err)
	}
	sm := session.NewManager(c)
	if err := sm.Login(ctx, sdk.User); err != nil {
		return 0, fmt.Errorf("logging in: %w", err)
	}
	own, err := sm.UserSession(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading own session: %w", err)
	}
	var m mo.SessionManager
	if err := property.DefaultCollector(c).RetrieveOne(ctx, sm.Reference(), []string{"sessionList"}, &m); err != nil {
		return 0, fmt.Errorf("listing sessions: %w", err)
	}
	var ids []string
	for _, s := range m.SessionList {
		if s.Key != own.Key {
			ids = append(ids, s.Key)
		}
	}
	if len(ids) > 0 {
		if err := sm.TerminateSession(ctx, ids); err != nil {
			return 0, fmt.Errorf("terminating %d sessions: %w", len(ids), err)
		}
	}
	return len(ids), sm.Logout(ctx)
}

func control(latency *latencyTable, vms []inventoryVM, sdk *url.URL, caFile string) http.Handler {
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
		n, err := terminateSessions(r.Context(), sdk, caFile)
		if err != nil {
			fail(w, http.StatusInternalServerError, "terminating sessions: %v", err)
			return
		}
		log.Printf("terminated %d sessions", n)
		reply(w, http.StatusOK, map[string]int{"terminated": n})
	})
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
	hosts := flag.Int("cluster-hosts", 2, "hosts in the cluster (plus one standalone host)")
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
	model.Host = 1
	model.Cluster = 1
	model.ClusterHost = *hosts
	model.Machine = *machines
	if err := model.Create(); err != nil {
		log.Fatalf("creating the simulator inventory: %v", err)
	}

	latency := &latencyTable{baseline: diskLatency{ReadMs: *baseRead, WriteMs: *baseWrite}, byVM: map[string]diskLatency{}}
	si := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	pm := simulator.Map.Get(*si.Content.PerfManager).(*simulator.PerformanceManager)
	simulator.Map.Put(&perfManager{
		PerformanceManager: *pm,
		latency:            latency,
		readKey:            counterKey(pm, "virtualDisk", "totalReadLatency"),
		writeKey:           counterKey(pm, "virtualDisk", "totalWriteLatency"),
	})

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	model.Service.NewServer()
	sdk := &url.URL{Scheme: "https", Host: *listen, Path: "/sdk", User: url.UserPassword(*username, *password)}

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
	go func() {
		if err := http.Serve(ln, control(latency, vms, sdk, *caFile)); err != nil {
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
