package istio

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/modelmesh/mesh/internal/registry"
)

// StatusWriter records verdicts on the objects themselves (Kube does, on Kubernetes).
type StatusWriter interface {
	// WriteStatus records each status on its object, writing only those that differ from
	// what the object holds. It goes on past a failed write and returns the failures; the
	// caller retries later. Blocks until done or ctx ends.
	WriteStatus(ctx context.Context, statuses []Status) error
}

// statusRetry is Traffic.retry's value.
const statusRetry = 5 * time.Second

// Report is what users read about the Istio objects: a verdict per object and the inputs
// that could not be read.
type Report struct {
	Objects  []Status  `json:"objects"`
	Problems []Problem `json:"problems,omitempty"`
}

// Traffic holds the Istio objects of one source and applies them to registries. Run feeds
// it; Apply and ServeHTTP may be called from any goroutine.
type Traffic struct {
	watch   func(ctx context.Context, update func(Objects)) error
	status  StatusWriter
	log     *slog.Logger
	metrics *metrics
	retry   time.Duration // wait before statuses that could not be written are tried again

	mu      sync.Mutex
	objects Objects
	version uint64 // counts updates of objects
	// The last Apply, reused while neither the registry nor the objects change.
	appliedFile    *registry.Registry
	appliedVersion uint64
	applied        *registry.Registry
	report         Report
	// lastGood holds, per VirtualService ("namespace/name"), the rules its last accepted
	// version gave each of its models.
	lastGood map[string]map[string][]registry.Rule
	reported chan struct{} // a new report waits for Run; capacity 1
}

// NewTraffic returns a Traffic fed by watch, which must call update with the full set of
// objects once known and after every change, and return when ctx ends (WatchDir, Kube.Watch).
// status, if not nil, gets every verdict to record on the objects. Metrics go to reg.
func NewTraffic(watch func(ctx context.Context, update func(Objects)) error, status StatusWriter, log *slog.Logger, reg prometheus.Registerer) *Traffic {
	return &Traffic{watch: watch, status: status, log: log, metrics: newMetrics(reg), retry: statusRetry, reported: make(chan struct{}, 1)}
}

// Run watches the source until ctx ends, calling changed after each update of the objects
// (the first once the source has read them all), and reports the verdicts of each Apply:
// logged when they change, counted in metrics, and written by the StatusWriter.
func (t *Traffic) Run(ctx context.Context, changed func()) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return t.watch(ctx, func(o Objects) {
			t.mu.Lock()
			t.objects = o
			t.version++
			t.mu.Unlock()
			changed()
		})
	})
	g.Go(func() error {
		t.publish(ctx)
		return nil
	})
	return g.Wait()
}

// Apply returns the registry in force: file with the traffic rules of the accepted
// VirtualServices (Convert, Overlay); before the source's first update, file's rules are
// unchanged. It converts only when file or the objects changed since the last call, and then
// hands the verdicts to Run to report.
func (t *Traffic) Apply(file *registry.Registry) *registry.Registry {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.applied != nil && t.appliedFile == file && t.appliedVersion == t.version {
		return t.applied
	}
	res := Convert(t.objects.VirtualServices, t.objects.DestinationRules, file)
	kept := t.keepLastGood(&res, file)
	t.appliedFile, t.appliedVersion, t.applied = file, t.version, Overlay(file, res)
	t.report = Report{Objects: res.Statuses, Problems: append(slices.Clone(t.objects.Problems), kept...)}
	select {
	case t.reported <- struct{}{}:
	default: // Run has one waiting already and reads the newest
	}
	return t.applied
}

// Seed takes the last accepted rules of each VirtualService from a registry the mesh
// published (by any replica, in an earlier run): its rules name their VirtualService in
// Source. A replica that starts, or restarts, then keeps in force what the others keep,
// instead of falling back to the file's rules for objects rejected meanwhile. It has no
// effect once rules were accepted here.
func (t *Traffic) Seed(published *registry.Registry) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.lastGood != nil || published == nil {
		return
	}
	good := map[string]map[string][]registry.Rule{}
	for _, m := range published.Models {
		for _, r := range m.Traffic {
			rest, ok := strings.CutPrefix(r.Source, KindVirtualService+" ")
			key, _, _ := strings.Cut(rest, " ")
			if !ok || key == "" {
				continue
			}
			if good[key] == nil {
				good[key] = map[string][]registry.Rule{}
			}
			good[key][m.Name] = append(good[key][m.Name], r)
		}
	}
	t.lastGood = good
}

