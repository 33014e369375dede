package storage

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the disk tier's and the stores' Prometheus metrics. Labels are bounded: scheme
// (file, s3, gs, https, http) and the fixed reasons of Reason. No label or help text carries
// a URI, key or credential.
type Metrics struct {
	bytes, capacity, entries prometheus.Gauge
	hits, misses, evictions  prometheus.Counter
	dropped, coalesced       prometheus.Counter
	downloadBytes            *prometheus.CounterVec
	downloadSeconds          *prometheus.HistogramVec
	errors                   *prometheus.CounterVec
	retries                  *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg when it is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mesh_worker_disk_cache_bytes",
			Help: "Bytes of model files kept in the worker's disk tier."}),
		capacity: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mesh_worker_disk_cache_capacity_bytes",
			Help: "Byte budget of the disk tier (--disk-cache-size)."}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mesh_worker_disk_cache_entries",
			Help: "Models kept in the disk tier."}),
		hits: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_disk_cache_hits_total",
			Help: "Fetches served from the disk tier without asking the store."}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_disk_cache_misses_total",
			Help: "Fetches that had to download (or copy) the model's files."}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_disk_cache_evictions_total",
			Help: "Models removed from the disk tier to make room, least recently used first."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_disk_cache_dropped_total",
			Help: "Entries found incomplete or corrupt when the tier was indexed at start, and removed."}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{Name: "mesh_worker_storage_coalesced_total",
			Help: "Fetches that joined a download of the same model already in progress."}),
		downloadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_worker_storage_download_bytes_total",
			Help: "Bytes read from model stores, by scheme."}, []string{"scheme"}),
		downloadSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mesh_worker_storage_download_seconds",
			Help:    "Time to download one model's files (listing, every file, checks), by scheme and result.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)}, []string{"scheme", "result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_worker_storage_errors_total",
			Help: "Fetches that failed, by scheme and reason: bad_uri, not_found, denied, tls, checksum, disk_full, unavailable, timeout, canceled, error."}, []string{"scheme", "reason"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mesh_worker_storage_retries_total",
			Help: "Store requests tried again after a transient failure, by scheme."}, []string{"scheme"}),
	}
	if reg != nil {
		reg.MustRegister(m.bytes, m.capacity, m.entries, m.hits, m.misses, m.evictions, m.dropped, m.coalesced,
			m.downloadBytes, m.downloadSeconds, m.errors, m.retries)
	}
	return m
}
