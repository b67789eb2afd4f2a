package main

// Host maintenance as a vCenter client sees it while it happens.
//
// The simulator (govmomi 0.24) can show only the end of it: it runs every task to its end
// inside the SOAP call, so an EnterMaintenanceMode_Task is never seen queued or running, and
// it fills no entity's recentTask (only the TaskManager's). Newer govmomi runs tasks
// asynchronously (simulator.TaskDelay) and fills $MO.recentTask; Debian ships neither.
// So this file adds both, for hosts:
//
//   - recentTasks keeps every HostSystem's recentTask, as vCenter does;
//   - hostMaintenance starts EnterMaintenanceMode_Tasks that stay running for a while (on
//     the control endpoint's request, or for the host's next call over SOAP) before the host
//     is in maintenance mode. A call's timeout is honoured as vCenter does: a task still
//     running when it expires fails with Timedout and leaves the host as it was.

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// How many tasks a host's recentTask keeps (vCenter's limit for the TaskManager's list).
const recentTaskMax = 200

// recentTasks is a registry handler that appends every new task on a host to the host's
// recentTask. Only hosts: nothing reads a VM's list that the simulator's empty one breaks.
type recentTasks struct{}

func (recentTasks) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "PlumblineRecentTasks", Value: "recent-tasks"}
}

// PutObject runs inside simulator.CreateTask, whose caller holds the host's lock (the
// simulator's own task methods, and hostMaintenance.start below).
func (recentTasks) PutObject(obj mo.Reference) {
	task, ok := obj.(*simulator.Task)
	if !ok || task.Info.Entity == nil || task.Info.Entity.Type != "HostSystem" {
		return
	}
	host, ok := simulator.Map.Get(*task.Info.Entity).(*simulator.HostSystem)
	if !ok {
		return
	}
	recent := append(append([]types.ManagedObjectReference{}, host.RecentTask...), task.Self)
	if len(recent) > recentTaskMax {
		recent = recent[len(recent)-recentTaskMax:]
	}
	simulator.Map.Update(host, []types.PropertyChange{{Name: "recentTask", Val: recent}})
}

func (recentTasks) UpdateObject(mo.Reference, []types.PropertyChange) {}
func (recentTasks) RemoveObject(types.ManagedObjectReference)         {}

// hostMaintenance holds the lingering EnterMaintenanceMode_Tasks.
type hostMaintenance struct {
	mu sync.Mutex
	// Host moid → how long its next EnterMaintenanceMode_Task over SOAP stays running.
	linger map[string]time.Duration
	// Host moid → the lingering tasks still running; closing the channel cancels one.
	running map[string]map[chan struct{}]types.ManagedObjectReference
}

func newHostMaintenance() *hostMaintenance {
	return &hostMaintenance{
		linger:  map[string]time.Duration{},
		running: map[string]map[chan struct{}]types.ManagedObjectReference{},
	}
}

func simHost(key string) (*simulator.HostSystem, bool) {
	for _, e := range simulator.Map.All("HostSystem") {
		h := e.(*simulator.HostSystem)
		if strings.EqualFold(key, h.Name) || key == h.Self.Value {
			return h, true
		}
	}
	return nil, false
}

func (m *hostMaintenance) arm(moid string, running time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if running <= 0 {
		delete(m.linger, moid)
	} else {
		m.linger[moid] = running
	}
}

func (m *hostMaintenance) armed() map[string]time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]time.Duration{}
	for k, v := range m.linger {
		out[k] = v
	}
	return out
}

func (m *hostMaintenance) take(moid string) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	running := m.linger[moid]
	delete(m.linger, moid)
	return running
}

func (m *hostMaintenance) lingering(moid string) []types.ManagedObjectReference {
	m.mu.Lock()
	defer m.mu.Unlock()
	var tasks []types.ManagedObjectReference
	for _, t := range m.running[moid] {
		tasks = append(tasks, t)
	}
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].Value < tasks[j].Value })
	return tasks
}

