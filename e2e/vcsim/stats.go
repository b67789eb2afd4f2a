package main

// SOAP traffic counters for the scale benchmark (e2e/scale bench): how many vim25 calls of
// each method the simulator answered and how many bytes went each way, so a client's cost
// per sampling cycle can be read off as the difference of two snapshots.
//
//	GET /stats   {"requests": {"<method>": N}, "request_bytes": N, "response_bytes": N}

import (
	"bytes"
	"io"
	"net/http"
	"regexp"
	"sync"
)

type soapStats struct {
	mu            sync.Mutex
	requests      map[string]int64
	requestBytes  int64
	responseBytes int64
}

type soapStatsSnapshot struct {
	Requests      map[string]int64 `json:"requests"`
	RequestBytes  int64            `json:"request_bytes"`
	ResponseBytes int64            `json:"response_bytes"`
}

// The first element inside the SOAP Body names the method, whatever the namespace prefix.
var soapMethod = regexp.MustCompile(`<(?:[A-Za-z0-9_]+:)?Body[^>]*>\s*<(?:[A-Za-z0-9_]+:)?([A-Za-z0-9_]+)`)

// countingWriter counts the bytes of a response.
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// wrap counts every call that next answers.
func (s *soapStats) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "reading request: "+err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		method := "(none)"
		if m := soapMethod.FindSubmatch(body); m != nil {
			method = string(m[1])
		}
		cw := &countingWriter{ResponseWriter: w}
		next.ServeHTTP(cw, r)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.requests[method]++
		s.requestBytes += int64(len(body))
		s.responseBytes += cw.n
	})
}

func (s *soapStats) snapshot() soapStatsSnapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := soapStatsSnapshot{Requests: map[string]int64{}, RequestBytes: s.requestBytes, ResponseBytes: s.responseBytes}
	for k, v := range s.requests {
		out.Requests[k] = v
	}
	return out
}

func statsControl(mux *http.ServeMux, stats *soapStats, reply func(http.ResponseWriter, int, interface{}), fail func(http.ResponseWriter, int, string, ...interface{})) {
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			fail(w, http.StatusMethodNotAllowed, "use GET")
			return
		}
		reply(w, http.StatusOK, stats.snapshot())
	})
}
