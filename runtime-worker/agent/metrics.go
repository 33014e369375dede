package agent

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the agent's Prometheus metrics. Labels are bounded: load result, unload reason
// and replica state take a handful of fixed values each, dimension one per GPU plus host.
type Metrics struct {
	capacity      *prometheus.GaugeVec
	used          *prometheus.GaugeVec
	models        *prometheus.GaugeVec
	loads         *prometheus.CounterVec
	loadDuration  prometheus.Histogram
	unloads       *prometheus.CounterVec
	evictions     prometheus.Counter
	evictedAge    prometheus.Histogram
	drainWait     prometheus.Histogram
	drainTimeouts prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg when it is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		capacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mesh_worker_capacity_bytes",
			Help: "Memory budget of the worker in bytes, by dimension: host, gpu0, gpu1..."}, []string{"dimension"}),
		used: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mesh_worker_used_bytes",
			Help: "Bytes counted against the budget by dimension: resident models plus reservations of loads in progress."}, []string{"dimension"}),
		models: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mesh_worker_models",
			Help: "Model versions on the worker by state."}, []string{"state"}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_worker_loads_total",
			Help: "Model loads by result: ok, no_capacity, timeout, runtime_error, error."}, []string{"result"}),
		loadDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mesh_worker_load_duration_seconds",
			Help: "Time from the start of a load to ready or failure.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		unloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_worker_unloads_total",
			Help: "Model unloads by reason: unload, drain, evict, shutdown, runtime_lost."}, []string{"reason"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_evictions_total",
			Help: "Idle models evicted to make room for a load."}),
		evictedAge: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mesh_worker_evicted_idle_seconds",
			Help: "How long an evicted model had been idle.", Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		drainWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mesh_worker_drain_wait_seconds",
			Help: "Time from draining a model until the mesh stopped routing it here.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}),
		drainTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_drain_timeouts_total",
			Help: "Drains that gave up waiting for the mesh to stop routing the model here."}),
	}
	if reg != nil {
		reg.MustRegister(m.capacity, m.used, m.models, m.loads, m.loadDuration, m.unloads, m.evictions, m.evictedAge, m.drainWait, m.drainTimeouts)
	}
	return m
}