// start creates an EnterMaintenanceMode_Task on the host that is running at once and ends
// after `running`: then the host is in maintenance mode. With a timeout shorter than that,
// the task fails with Timedout when it expires, and the host is left as it was.
func (m *hostMaintenance) start(host *simulator.HostSystem, running, timeout time.Duration) types.ManagedObjectReference {
	var task *simulator.Task
	simulator.Map.WithLock(host, func() {
		// Execute is never called: the goroutine below ends the task.
		task = simulator.CreateTask(host, "enterMaintenanceMode", nil)
		simulator.Map.WithLock(task, func() {
			simulator.Map.Update(task, []types.PropertyChange{
				{Name: "info.startTime", Val: time.Now()},
				{Name: "info.state", Val: types.TaskInfoStateRunning},
			})
		})
	})
	cancel := make(chan struct{})
	moid := host.Self.Value
	m.mu.Lock()
	if m.running[moid] == nil {
		m.running[moid] = map[chan struct{}]types.ManagedObjectReference{}
	}
	m.running[moid][cancel] = task.Self
	m.mu.Unlock()
	log.Printf("EnterMaintenanceMode_Task %s on %s runs for %v (timeout %v)", task.Self.Value, host.Name, running, timeout)

	go func() {
		wait, expires := running, timeout > 0 && timeout < running
		if expires {
			wait = timeout
		}
		select {
		case <-time.After(wait):
		case <-cancel:
		}
		m.mu.Lock()
		delete(m.running[moid], cancel)
		m.mu.Unlock()
		simulator.Map.WithLock(host, func() {
			// Decided under the host's lock, so that end() either cancels the task or
			// takes the host out of maintenance after it.
			var fault types.BaseMethodFault
			message := ""
			select {
			case <-cancel:
				fault, message = &types.RequestCanceled{}, "The task was canceled by a user"
			default:
				if expires {
					fault = &types.Timedout{}
					message = fmt.Sprintf("%s did not enter maintenance mode within %v", host.Name, timeout)
				}
			}
			if fault == nil {
				host.Runtime.InMaintenanceMode = true
			}
			finishTask(task, fault, message)
			log.Printf("EnterMaintenanceMode_Task %s on %s ended (fault: %T)", task.Self.Value, host.Name, fault)
		})
	}()
	return task.Self
}

// end cancels the host's lingering tasks and takes it out of maintenance mode (with the
// simulator's ExitMaintenanceMode_Task), so that a test leaves the host as it found it.
func (m *hostMaintenance) end(host *simulator.HostSystem) (cancelled int, exited bool) {
	moid := host.Self.Value
	m.mu.Lock()
	delete(m.linger, moid)
	for cancel := range m.running[moid] {
		close(cancel)
		delete(m.running[moid], cancel)
		cancelled++
	}
	m.mu.Unlock()
	simulator.Map.WithLock(host, func() {
		if host.Runtime.InMaintenanceMode {
			host.ExitMaintenanceModeTask(&types.ExitMaintenanceMode_Task{This: host.Self})
			exited = true
		}
	})
	return cancelled, exited
}

func finishTask(task *simulator.Task, fault types.BaseMethodFault, message string) {
	state := types.TaskInfoStateSuccess
	var failure interface{}
	if fault != nil {
		state = types.TaskInfoStateError
		failure = types.LocalizedMethodFault{Fault: fault, LocalizedMessage: message}
	}
	simulator.Map.WithLock(task, func() {
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.completeTime", Val: time.Now()},
			{Name: "info.state", Val: state},
			{Name: "info.error", Val: failure},
		})
	})
}

// simHostState is a host as the simulator holds it, read without vim25.
type simHostState struct {
	Moid          string          `json:"moid"`
	Name          string          `json:"name"`
	InMaintenance bool            `json:"in_maintenance"`
	Lingering     []string        `json:"lingering"`
	Linger        float64         `json:"linger_next_s,omitempty"`
	RecentTasks   []simTaskRecord `json:"recent_tasks"`
}

type simTaskRecord struct {
	Task          string `json:"task"`
	DescriptionID string `json:"description_id"`
	State         string `json:"state"`
}

func (m *hostMaintenance) states() []simHostState {
	armed := m.armed()
	var out []simHostState
	for _, e := range simulator.Map.All("HostSystem") {
		h := e.(*simulator.HostSystem)
		s := simHostState{Moid: h.Self.Value, Lingering: []string{}, RecentTasks: []simTaskRecord{}}
		var recent []types.ManagedObjectReference
		simulator.Map.WithLock(h, func() {
			s.Name = h.Name
			s.InMaintenance = h.Runtime.InMaintenanceMode
			recent = append(recent, h.RecentTask...)
		})
		for _, ref := range recent {
			t, ok := simulator.Map.Get(ref).(*simulator.Task)
			if !ok {
				continue
			}
			simulator.Map.WithLock(t, func() {
				s.RecentTasks = append(s.RecentTasks, simTaskRecord{
					Task: ref.Value, DescriptionID: t.Info.DescriptionId, State: string(t.Info.State),
				})
			})
		}
		for _, t := range m.lingering(s.Moid) {
			s.Lingering = append(s.Lingering, t.Value)
		}
		s.Linger = armed[s.Moid].Seconds()
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// lingeringCalls stands in front of the simulator's /sdk handler (behind sessionFaults): a
// host's next EnterMaintenanceMode_Task, when armed, starts a lingering task instead of the
// simulator's instant one.
type lingeringCalls struct {
	sdk   http.HandlerFunc
	hosts *hostMaintenance
}

// A call that needs a session and changes nothing: the simulator's answer to it says
// whether the caller's session is valid.
const currentTimeRequest = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime></soapenv:Body></soapenv:Envelope>`

func (l *lingeringCalls) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	method, this := soapCall(body)
	if method != "EnterMaintenanceMode_Task" || this.Type != "HostSystem" {
		l.sdk(w, r)
		return
	}
	host, ok := simulator.Map.Get(this).(*simulator.HostSystem)
	running := time.Duration(0)
	if ok {
		running = l.hosts.take(this.Value)
	}
	if running == 0 {
		l.sdk(w, r)
		return
	}
	probe := r.Clone(r.Context())
	probe.Body = io.NopCloser(strings.NewReader(currentTimeRequest))
	probe.ContentLength = int64(len(currentTimeRequest))
	session := httptest.NewRecorder()
	l.sdk(session, probe)
	if session.Code != http.StatusOK {
		// Refused (no session): the call did not happen, so the host stays armed.
		l.hosts.arm(this.Value, running)
		l.sdk(w, r)
		return
	}
	timeout := time.Duration(0)
	if s, err := strconv.Atoi(soapArg(body, "timeout")); err == nil && s > 0 {
		timeout = time.Duration(s) * time.Second
	}
	task := l.hosts.start(host, running, timeout)
	var ref bytes.Buffer
	_ = xml.EscapeText(&ref, []byte(task.Value))
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><EnterMaintenanceMode_TaskResponse xmlns="urn:vim25"><returnval type="Task">%s</returnval></EnterMaintenanceMode_TaskResponse></soapenv:Body></soapenv:Envelope>`,
		ref.String())
}

