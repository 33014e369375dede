package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelmesh/mesh/internal/modellabel"
	"github.com/modelmesh/mesh/internal/placement"
)

// Metrics count inference per model. The model label takes at most maxModels distinct values
// (requests for further models are counted under "_other"), so a stream of requests for
// random names cannot grow the series without bound.
type Metrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	models   *modellabel.Set
}

// NewMetrics creates the metrics and registers them with reg when it is not nil.
func NewMetrics(reg prometheus.Registerer, maxModels int) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_worker_inference_requests_total",
			Help: "Inference requests by model, protocol (rest, grpc) and result code."}, []string{"model", "protocol", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mesh_worker_inference_duration_seconds",
			Help:    "Time to answer an inference request, decoding and encoding included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"model", "protocol"}),
		models: modellabel.New(maxModels),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.latency)
	}
	return m
}

func (m *Metrics) observe(model placement.ModelVersion, protocol, code string, seconds float64) {
	label := m.models.Label(model.Name)
	m.requests.WithLabelValues(label, protocol, code).Inc()
	m.latency.WithLabelValues(label, protocol).Observe(seconds)
}
