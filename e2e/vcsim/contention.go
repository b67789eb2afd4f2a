package main

// I/O contention between VMs on one host, for the noisy-neighbour tests: a VM given a load
// does that many IOPS (capped by its disks' storageIOAllocation.limit, as ESXi's mClock caps
// it), and every other VM on the same host (runtime.host, so a vMotion takes the load along)
// sees its disk latency rise by the load's fixed part plus a part per IOPS actually done.
// QueryPerf reports both: virtualDisk.numberRead/WriteAveraged (the load's IOPS, as writes)
// and the raised totalRead/WriteLatency of the neighbours.
//
//	GET    /load                                       every load
//	PUT    /load {"vm": "<name|dns-name|uuid>", "iops": N, "fixed_ms": N, "ms_per_iop": F}
//	DELETE /load?vm=<name|dns-name|uuid>               no load (and no contention from it)
//
// The fixed part is what an I/O limit cannot take away (a seek-heavy pattern on shared
// spindles, a full cache); with it, throttling lowers the neighbours' latency step by step
// without bringing it under budget, which is when Plumbline moves the noisy VM instead.

import (
	"encoding/json"
	"log"
	"math"
	"net/http"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type load struct {
	VM       string  `json:"vm"`
	IOPS     int64   `json:"iops"`
	FixedMs  float64 `json:"fixed_ms"`
	MsPerIop float64 `json:"ms_per_iop"`
}

// contention holds the loads, keyed by VM managed object id.
type contention struct {
	mu    sync.Mutex
	loads map[string]load
}

func hostOf(moid string) string {
	vm := simVM(types.ManagedObjectReference{Type: "VirtualMachine", Value: moid})
	if vm == nil {
		return ""
	}
	var host string
	simulator.Map.WithLock(vm, func() {
		if vm.Runtime.Host != nil {
			host = vm.Runtime.Host.Value
		}
	})
	return host
}

// diskLimit is the lowest storageIOAllocation.limit among the VM's disks (-1: unlimited).
func diskLimit(moid string) int64 {
	vm := simVM(types.ManagedObjectReference{Type: "VirtualMachine", Value: moid})
	if vm == nil {
		return -1
	}
	limit := int64(-1)
	simulator.Map.WithLock(vm, func() {
		for _, d := range vm.Config.Hardware.Device {
			disk, ok := d.(*types.VirtualDisk)
			if !ok || disk.StorageIOAllocation == nil || disk.StorageIOAllocation.Limit == nil {
				continue
			}
			if l := *disk.StorageIOAllocation.Limit; l >= 0 && (limit < 0 || l < limit) {
				limit = l
			}
		}
	})
	return limit
}

// iops is what the VM does now: its load, capped by its disk limit.
func (c *contention) iops(moid string) int64 {
	c.mu.Lock()
	l, ok := c.loads[moid]
	c.mu.Unlock()
	if !ok {
		return 0
	}
	if limit := diskLimit(moid); limit >= 0 && limit < l.IOPS {
		return limit
	}
	return l.IOPS
}

// extraMs is the latency the loads of the other VMs on the VM's host add to its disks.
func (c *contention) extraMs(moid string) int64 {
	host := hostOf(moid)
	if host == "" {
		return 0
	}
	c.mu.Lock()
	loads := make(map[string]load, len(c.loads))
	for k, v := range c.loads {
		loads[k] = v
	}
	c.mu.Unlock()
	extra := 0.0
	for other, l := range loads {
		if other == moid || hostOf(other) != host {
			continue
		}
		extra += l.FixedMs + l.MsPerIop*float64(c.iops(other))
	}
	return int64(math.Round(extra))
}

func contentionControl(mux *http.ServeMux, c *contention,
	reply func(http.ResponseWriter, int, interface{}),
	fail func(http.ResponseWriter, int, string, ...interface{})) {
	mux.HandleFunc("/load", func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			c.mu.Lock()
			out := map[string]load{}
			for _, l := range c.loads {
				out[l.VM] = l
			}
			c.mu.Unlock()
			reply(w, http.StatusOK, out)
		case http.MethodPut:
			var in load
			if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
				fail(w, http.StatusBadRequest, "decoding load request: %v", err)
				return
			}
			if in.IOPS < 0 || in.FixedMs < 0 || in.MsPerIop < 0 {
				fail(w, http.StatusBadRequest, "iops, fixed_ms and ms_per_iop must not be negative")
				return
			}
			vm, ok := findVM(inventory(), in.VM)
			if !ok {
				fail(w, http.StatusNotFound, "no simulator VM named %q", in.VM)
				return
			}
			in.VM = vm.Name
			c.mu.Lock()
			c.loads[vm.Moid] = in
			c.mu.Unlock()
			log.Printf("load of %s (%s): %d IOPS, %.1f ms + %.3f ms/IOPS on its host's other VMs", vm.Name, vm.Moid, in.IOPS, in.FixedMs, in.MsPerIop)
			reply(w, http.StatusOK, in)
		case http.MethodDelete:
			vm, ok := findVM(inventory(), r.URL.Query().Get("vm"))
			if !ok {
				fail(w, http.StatusNotFound, "no simulator VM named %q", r.URL.Query().Get("vm"))
				return
			}
			c.mu.Lock()
			delete(c.loads, vm.Moid)
			c.mu.Unlock()
			log.Printf("load of %s (%s) cleared", vm.Name, vm.Moid)
			reply(w, http.StatusOK, map[string]string{"vm": vm.Name})
		default:
			fail(w, http.StatusMethodNotAllowed, "use GET, PUT or DELETE")
		}
	})
}
