package istio

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	virtualServices *prometheus.GaugeVec
	rejections      prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		virtualServices: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mesh_controlplane_virtualservices",
			Help: "VirtualServices read, by verdict."}, []string{"state"}),
		rejections: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_controlplane_virtualservices_rejected_total",
			Help: "VirtualService rejections: counted when a VirtualService turns rejected or its reasons change."}),
	}
	// Both states exist from the start, so that dashboards and alerts see zeros.
	m.virtualServices.WithLabelValues(string(Accepted))
	m.virtualServices.WithLabelValues(string(Rejected))
	if reg != nil {
		reg.MustRegister(m.virtualServices, m.rejections)
	}
	return m
}
