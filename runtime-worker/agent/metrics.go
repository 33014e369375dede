package agent

import (
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelmesh/mesh/internal/modellabel"
	"github.com/modelmesh/mesh/internal/placement"
)

// Metrics are the agent's Prometheus metrics. Labels are bounded: load result, unload reason
// and replica state take a handful of fixed values each, dimension one per GPU plus host.
type Metrics struct {
	capacity     *prometheus.GaugeVec
	used         *prometheus.GaugeVec
	models       *prometheus.GaugeVec
	loads        *prometheus.CounterVec
	loadDuration prometheus.Histogram
	unloads      *prometheus.CounterVec
	evictions    prometheus.Counter
	// headroomEvictions counts the evictions made ahead of demand, a part of evictions.
	headroomEvictions prometheus.Counter
	evictedAge        prometheus.Histogram
	drainWait         prometheus.Histogram
	drainTimeouts     prometheus.Counter
	queueWait         prometheus.Histogram
	// reg is where watch registers the gauges read from an agent at each scrape; nil: none.
	reg prometheus.Registerer
	// maxModels bounds the distinct model label values of mesh_worker_model_replicas.
	maxModels int
}

// NewMetrics creates the metrics and registers them with reg when it is not nil.
// The model label of per-model gauges takes at most maxModels distinct values; more models
// are counted as "_other".
func NewMetrics(reg prometheus.Registerer, maxModels int) *Metrics {
	m := &Metrics{
		capacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mesh_worker_capacity_bytes",
			Help: "Memory budget of the worker in bytes, by dimension: host, gpu0, gpu1..."}, []string{"dimension"}),
		used: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mesh_worker_used_bytes",
			Help: "Bytes counted against the budget by dimension: resident models plus reservations of loads in progress."}, []string{"dimension"}),
		models: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mesh_worker_models",
			Help: "Model versions on the worker by state."}, []string{"state"}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_worker_loads_total",
			Help: "Model loads by result: ok, no_capacity, storage (files could not be fetched), timeout, runtime_error, error."}, []string{"result"}),
		loadDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mesh_worker_load_duration_seconds",
			Help: "Time from the start of a load to ready or failure.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		unloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_worker_unloads_total",
			Help: "Model unloads by reason: unload, drain, evict, shutdown, runtime_lost."}, []string{"reason"}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_evictions_total",
			Help: "Idle models evicted: to make room for a load, or ahead of demand to keep --free-watermark free."}),
		headroomEvictions: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_headroom_evictions_total",
			Help: "Idle models evicted ahead of demand, to keep --free-watermark free (counted in mesh_worker_evictions_total too)."}),
		evictedAge: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mesh_worker_evicted_idle_seconds",
			Help: "How long an evicted model had been idle.", Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		drainWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mesh_worker_drain_wait_seconds",
			Help: "Time from draining a model until the mesh stopped routing it here.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 12)}),
		drainTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_drain_timeouts_total",
			Help: "Drains that gave up waiting for the mesh to stop routing the model here."}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mesh_worker_queue_wait_seconds",
			Help:    "Time a request waited for one of its replica's --model-concurrency slots (0 when one was free).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
	}
	// Every result and reason exists from the start, at zero, so that rates and alerts over
	// them have data before the first event.
	for _, r := range []string{"ok", "no_capacity", "storage", "timeout", "runtime_error", "error"} {
		m.loads.WithLabelValues(r)
	}
	for _, r := range []string{"unload", "drain", "evict", "shutdown", "runtime_lost"} {
		m.unloads.WithLabelValues(r)
	}
	for _, s := range []placement.State{placement.StateLoading, placement.StateReady, placement.StateDraining} {
		m.models.WithLabelValues(s.String())
	}
	if reg != nil {
		reg.MustRegister(m.capacity, m.used, m.models, m.loads, m.loadDuration, m.unloads, m.evictions, m.headroomEvictions, m.evictedAge, m.drainWait, m.drainTimeouts, m.queueWait)
	}
	m.reg, m.maxModels = reg, maxModels
	return m
}

// watch registers the gauges computed from a's state when scraped. New calls it once, for
// the one agent the metrics belong to.
func (m *Metrics) watch(a *Agent) {
	if m.reg == nil {
		return
	}
	m.reg.MustRegister(lruCollector{agent: a, desc: prometheus.NewDesc("mesh_worker_lru_age_seconds",
		"Time since the least recently used ready, unpinned model was used; absent when there is none.", nil, nil)})
	m.reg.MustRegister(replicaCollector{agent: a, maxModels: m.maxModels, desc: prometheus.NewDesc("mesh_worker_model_replicas",
		"Replicas on this worker by model, version and state (1 each): where a model is resident. Models beyond --metrics-max-models are summed as model _other, version _other.",
		[]string{"model", "version", "state"}, nil)})
}

// replicaCollector reports mesh_worker_model_replicas from a's replicas at each scrape, so
// that a model gone leaves no stale series behind.
type replicaCollector struct {
	agent     *Agent
	maxModels int
	desc      *prometheus.Desc
}

func (c replicaCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c replicaCollector) Collect(ch chan<- prometheus.Metric) {
	replicas, _ := c.agent.Snapshot()
	for labels, n := range replicaSeries(replicas, c.maxModels) {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), labels[0], labels[1], labels[2])
	}
}

// replicaSeries counts replicas by (model, version, state); beyond maxModels distinct models
// (the first in name order are kept, so the choice is stable between scrapes) the rest are
// counted under model and version "_other".
func replicaSeries(replicas []Replica, maxModels int) map[[3]string]int {
	names := map[string]bool{}
	for _, r := range replicas {
		names[r.Model.Name] = true
	}
	kept := map[string]bool{}
	for _, n := range slices.Sorted(maps.Keys(names)) {
		if len(kept) >= maxModels {
			break
		}
		kept[n] = true
	}
	out := map[[3]string]int{}
	for _, r := range replicas {
		key := [3]string{r.Model.Name, r.Model.Version, r.State.String()}
		if !kept[r.Model.Name] {
			key[0], key[1] = modellabel.Other, modellabel.Other
		}
		out[key]++
	}
	return out
}

// lruCollector reports mesh_worker_lru_age_seconds, computed at each scrape: a gauge set at
// events would stop aging between them.
type lruCollector struct {
	agent *Agent
	desc  *prometheus.Desc
}

func (c lruCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c lruCollector) Collect(ch chan<- prometheus.Metric) {
	replicas, _ := c.agent.Snapshot()
	if age, ok := lruAge(replicas, c.agent.now()); ok {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, age.Seconds())
	}
}

// lruAge is how long the least recently used of the replicas eviction could take (ready and
// unpinned) has gone unused at now; one with requests in flight is in use. ok is false when
// there is no such replica.
func lruAge(replicas []Replica, now time.Time) (age time.Duration, ok bool) {
	for _, r := range replicas {
		if r.State != placement.StateReady || r.Pinned {
			continue
		}
		d := max(now.Sub(r.LastUsed), 0)
		if r.InFlight > 0 {
			d = 0
		}
		if !ok || d > age {
			age, ok = d, true
		}
	}
	return age, ok
}
