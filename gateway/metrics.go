package gateway

import (
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoal-chat/shoal/storage"
)

// metrics are one node's Prometheus metrics, in a registry of its own (no
// process-wide default registry: two nodes in one test process must not
// share counters).
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	inFlight  prometheus.Gauge
	longPolls prometheus.Gauge
	limited   *prometheus.CounterVec
	commits   *prometheus.HistogramVec
	batch     prometheus.Histogram
	commitErr prometheus.Counter
	// mediaRemote counts media bytes streamed over the cluster transport
	// (client_media_remote.go), by direction.
	mediaRemote *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_http_requests_total",
			Help: "HTTP requests answered, by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shoal_http_request_duration_seconds",
			Help:    "Time to answer HTTP requests, by route pattern and method (long-polls included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"route", "method"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_http_requests_in_flight",
			Help: "HTTP requests being answered.",
		}),
		longPolls: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "shoal_sync_long_polls_open",
			Help: "/sync requests with a timeout being answered.",
		}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_http_limited_total",
			Help: "Requests refused by a limit: rate (per user or IP) or concurrency.",
		}, []string{"limit"}),
		commits: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "shoal_storage_commit_duration_seconds",
			Help:    "Duration of partition group commits, fsync included, by outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"outcome"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "shoal_storage_commit_batch_size",
			Help:    "Update functions committed together in one partition transaction.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
		commitErr: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "shoal_storage_commit_failed_functions_total",
			Help: "Update functions left out of a commit because they failed or panicked.",
		}),
		mediaRemote: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_media_remote_bytes_total",
			Help: "Media bytes streamed to or from a media actor on another node, by direction (upload, download).",
		}, []string{"direction"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.inFlight, m.longPolls, m.limited, m.commits, m.batch, m.commitErr, m.mediaRemote,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeRequest(route, method string, status int, took time.Duration) {
	m.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.latency.WithLabelValues(route, method).Observe(took.Seconds())
}

// observeCommit is storage.Options.OnCommit: quick, no calls back into storage.
func (m *metrics) observeCommit(st storage.CommitStats) {
	outcome := "ok"
	if st.Err != nil {
		outcome = "error"
	}
	m.commits.WithLabelValues(outcome).Observe(st.Duration.Seconds())
	m.batch.Observe(float64(st.Batch))
	if st.Failed > 0 {
		m.commitErr.Add(float64(st.Failed))
	}
}

// gaugeFunc registers a gauge read at scrape time.
func (m *metrics) gaugeFunc(name, help string, f func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// adminHandler serves /metrics and the Go profiler (/debug/pprof/) for the
// admin listener, which must not be reachable by clients.
func (m *metrics) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
