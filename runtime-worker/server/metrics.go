package server

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelmesh/mesh/internal/placement"
)

// otherModels is the model label of requests beyond Metrics' bound on distinct models.
const otherModels = "_other"

// Metrics count inference per model. The model label takes at most maxModels distinct values
// (requests for further models are counted under "_other"), so a stream of requests for
// random names cannot grow the series without bound.
type Metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	mu        sync.Mutex
	seen      map[string]bool
	maxModels int
}

// NewMetrics creates the metrics and registers them with reg when it is not nil.
func NewMetrics(reg prometheus.Registerer, maxModels int) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_worker_inference_requests_total",
			Help: "Inference requests by model, protocol (rest, grpc) and result code."}, []string{"model", "protocol", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mesh_worker_inference_duration_seconds",
			Help:    "Time to answer an inference request, decoding and encoding included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"model", "protocol"}),
		seen:      make(map[string]bool),
		maxModels: maxModels,
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.latency)
	}
	return m
}

func (m *Metrics) observe(model placement.ModelVersion, protocol, code string, seconds float64) {
	label := m.label(model)
	m.requests.WithLabelValues(label, protocol, code).Inc()
	m.latency.WithLabelValues(label, protocol).Observe(seconds)
}

func (m *Metrics) label(model placement.ModelVersion) string {
	name := model.Name
	if placement.ValidateID(name) != nil {
		return otherModels
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen[name] {
		return name
	}
	if len(m.seen) >= m.maxModels {
		return otherModels
	}
	m.seen[name] = true
	return name
}
