package xds

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/modelmesh/mesh/controlplane/translate"
	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// event is what the fake Envoy saw: a response of a type, and the names it carried.
type event struct {
	typ   string
	names []string
}

// fakeEnvoy speaks SotW ADS as Envoy does: it subscribes to clusters and listeners, asks
// for the endpoints of every cluster it has and for the route configuration, and ACKs (or,
// when nack is set, NACKs) every response.
type fakeEnvoy struct {
	mu     sync.Mutex
	events []event
	nack   bool
}

func (f *fakeEnvoy) run(t *testing.T, ctx context.Context, addr string) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Error(err)
		return
	}
	defer cc.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Error(err)
		return
	}
	node := &corev3.Node{Id: "test-envoy"}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType} {
		names := []string(nil)
		if typ == resourcev3.RouteType {
			names = []string{translate.RouteConfigName}
		}
		if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: names}); err != nil {
			return
		}
	}
	edsVersion, edsNonce := "", ""
	for {
		resp, err := stream.Recv()
		if err == io.EOF || ctx.Err() != nil || err != nil {
			return
		}
		var names []string
		for _, r := range resp.GetResources() {
			names = append(names, resourceName(t, r))
		}
		f.mu.Lock()
		f.events = append(f.events, event{typ: resp.GetTypeUrl(), names: names})
		nack := f.nack
		f.mu.Unlock()
		ack := &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		if resp.GetTypeUrl() == resourcev3.RouteType {
			ack.ResourceNames = []string{translate.RouteConfigName}
		}
		if resp.GetTypeUrl() == resourcev3.EndpointType {
			edsVersion, edsNonce = resp.GetVersionInfo(), resp.GetNonce()
			ack.ResourceNames = f.clusters()
		}
		if nack {
			ack.VersionInfo = ""
			ack.ErrorDetail = &status.Status{Message: "rejected by the test"}
		}
		if err := stream.Send(ack); err != nil {
			return
		}
		if resp.GetTypeUrl() == resourcev3.ClusterType {
			// Envoy asks for the endpoints of the clusters it now has.
			if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.EndpointType,
				ResourceNames: names, VersionInfo: edsVersion, ResponseNonce: edsNonce}); err != nil {
				return
			}
		}
	}
}

func (f *fakeEnvoy) clusters() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.events) - 1; i >= 0; i-- {
		if f.events[i].typ == resourcev3.ClusterType {
			return f.events[i].names
		}
	}
	return nil
}

func (f *fakeEnvoy) seen() []event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]event(nil), f.events...)
}

func resourceName(t *testing.T, a *anypb.Any) string {
	msg, err := a.UnmarshalNew()
	if err != nil {
		t.Error(err)
		return ""
	}
	switch r := msg.(type) {
	case *clusterv3.Cluster:
		return r.GetName()
	case *routev3.RouteConfiguration:
		var clusters string
		for _, rt := range r.GetVirtualHosts()[0].GetRoutes() {
			clusters += rt.GetRoute().GetCluster() + ","
		}
		return clusters
	}
	return "other"
}

func serve(t *testing.T, s *Server) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	s.Register(ctx, gs)
	done := make(chan struct{})
	go func() { defer close(done); gs.Serve(ln) }()
	t.Cleanup(func() { cancel(); gs.Stop(); <-done })
	return ln.Addr().String()
}

