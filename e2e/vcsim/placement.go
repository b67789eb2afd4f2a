package main

// VM placement for the topology-label tests: where each VM runs now, and a vMotion
// (RelocateVM_Task to another host) made over SOAP as any vSphere client would make it.
//
//	GET  /vms                                   every VM with its current host and cluster
//	POST /vms/relocate {"vm": "<name|dns-name|uuid>", "host": "<name|moid>"}
//	                                            RelocateVM_Task to the host, waited for; answers the VM
//
// govmomi 0.24's RelocateVM_Task updates the VM's runtime.host but leaves the hosts' vm lists
// as they were; the endpoint moves the VM between them too, as vCenter shows it.

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/url"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// clusterOf names the ClusterComputeResource the host belongs to ("" for a standalone host).
func clusterOf(h *simulator.HostSystem) string {
	if h.Parent == nil || h.Parent.Type != "ClusterComputeResource" {
		return ""
	}
	if c, ok := simulator.Map.Get(*h.Parent).(*simulator.ClusterComputeResource); ok {
		return c.Name
	}
	return ""
}

// relocateVM moves the VM to the host with RelocateVM_Task over SOAP and waits for the task.
func relocateVM(ctx context.Context, sdk *url.URL, caFile string, vm, host types.ManagedObjectReference) error {
	sc := soap.NewClient(sdk, false)
	if err := sc.SetRootCAs(caFile); err != nil {
		return fmt.Errorf("loading CA %s: %w", caFile, err)
	}
	c, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", sdk.Host, err)
	}
	sm := session.NewManager(c)
	if err := sm.Login(ctx, sdk.User); err != nil {
		return fmt.Errorf("logging in: %w", err)
	}
	defer func() { _ = sm.Logout(ctx) }()
	res, err := methods.RelocateVM_Task(ctx, c, &types.RelocateVM_Task{
		This: vm,
		Spec: types.VirtualMachineRelocateSpec{Host: &host},
	})
	if err != nil {
		return fmt.Errorf("RelocateVM_Task: %w", err)
	}
	if err := object.NewTask(c, res.Returnval).Wait(ctx); err != nil {
		return fmt.Errorf("waiting for RelocateVM_Task %s: %w", res.Returnval.Value, err)
	}
	return nil
}

// placementControl serves /vms (live) and /vms/relocate.
func placementControl(mux *http.ServeMux, sdk *url.URL, caFile string,
	reply func(http.ResponseWriter, int, interface{}),
	fail func(http.ResponseWriter, int, string, ...interface{})) {
	mux.HandleFunc("/vms", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, inventory())
	})
	mux.HandleFunc("/vms/relocate", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			fail(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		var in struct {
			VM   string `json:"vm"`
			Host string `json:"host"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			fail(w, http.StatusBadRequest, "decoding relocate request: %v", err)
			return
		}
		vm, ok := findVM(inventory(), in.VM)
		if !ok {
			fail(w, http.StatusNotFound, "no simulator VM named %q", in.VM)
			return
		}
		to, ok := simHost(in.Host)
		if !ok {
			fail(w, http.StatusNotFound, "no simulator host named %q", in.Host)
			return
		}
		from, _ := simHost(vm.Host)
		ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: vm.Moid}
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		if err := relocateVM(ctx, sdk, caFile, ref, to.Self); err != nil {
			fail(w, http.StatusInternalServerError, "relocating %s to %s: %v", vm.Name, to.Name, err)
			return
		}
		if from != nil && from.Self != to.Self {
			simulator.Map.RemoveReference(from, &from.Vm, ref)
		}
		simulator.Map.AddReference(to, &to.Vm, ref)
		moved, _ := findVM(inventory(), vm.Moid)
		log.Printf("relocated %s from %s to %s", vm.Name, vm.Host, moved.Host)
		reply(w, http.StatusOK, moved)
	})
}

func replyJSON(w http.ResponseWriter, code int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func failJSON(w http.ResponseWriter, code int, format string, args ...interface{}) {
	replyJSON(w, code, map[string]string{"error": fmt.Sprintf(format, args...)})
}
