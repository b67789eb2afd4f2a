package main

// DRS rules for the placement tests: each cluster's rules as the simulator holds them, and a
// rejection of rule changes as vCenter gives one (a rule naming a VM that left the cluster,
// a name taken meanwhile).
//
//	GET    /rules                              every cluster's rules: name, type, mandatory,
//	                                           enabled and the VMs' names
//	PUT    /rules/reject {"cluster": "DC0_C0"} the cluster's ReconfigureComputeResource_Task
//	                                           calls fail with InvalidArgument (rulesSpec)
//	DELETE /rules/reject?cluster=DC0_C0        … and pass again

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"sort"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// ruleRejections holds the clusters (by moid) whose reconfigurations are refused.
type ruleRejections struct {
	mu       sync.Mutex
	clusters map[string]bool
}

func (r *ruleRejections) set(moid string, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if on {
		r.clusters[moid] = true
	} else {
		delete(r.clusters, moid)
	}
}

func (r *ruleRejections) rejects(moid string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.clusters[moid]
}

type clusterRule struct {
	Cluster   string   `json:"cluster"`
	Key       int32    `json:"key"`
	Name      string   `json:"name"`
	Type      string   `json:"type"`
	Mandatory bool     `json:"mandatory"`
	Enabled   bool     `json:"enabled"`
	VMs       []string `json:"vms"`
}

func simCluster(key string) (*simulator.ClusterComputeResource, bool) {
	for _, e := range simulator.Map.All("ClusterComputeResource") {
		c := e.(*simulator.ClusterComputeResource)
		if key == c.Name || key == c.Self.Value {
			return c, true
		}
	}
	return nil, false
}

// clusterRules reads every cluster's configurationEx.rule under the cluster's lock.
func clusterRules() []clusterRule {
	out := []clusterRule{}
	for _, e := range simulator.Map.All("ClusterComputeResource") {
		c := e.(*simulator.ClusterComputeResource)
		simulator.Map.WithLock(c, func() {
			cfg, ok := c.ConfigurationEx.(*types.ClusterConfigInfoEx)
			if !ok {
				return
			}
			for _, r := range cfg.Rule {
				info := r.GetClusterRuleInfo()
				rule := clusterRule{
					Cluster: c.Name, Key: info.Key, Name: info.Name, Type: fmt.Sprintf("%T", r)[7:],
					Mandatory: info.Mandatory != nil && *info.Mandatory,
					Enabled:   info.Enabled != nil && *info.Enabled,
					VMs:       []string{},
				}
				if anti, ok := r.(*types.ClusterAntiAffinityRuleSpec); ok {
					for _, ref := range anti.Vm {
						if vm := simVM(ref); vm != nil {
							rule.VMs = append(rule.VMs, vm.Name)
						} else {
							rule.VMs = append(rule.VMs, ref.Value)
						}
					}
				}
				sort.Strings(rule.VMs)
				out = append(out, rule)
			}
		})
	}
	return out
}

// invalidArgument answers a SOAP call with the fault vCenter gives for a bad rule.
func invalidArgument(w http.ResponseWriter, property string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>A specified parameter was not correct: %s</faultstring><detail><InvalidArgumentFault xmlns="urn:vim25" xsi:type="InvalidArgument"><invalidProperty>%s</invalidProperty></InvalidArgumentFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`,
		property, property)
}

// rulesControl serves /rules and /rules/reject.
func rulesControl(mux *http.ServeMux, rejections *ruleRejections,
	reply func(http.ResponseWriter, int, interface{}),
	fail func(http.ResponseWriter, int, string, ...interface{})) {
	mux.HandleFunc("/rules", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, clusterRules())
	})
	mux.HandleFunc("/rules/reject", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("cluster")
		if r.Method == http.MethodPut || r.Method == http.MethodPost {
			var in struct {
				Cluster string `json:"cluster"`
			}
			if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
				fail(w, http.StatusBadRequest, "decoding reject request: %v", err)
				return
			}
			name = in.Cluster
		} else if r.Method != http.MethodDelete {
			fail(w, http.StatusMethodNotAllowed, "use PUT or DELETE")
			return
		}
		c, ok := simCluster(name)
		if !ok {
			fail(w, http.StatusNotFound, "no simulator cluster named %q", name)
			return
		}
		on := r.Method != http.MethodDelete
		rejections.set(c.Self.Value, on)
		log.Printf("rule changes on cluster %s (%s) rejected: %v", c.Name, c.Self.Value, on)
		reply(w, http.StatusOK, map[string]interface{}{"cluster": c.Name, "rejecting": on})
	})
}