// connect serves s and connects a fake Envoy (NACKing everything when nack is set) for the
// rest of the test; it returns once the Envoy has subscribed.
func connect(t *testing.T, s *Server, nack bool) *fakeEnvoy {
	addr := serve(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	envoy := &fakeEnvoy{nack: nack}
	done := make(chan struct{})
	go func() { defer close(done); envoy.run(t, ctx, addr) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "the fake Envoy subscribes", func() bool { return s.acks.subscribed(resourcev3.ClusterType) })
	return envoy
}

func resources(t *testing.T, ready map[placement.ModelVersion][]string) translate.Resources {
	return resourcesOf(t, translate.State{Ready: ready})
}

// resourcesOf translates st with one registered model, iris, and one worker.
func resourcesOf(t *testing.T, st translate.State) translate.Resources {
	reg, err := registry.Parse([]byte("models:\n  - name: iris\n    versions: [{version: \"1\", storageUri: \"file:///m\"}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := translate.Translate(translate.Config{ListenerAddress: "127.0.0.1", ListenerPort: 8080, ExtProcAddress: "127.0.0.1:9002",
		WasmPath: "/m.wasm", WasmMaxModels: 10, RouteTimeout: time.Second, ExtProcMessageTimeout: time.Second, MaxMessageTimeout: time.Minute},
		translate.State{Registry: reg, Workers: []string{"10.0.0.1:8000"}, Ready: st.Ready, Retained: st.Retained})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestPushIsMakeBeforeBreak: a route naming a new cluster reaches Envoy only after the
// cluster did, and a cluster leaves Envoy only after the routes stopped naming it.
func TestPushIsMakeBeforeBreak(t *testing.T) {
	s := New(Config{AckTimeout: 5 * time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx := context.Background()
	envoy := connect(t, s, false)

	cold := resources(t, nil)
	hot := resources(t, map[placement.ModelVersion][]string{{Name: "iris", Version: "1"}: {"10.0.0.1:8000"}})
	for _, step := range []translate.Resources{cold, hot, cold} {
		if err := s.Push(ctx, step); err != nil {
			t.Fatal(err)
		}
	}
	// The last phase (removing the cluster) is not waited for by Push; wait for it here.
	waitFor(t, "the iris cluster removed", func() bool { return !slices.Contains(envoy.clusters(), "model|iris|1") })
	// Walk the events: track which clusters Envoy has; every route must name only those.
	have := map[string]bool{}
	sawHotRoute := false
	for _, e := range envoy.seen() {
		switch e.typ {
		case resourcev3.ClusterType:
			have = map[string]bool{}
			for _, n := range e.names {
				have[n] = true
			}
		case resourcev3.RouteType:
			for _, c := range e.names {
				for _, name := range strings.Split(c, ",") {
					if name != "" && !have[name] {
						t.Fatalf("route names cluster %q before Envoy has it; events %v", name, envoy.seen())
					}
					sawHotRoute = sawHotRoute || name == "model|iris|1"
				}
			}
		}
	}
	if !sawHotRoute || have["model|iris|1"] {
		t.Fatalf("hot route seen %v, iris cluster still present at the end %v; events %v", sawHotRoute, have["model|iris|1"], envoy.seen())
	}
}

// TestPushWithoutNewClustersIsOnePhase: a replica added to a cluster Envoy already has (kept
// with the fallback alone) goes out with its routes in one phase, one acknowledgement round
// instead of two; a new cluster still goes first, on its own.
func TestPushWithoutNewClustersIsOnePhase(t *testing.T) {
	s := New(Config{AckTimeout: 5 * time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx := context.Background()
	envoy := connect(t, s, false)

	iris := placement.ModelVersion{Name: "iris", Version: "1"}
	cold := resources(t, nil)
	kept := resourcesOf(t, translate.State{Retained: map[placement.ModelVersion]bool{iris: false}})
	hot := resources(t, map[placement.ModelVersion][]string{iris: {"10.0.0.1:8000"}})
	// addRounds counts the acknowledgements awaited for adding clusters (one per type).
	addRounds := func() uint64 {
		t.Helper()
		var n uint64
		for _, typ := range []string{"cluster", "endpoint"} {
			var m dto.Metric
			if err := s.metrics.ackLatency.WithLabelValues("add_clusters", typ).(prometheus.Metric).Write(&m); err != nil {
				t.Fatal(err)
			}
			n += m.GetHistogram().GetSampleCount()
		}
		return n
	}
	for _, step := range []struct {
		name      string
		res       translate.Resources
		addPhases uint64
	}{
		{"cold: the fixed clusters are new", cold, 2},
		{"the cluster kept with the fallback alone: a new cluster", kept, 2}, // clusters and endpoints
		{"a replica in the kept cluster", hot, 0},
		{"cold again", cold, 0},
		{"hot with a new cluster", hot, 2},
	} {
		before := addRounds()
		if err := s.Push(ctx, step.res); err != nil {
			t.Fatal(err)
		}
		if got := addRounds() - before; got != step.addPhases {
			t.Fatalf("%s: %d acknowledgements awaited for adding clusters, want %d", step.name, got, step.addPhases)
		}
	}
	// The removal phase of "cold again" is not waited for: Envoy may see it after the last
	// push's first phases, then the last push's own removal phase.
	waitFor(t, "the iris cluster in Envoy at the end", func() bool { return slices.Contains(envoy.clusters(), "model|iris|1") })
}

// TestPushVersionsAreTheConfigurationsHashes: however a push reuses hashes between its
// phases, what it leaves served carries the versions of the configuration's own content,
// as a restarted control plane (which hashes it afresh) would serve it.
func TestPushVersionsAreTheConfigurationsHashes(t *testing.T) {
	s := New(Config{AckTimeout: time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx := context.Background()
	cold := resources(t, nil)
	hot := resources(t, map[placement.ModelVersion][]string{{Name: "iris", Version: "1"}: {"10.0.0.1:8000"}})
	for i, step := range []translate.Resources{cold, hot, cold, hot} {
		if err := s.Push(ctx, step); err != nil {
			t.Fatal(err)
		}
		snap, err := s.cache.GetSnapshot(nodeGroup)
		if err != nil {
			t.Fatal(err)
		}
		for typ, want := range versions(step) {
			if got := snap.GetVersion(typ); got != want {
				t.Errorf("push %d: %s version %q, want the configuration's %q", i, shortType(typ), got, want)
			}
		}
	}
}

// TestUnchangedPushSendsNothing: pushing the same configuration again, as a restarted
// control plane would, sends Envoy no response.
func TestUnchangedPushSendsNothing(t *testing.T) {
	s := New(Config{AckTimeout: 5 * time.Second}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx := context.Background()
	envoy := connect(t, s, false)
	// Push returns once every phase that changed something was acknowledged.
	if err := s.Push(ctx, resources(t, nil)); err != nil {
		t.Fatal(err)
	}
	n := len(envoy.seen())
	if err := s.Push(ctx, resources(t, nil)); err != nil {
		t.Fatal(err)
	}
	// A changed push as a marker: the first response after n must be its new cluster, so
	// the unchanged push in between sent nothing.
	hot := resources(t, map[placement.ModelVersion][]string{{Name: "iris", Version: "1"}: {"10.0.0.1:8000"}})
	if err := s.Push(ctx, hot); err != nil {
		t.Fatal(err)
	}
	seen := envoy.seen()
	if len(seen) <= n || seen[n].typ != resourcev3.ClusterType || !slices.Contains(seen[n].names, "model|iris|1") {
		t.Fatalf("responses after the unchanged push: %v, want the marker's clusters first", seen[n:])
	}
}

func TestNACKIsCounted(t *testing.T) {
	s := New(Config{AckTimeout: 300 * time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx := context.Background()
	connect(t, s, true)
	if err := s.Push(ctx, resources(t, nil)); !errors.Is(err, ErrNotAcknowledged) {
		t.Fatalf("push that an Envoy rejected: %v, want ErrNotAcknowledged", err)
	}
	if got := counterValue(t, s.metrics.nacks.WithLabelValues("cluster")); got < 1 {
		t.Fatalf("%v cluster NACKs counted", got)
	}
	if got := counterValue(t, s.metrics.ackTimeouts); got < 1 {
		t.Fatalf("a rejected phase did not time out (%v)", got)
	}
}
