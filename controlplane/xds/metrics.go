package xds

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the xDS server's Prometheus metrics.
type Metrics struct {
	pushDuration prometheus.Histogram
	ackLatency   *prometheus.HistogramVec
	ackTimeouts  prometheus.Counter
	nacks        *prometheus.CounterVec
	streams      prometheus.Gauge
	resources    *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg when it is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		pushDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "mesh_controlplane_push_duration_seconds",
			Help: "Time to push one configuration through all its phases, acknowledgements included.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		ackLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mesh_controlplane_push_ack_seconds",
			Help:    "Time from setting a phase (add_clusters, switch_routes) until every connected Envoy acknowledged it, by phase and resource type.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}, []string{"phase", "type"}),
		ackTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_controlplane_ack_timeouts_total",
			Help: "Phases not acknowledged by every Envoy within the ack timeout."}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_controlplane_nacks_total",
			Help: "Configurations Envoy rejected, by resource type."}, []string{"type"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mesh_controlplane_xds_streams",
			Help: "Open xDS streams."}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mesh_controlplane_resources",
			Help: "Resources in the served configuration, by type."}, []string{"type"}),
	}
	// Every type exists from the start, at zero, so that rates and alerts over NACKs have data
	// before the first one.
	for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
		m.nacks.WithLabelValues(typ)
	}
	if reg != nil {
		reg.MustRegister(m.pushDuration, m.ackLatency, m.ackTimeouts, m.nacks, m.streams, m.resources)
	}
	return m
}