// soapArg is the text of the method argument `name` in a SOAP request, "" when absent.
func soapArg(body []byte, name string) string {
	d := xml.NewDecoder(bytes.NewReader(body))
	depth, inBody := 0, 0
	for {
		tok, err := d.Token()
		if err != nil {
			return ""
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			if t.Name.Local == "Body" && inBody == 0 {
				inBody = depth
			} else if inBody > 0 && depth == inBody+2 && t.Name.Local == name {
				var value string
				if d.DecodeElement(&value, &t) == nil {
					return strings.TrimSpace(value)
				}
				return ""
			}
		case xml.EndElement:
			depth--
		}
	}
}

// maintenanceControl serves the control endpoint's /hosts routes.
func maintenanceControl(mux *http.ServeMux, hosts *hostMaintenance,
	reply func(http.ResponseWriter, int, interface{}),
	fail func(http.ResponseWriter, int, string, ...interface{})) {
	type request struct {
		Host     string  `json:"host"`
		RunningS float64 `json:"running_s"`
	}
	decode := func(w http.ResponseWriter, r *http.Request) (*simulator.HostSystem, time.Duration, bool) {
		var in request
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			fail(w, http.StatusBadRequest, "decoding the request: %v", err)
			return nil, 0, false
		}
		host, ok := simHost(in.Host)
		if !ok {
			fail(w, http.StatusNotFound, "no simulator host named %q", in.Host)
			return nil, 0, false
		}
		if in.RunningS < 0 || in.RunningS > 3600 {
			fail(w, http.StatusBadRequest, "running_s must be between 0 and 3600")
			return nil, 0, false
		}
		return host, time.Duration(in.RunningS * float64(time.Second)), true
	}
	byQuery := func(w http.ResponseWriter, r *http.Request) (*simulator.HostSystem, bool) {
		host, ok := simHost(r.URL.Query().Get("host"))
		if !ok {
			fail(w, http.StatusNotFound, "no simulator host named %q", r.URL.Query().Get("host"))
		}
		return host, ok
	}
	mux.HandleFunc("/hosts", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			fail(w, http.StatusMethodNotAllowed, "use GET")
			return
		}
		reply(w, http.StatusOK, hosts.states())
	})
	mux.HandleFunc("/hosts/maintenance", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			host, running, ok := decode(w, r)
			if !ok {
				return
			}
			task := hosts.start(host, running, 0)
			reply(w, http.StatusOK, map[string]interface{}{"host": host.Name, "task": task.Value, "running_s": running.Seconds()})
		case http.MethodDelete:
			host, ok := byQuery(w, r)
			if !ok {
				return
			}
			cancelled, exited := hosts.end(host)
			log.Printf("maintenance of %s ended: %d lingering tasks cancelled, exited: %v", host.Name, cancelled, exited)
			reply(w, http.StatusOK, map[string]interface{}{"host": host.Name, "cancelled": cancelled, "exited": exited})
		default:
			fail(w, http.StatusMethodNotAllowed, "use POST or DELETE")
		}
	})
	mux.HandleFunc("/hosts/linger", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPut, http.MethodPost:
			host, running, ok := decode(w, r)
			if !ok {
				return
			}
			if running <= 0 {
				fail(w, http.StatusBadRequest, "running_s must be positive")
				return
			}
			hosts.arm(host.Self.Value, running)
			log.Printf("the next EnterMaintenanceMode_Task on %s runs for %v", host.Name, running)
			reply(w, http.StatusOK, map[string]interface{}{"host": host.Name, "running_s": running.Seconds()})
		case http.MethodDelete:
			host, ok := byQuery(w, r)
			if !ok {
				return
			}
			hosts.arm(host.Self.Value, 0)
			reply(w, http.StatusOK, map[string]interface{}{"host": host.Name})
		default:
			fail(w, http.StatusMethodNotAllowed, "use PUT or DELETE")
		}
	})
}