// keepLastGood keeps in force, as the registry file does, the last accepted rules of a
// VirtualService whose new version is rejected, and of one that is missing while some input
// could not be read (it may be in the file that does not parse), unless another object now
// routes the model or the rules no longer fit the registry. It records the accepted ones, and
// returns a Problem for each missing object whose rules it kept.
func (t *Traffic) keepLastGood(res *Result, file *registry.Registry) []Problem {
	good := map[string]map[string][]registry.Rule{}
	present := map[string]bool{}
	keep := func(key string, rules map[string][]registry.Rule) bool {
		kept := false
		for m, r := range rules {
			if _, taken := res.Rules[m]; taken {
				continue
			}
			if _, err := file.WithTraffic(map[string][]registry.Rule{m: r}); err != nil {
				continue // a version it routes to is gone from the registry
			}
			if res.Rules == nil {
				res.Rules = map[string][]registry.Rule{}
			}
			res.Rules[m], kept = r, true
		}
		if kept {
			good[key] = rules
		}
		return kept
	}
	for i := range res.Statuses {
		st := &res.Statuses[i]
		if st.Kind != KindVirtualService {
			continue
		}
		key := st.Namespace + "/" + st.Name
		present[key] = true
		if st.State == Accepted {
			rules := map[string][]registry.Rule{}
			for _, m := range st.Models {
				if r, ok := res.Rules[m]; ok {
					rules[m] = r
				}
			}
			good[key] = rules
			continue
		}
		if prev, ok := t.lastGood[key]; ok && keep(key, prev) {
			st.Warnings = append(st.Warnings, "the rules of its last accepted version stay in force")
		}
	}
	var kept []Problem
	if len(t.objects.Problems) > 0 {
		for _, key := range slices.Sorted(maps.Keys(t.lastGood)) {
			if !present[key] && keep(key, t.lastGood[key]) {
				kept = append(kept, Problem{File: KindVirtualService + " " + key,
					Error: "not read (an input could not be read); the rules of its last accepted version stay in force"})
			}
		}
	}
	t.lastGood = good
	return kept
}

// Report returns the verdicts of the last Apply.
func (t *Traffic) Report() Report {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.report
}

// ServeHTTP answers the last Report as JSON.
func (t *Traffic) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(t.Report()) // a failed write is the client's: nothing to do
}

// publish reports each new Report until ctx ends; statuses that could not be written are
// tried again after t.retry.
func (t *Traffic) publish(ctx context.Context) {
	var last Report
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.reported:
		case <-retry:
		}
		rep := t.Report()
		t.logChanges(ctx, last, rep)
		last, retry = rep, nil
		if t.status == nil {
			continue
		}
		if err := t.status.WriteStatus(ctx, rep.Objects); err != nil && ctx.Err() == nil {
			t.log.WarnContext(ctx, "write istio object statuses; will retry", "error", err, "retry_in", t.retry.String())
			retry = time.After(t.retry)
		}
	}
}

// logChanges logs each verdict and problem that is new or differs from before, and sets
// the metrics.
func (t *Traffic) logChanges(ctx context.Context, before, now Report) {
	type key struct{ kind, namespace, name string }
	old := map[key]Status{}
	for _, st := range before.Objects {
		old[key{st.Kind, st.Namespace, st.Name}] = st
	}
	counts := map[State]int{}
	for _, st := range now.Objects {
		k := key{st.Kind, st.Namespace, st.Name}
		prev, seen := old[k]
		delete(old, k)
		if st.Kind == KindVirtualService {
			counts[st.State]++
		}
		if seen && reflect.DeepEqual(prev, st) {
			continue
		}
		log := t.log.With("kind", st.Kind, "namespace", st.Namespace, "name", st.Name, "models", st.Models)
		if st.State == Rejected {
			if st.Kind == KindVirtualService {
				t.metrics.rejections.Inc()
			}
			log.WarnContext(ctx, "istio object rejected", "reasons", st.Reasons, "warnings", st.Warnings)
			continue
		}
		log.InfoContext(ctx, "istio object accepted", "warnings", st.Warnings)
	}
	for k := range old {
		t.log.InfoContext(ctx, "istio object removed", "kind", k.kind, "namespace", k.namespace, "name", k.name)
	}
	for _, s := range []State{Accepted, Rejected} {
		t.metrics.virtualServices.WithLabelValues(string(s)).Set(float64(counts[s]))
	}
	for _, p := range now.Problems {
		if !slices.Contains(before.Problems, p) {
			t.log.WarnContext(ctx, "istio file not read; its objects are left out", "file", p.File, "error", p.Error)
		}
	}
	for _, p := range before.Problems {
		if !slices.ContainsFunc(now.Problems, func(q Problem) bool { return q.File == p.File }) {
			t.log.InfoContext(ctx, "istio file problem gone", "file", p.File)
		}
	}
}
