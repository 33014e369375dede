package extproc

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelmesh/mesh/internal/modellabel"
)

// Metrics are the server's Prometheus metrics. Labels are bounded: outcomes and results, and
// model names up to a configured number of distinct ones (then "_other").
type Metrics struct {
	decisions       *prometheus.CounterVec
	decisionSeconds *prometheus.HistogramVec
	coldWait        *prometheus.HistogramVec
	loadsInFlight   prometheus.Gauge
	held            prometheus.Gauge
	loads           *prometheus.CounterVec
	coalesced       prometheus.Counter
	lockWaits       prometheus.Counter
	snapshotTime    prometheus.Gauge
	warmLoads       *prometheus.CounterVec
	coldStarts      *prometheus.CounterVec
	unreachable     prometheus.Counter
	scale           *prometheus.CounterVec
	models          *modellabel.Set
}

// SnapshotRead records the time of the latest residency snapshot; give it to NewView.
func (m *Metrics) SnapshotRead(t time.Time) { m.snapshotTime.Set(float64(t.UnixNano()) / 1e9) }

// Outcomes are the values of the outcome label.
var Outcomes = []string{"routed_ready", "server_level", "cold_loaded", "not_found", "no_worker", "load_failed", "model_files", "deadline", "queue_full", "canceled"}

// NewMetrics registers the metrics on reg; the model label takes at most maxModels distinct
// values.
func NewMetrics(reg prometheus.Registerer, maxModels int) *Metrics {
	m := &Metrics{
		models: modellabel.New(maxModels),
		coldStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_extproc_cold_starts_total", Help: "Loads this replica made (or confirmed) for requests that found no ready replica, by model and result (ok, error); models beyond --metrics-max-models count as _other.",
		}, []string{"model", "result"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_extproc_decisions_total", Help: "Requests answered, by outcome.",
		}, []string{"outcome"}),
		decisionSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mesh_extproc_decision_duration_seconds", Help: "Time from request headers to the answer, by outcome.",
			Buckets: []float64{.0001, .0005, .001, .005, .01, .05, .1, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"outcome"}),
		coldWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mesh_extproc_cold_wait_seconds", Help: "Time a request was held waiting for a load, by result (ok, error).",
			Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120},
		}, []string{"result"}),
		loadsInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mesh_extproc_loads_in_flight", Help: "Coalesced loads this replica is running or waiting on.",
		}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mesh_extproc_held_requests", Help: "Requests held right now waiting for a load, every model version together.",
		}),
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_extproc_worker_loads_total", Help: "Load calls to workers, by result (ok, no_room, model_files, unreachable, error).",
		}, []string{"result"}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_extproc_coalesced_requests_total", Help: "Cold requests that joined a load already under way in this replica.",
		}),
		lockWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_extproc_lock_waits_total", Help: "Loads left to another ext_proc replica that held the model's lock.",
		}),
		warmLoads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_extproc_warm_loads_total", Help: "Loads made to keep models at their registry minReplicas, by result (ok, error).",
		}, []string{"result"}),
		unreachable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mesh_extproc_workers_unreachable_total", Help: "Workers whose management port refused a connection: left out and their lease ended.",
		}),
		scale: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mesh_extproc_scale_total", Help: "Replica changes the scaler made for demand, by direction (up: an extra replica added, down: one drained) and result (ok, no_room, error).",
		}, []string{"direction", "result"}),
		snapshotTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mesh_extproc_snapshot_timestamp_seconds", Help: "Unix time of the last residency snapshot read from Redis.",
		}),
	}
	reg.MustRegister(m.decisions, m.decisionSeconds, m.coldWait, m.loadsInFlight, m.held, m.loads, m.coalesced, m.lockWaits, m.snapshotTime, m.warmLoads, m.coldStarts, m.unreachable, m.scale)
	// Every label value exists from the start, at zero, so that rates and alerts over them
	// have data before the first event.
	for _, o := range Outcomes {
		m.decisions.WithLabelValues(o)
	}
	for _, r := range []string{"ok", "error"} {
		m.coldWait.WithLabelValues(r)
		m.warmLoads.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "no_room", "model_files", "unreachable", "error"} {
		m.loads.WithLabelValues(r)
	}
	for _, d := range []string{"up", "down"} {
		for _, r := range []string{"ok", "no_room", "error"} {
			m.scale.WithLabelValues(d, r)
		}
	}
	return m
}
