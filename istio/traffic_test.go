package istio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/modelmesh/mesh/internal/registry"
)

// statusLog is a StatusWriter that records what it is given and fails its first writes of
// some statuses.
type statusLog struct {
	mu    sync.Mutex
	fails int
	calls [][]Status
}

func (s *statusLog) WriteStatus(_ context.Context, statuses []Status) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, statuses)
	if s.fails > 0 && len(statuses) > 0 {
		s.fails--
		return errors.New("conflict")
	}
	return nil
}

// writes counts the calls that were given n statuses.
func (s *statusLog) writes(n int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := 0
	for _, call := range s.calls {
		if len(call) == n {
			c++
		}
	}
	return c
}

// lockedBuffer is a log destination safe for the logging goroutine and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

// value reads a counter's or a gauge's value.
func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue() + d.GetGauge().GetValue()
}

func decodeObjects(t *testing.T, docs string) Objects {
	t.Helper()
	vss, drs, err := Decode([]byte(docs))
	if err != nil {
		t.Fatal(err)
	}
	return Objects{VirtualServices: vss, DestinationRules: drs}
}

func TestTraffic(t *testing.T) {
	t.Parallel()
	feed := make(chan Objects)
	watch := func(ctx context.Context, update func(Objects)) error {
		for {
			select {
			case o := <-feed:
				update(o)
			case <-ctx.Done():
				return nil
			}
		}
	}
	status := &statusLog{fails: 1}
	var logs lockedBuffer
	reg := prometheus.NewRegistry()
	tr := NewTraffic(watch, status, slog.New(slog.NewJSONHandler(&logs, nil)), reg)
	tr.retry = time.Millisecond
	changed := make(chan struct{}, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, func() { changed <- struct{}{} }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	file := testReg(t)
	if got := tr.Apply(file); got.Digest() != file.Digest() {
		t.Fatal("before any object arrived, the registry in force is not the file's")
	}

	objs := decodeObjects(t, irisDR+"---\n"+irisVS)
	objs.Problems = []Problem{{File: "/etc/istio/bad.yaml", Error: "document 1: no"}}
	feed <- objs
	<-changed
	got := tr.Apply(file)
	if iris, _ := got.Model("iris"); len(iris.Traffic) != 1 || iris.Traffic[0].Split[0].Version != "2" {
		t.Fatalf("iris traffic in force %+v, want the VirtualService's route to version 2", iris.Traffic)
	}
	if tr.Apply(file) != got {
		t.Error("converted again with nothing changed")
	}

	// Reported: the status writer failed once and was tried again; metrics; JSON.
	eventually(t, "statuses written again after a failure", func() bool { return status.writes(2) == 2 })
	if v := value(t, tr.metrics.virtualServices.WithLabelValues("accepted")); v != 1 {
		t.Errorf("accepted gauge %v, want 1", v)
	}
	rec := httptest.NewRecorder()
	tr.ServeHTTP(rec, httptest.NewRequest("GET", "/status/virtualservices", nil))
	var rep Report
	if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	if rec.Header().Get("Content-Type") != "application/json" || len(rep.Objects) != 2 || rep.Objects[1].State != Accepted ||
		len(rep.Problems) != 1 || rep.Problems[0].File != "/etc/istio/bad.yaml" {
		t.Fatalf("report %s", rec.Body)
	}
	if logs.count("istio file not read") != 1 || logs.count("istio object accepted") != 2 {
		t.Fatalf("logs:\n%s", logs.buf.String())
	}

	// A second VirtualService for iris is rejected: logged once, counted once, even when
	// the registry file is reloaded with the same content.
	objs.VirtualServices = append(objs.VirtualServices, decodeObjects(t, strings.Replace(irisVS, "name: iris,", "name: late,", 1)).VirtualServices...)
	feed <- objs
	<-changed
	tr.Apply(file)
	eventually(t, "the rejection reported", func() bool { return value(t, tr.metrics.rejections) == 1 })
	tr.Apply(testReg(t))
	eventually(t, "the statuses of the reloaded registry written", func() bool { return status.writes(3) == 2 })
	if v := value(t, tr.metrics.virtualServices.WithLabelValues("rejected")); v != 1 {
		t.Errorf("rejected gauge %v, want 1", v)
	}
	if n := value(t, tr.metrics.rejections); n != 1 || logs.count("istio object rejected") != 1 {
		t.Errorf("rejection counted %v times and logged %d times, want once", n, logs.count("istio object rejected"))
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]int{}
	for _, f := range families {
		registered[f.GetName()] = len(f.GetMetric())
	}
	if registered["mesh_controlplane_virtualservices"] != 2 || registered["mesh_controlplane_virtualservices_rejected_total"] != 1 {
		t.Errorf("registered metrics %v", registered)
	}

	// Objects gone: the file's rules again, and the removal logged.
	feed <- Objects{}
	<-changed
	if iris, _ := tr.Apply(file).Model("iris"); iris.Traffic[0].Split[0].Version != "1" {
		t.Fatalf("iris traffic %+v after the VirtualServices went, want the file's", iris.Traffic)
	}
	eventually(t, "the removals logged", func() bool {
		return logs.count("istio object removed") == 3 && logs.count("istio file problem gone") == 1
	})
}

// TestTrafficKeepsTheLastAcceptedRules: as with the registry file, a VirtualService edited
// into something the mesh rejects, or missing while its file does not parse, leaves its last
// accepted rules in force; deleted for good, it takes them away.
func TestTrafficKeepsTheLastAcceptedRules(t *testing.T) {
	t.Parallel()
	tr := NewTraffic(nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	file := testReg(t)
	set := func(o Objects) *registry.Registry {
		tr.mu.Lock()
		tr.objects = o
		tr.version++
		tr.mu.Unlock()
		return tr.Apply(file)
	}
	irisVersion := func(reg *registry.Registry) string {
		iris, _ := reg.Model("iris")
		return iris.Traffic[0].Split[0].Version
	}
	if v := irisVersion(set(decodeObjects(t, irisDR+"---\n"+irisVS))); v != "2" {
		t.Fatalf("accepted: iris to %q, want 2", v)
	}

	rewritten := strings.Replace(irisVS, "http: [{route:", "http: [{rewrite: {uri: /x}, route:", 1)
	if v := irisVersion(set(decodeObjects(t, irisDR+"---\n"+rewritten))); v != "2" {
		t.Fatalf("edited into a rejected version: iris to %q, want the last accepted rules (2)", v)
	}
	st := tr.Report().Objects[1]
	if st.State != Rejected || !slices.Contains(st.Warnings, "the rules of its last accepted version stay in force") {
		t.Fatalf("status %+v, want rejected and saying the last accepted rules stay", st)
	}

	unreadable := decodeObjects(t, irisDR)
	unreadable.Problems = []Problem{{File: "/etc/istio/iris.yaml", Error: "document 1: no"}}
	if v := irisVersion(set(unreadable)); v != "2" {
		t.Fatalf("missing while a file does not parse: iris to %q, want the last accepted rules (2)", v)
	}
	if rep := tr.Report(); len(rep.Problems) != 2 || !strings.Contains(rep.Problems[1].Error, "stay in force") {
		t.Fatalf("problems %+v, want the unreadable file and the kept VirtualService", rep.Problems)
	}

	if v := irisVersion(set(decodeObjects(t, irisDR))); v != "1" {
		t.Fatalf("deleted, every file read: iris to %q, want the registry file's rules (1)", v)
	}
}

// TestTrafficSeededFromThePublishedRegistry: a replica that starts while a VirtualService is
// rejected keeps the rules its last accepted version gave, as published to Redis by the
// replica that saw it accepted.
func TestTrafficSeededFromThePublishedRegistry(t *testing.T) {
	t.Parallel()
	file := testReg(t)
	first := NewTraffic(nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	first.objects, first.version = decodeObjects(t, irisDR+"---\n"+irisVS), 1
	published := first.Apply(file) // what the first replica published

	second := NewTraffic(nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	second.Seed(published)
	rewritten := strings.Replace(irisVS, "http: [{route:", "http: [{rewrite: {uri: /x}, route:", 1)
	second.objects, second.version = decodeObjects(t, irisDR+"---\n"+rewritten), 1
	if iris, _ := second.Apply(file).Model("iris"); iris.Traffic[0].Split[0].Version != "2" {
		t.Fatalf("a new replica applies iris to %q, want the last accepted rules (2) the other replica published", iris.Traffic[0].Split[0].Version)
	}
	unseeded := NewTraffic(nil, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	unseeded.objects, unseeded.version = decodeObjects(t, irisDR+"---\n"+rewritten), 1
	if iris, _ := unseeded.Apply(file).Model("iris"); iris.Traffic[0].Split[0].Version != "1" {
		t.Fatal("without a seed, the rejected object's model should take the file's rules (the check above would prove nothing)")
	}
}
