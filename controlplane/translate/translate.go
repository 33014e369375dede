// Package translate turns the mesh's state (registry and residency) into the gateway Envoy's
// xDS resources. It is a pure function of its input, so equal states give byte-equal
// resources, and a restarted control plane pushes no change.
package translate

import (
	"fmt"
	"maps"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	overridehostv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/override_host/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	metadatav3 "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
)

// Names shared with the other parts of the mesh.
const (
	ListenerName    = "gateway"
	RouteConfigName = "models"
	// WorkersCluster holds every live worker; ext_proc picks the host.
	WorkersCluster = "workers"
	// ExtProcCluster is the ext_proc service.
	ExtProcCluster = "extproc"
	// ModelHeader and VersionHeader are set by the wasm filter.
	ModelHeader   = "x-model-id"
	VersionHeader = "x-model-version"
	// DestinationHeader and the envoy.lb metadata key carry ext_proc's choice of worker.
	DestinationHeader = "x-gateway-destination-endpoint"
	lbMetadata        = "envoy.lb"
	extProcFilter     = "envoy.filters.http.ext_proc"
	faultFilter       = "envoy.filters.http.fault"
	wasmFilter        = "envoy.filters.http.wasm"
)

// ClusterName is the stable name of the cluster of a model version's ready replicas.
func ClusterName(m placement.ModelVersion) string { return "model|" + m.Name + "|" + m.Version }

// Config is the part of the gateway's configuration that does not come from state.
type Config struct {
	// ListenerAddress and ListenerPort are where the gateway accepts requests.
	ListenerAddress string
	ListenerPort    uint32
	// ExtProcAddress is the ext_proc service, "host:port".
	ExtProcAddress string
	// WasmPath is the modelid.wasm file on the Envoy host.
	WasmPath string
	// WasmMaxModels bounds the filter's per-model stats.
	WasmMaxModels int
	// RouteTimeout bounds an upstream request (not the wait for a cold load, which ext_proc
	// holds before routing).
	RouteTimeout time.Duration
	// ExtProcMessageTimeout is Envoy's wait for an ext_proc answer; MaxMessageTimeout is the
	// most ext_proc may extend it to while a load runs.
	ExtProcMessageTimeout time.Duration
	MaxMessageTimeout     time.Duration
	// Tracing, when set, has the gateway trace requests (tracing.go); nil: no tracing.
	Tracing *Tracing
}

// State is the proto-free input: the registry, the live workers and which replicas are ready.
type State struct {
	Registry *registry.Registry
	// Workers are the live workers' data addresses ("ip:port").
	Workers []string
	// Ready maps a model version to the data addresses of its ready replicas.
	Ready map[placement.ModelVersion][]string
	// GRPC maps a worker's data address to its gRPC address, for workers that serve gRPC on
	// another port (Triton). Models with replicas on such workers get a gRPC cluster and
	// gRPC routes of their own.
	GRPC map[string]string
}

// GRPCSuffix ends the name of a model version's gRPC cluster.
const GRPCSuffix = "|grpc"

// Resources are the xDS resources of one state, each list sorted by name.
type Resources struct {
	Listeners []types.Resource
	Routes    []types.Resource
	Clusters  []types.Resource
	Endpoints []types.Resource
}

// Translate builds the gateway's resources for st. Models whose routed versions all have a
// ready replica get routes straight to per-version clusters with ext_proc disabled; all other
// requests take the catch-all route through ext_proc to the workers pool.
func Translate(cfg Config, st State) (Resources, error) {
	var res Resources
	listener, err := buildListener(cfg)
	if err != nil {
		return res, err
	}
	res.Listeners = []types.Resource{listener}

	ready := map[placement.ModelVersion][]string{}
	for m, addrs := range st.Ready {
		if len(addrs) > 0 {
			ready[m] = sortedUnique(addrs)
		}
	}
	var routes []*routev3.Route
	var models []registry.Model
	if st.Registry != nil {
		models = st.Registry.Models
	}
	split := map[string]bool{} // clusters whose gRPC traffic goes to a cluster of its own
	for m, addrs := range ready {
		for _, a := range addrs {
			if g, ok := st.GRPC[a]; ok && g != a {
				split[ClusterName(m)] = true
			}
		}
	}
	for _, m := range models {
		r, err := modelRoutes(m, ready, cfg.RouteTimeout)
		if err != nil {
			return res, err
		}
		routes = append(routes, withGRPCVariants(r, split)...)
	}
	routes = append(routes, &routev3.Route{
		Name:  "cold",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: WorkersCluster},
			Timeout:          durationpb.New(cfg.RouteTimeout),
		}},
	})
	res.Routes = []types.Resource{&routev3.RouteConfiguration{
		Name:         RouteConfigName,
		VirtualHosts: []*routev3.VirtualHost{{Name: "models", Domains: []string{"*"}, Routes: routes}},
	}}

	var clusters []*clusterv3.Cluster
	var endpoints []*endpointv3.ClusterLoadAssignment
	for _, m := range sortedModels(ready) {
		if st.Registry == nil {
			break
		}
		if _, ok := st.Registry.Model(m.Name); !ok {
			continue // resident but no longer registered: not routed
		}
		c, err := edsCluster(ClusterName(m), nil)
		if err != nil {
			return res, err
		}
		clusters = append(clusters, c)
		endpoints = append(endpoints, assignment(ClusterName(m), ready[m]))
		if split[ClusterName(m)] {
			name := ClusterName(m) + GRPCSuffix
			gc, err := edsCluster(name, nil)
			if err != nil {
				return res, err
			}
			var addrs []string
			for _, a := range ready[m] {
				addrs = append(addrs, grpcAddr(st.GRPC, a))
			}
			clusters = append(clusters, gc)
			endpoints = append(endpoints, assignment(name, sortedUnique(addrs)))
		}
	}
	pool, err := workersCluster()
	if err != nil {
		return res, err
	}
	clusters = append(clusters, pool)
	pooled := slices.Clone(st.Workers)
	for _, w := range st.Workers {
		pooled = append(pooled, grpcAddr(st.GRPC, w)) // ext_proc sends gRPC to a worker's gRPC address
	}
	endpoints = append(endpoints, assignment(WorkersCluster, sortedUnique(pooled)))
	ext, err := extProcCluster(cfg.ExtProcAddress)
	if err != nil {
		return res, err
	}
	clusters = append(clusters, ext)
	if cfg.Tracing != nil {
		tc, err := tracingCluster(cfg.Tracing.CollectorAddress)
		if err != nil {
			return res, err
		}
		clusters = append(clusters, tc)
	}
	slices.SortFunc(clusters, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(endpoints, func(a, b *endpointv3.ClusterLoadAssignment) int { return strings.Compare(a.ClusterName, b.ClusterName) })
	for _, c := range clusters {
		res.Clusters = append(res.Clusters, c)
	}
	for _, e := range endpoints {
		res.Endpoints = append(res.Endpoints, e)
	}
	return res, nil
}

// modelRoutes gives a model's routes, in the order Envoy must try them: one per ready
// version for requests that name the version, then the routes of each traffic rule, and of
// the default version unless the last rule matches every request, for requests that do not. A rule's routes are
// emitted when some rule is hot or does something only Envoy can do (timeout, retries,
// fault, header changes); otherwise the catch-all cold route serves the model alike.
func modelRoutes(m registry.Model, ready map[placement.ModelVersion][]string, timeout time.Duration) ([]*routev3.Route, error) {
	disabled, err := anypb.New(&extprocv3.ExtProcPerRoute{Override: &extprocv3.ExtProcPerRoute_Disabled{Disabled: true}})
	if err != nil {
		return nil, err
	}
	hot := func(v string) bool { return len(ready[placement.ModelVersion{Name: m.Name, Version: v}]) > 0 }
	cluster := func(v string) string { return ClusterName(placement.ModelVersion{Name: m.Name, Version: v}) }
	var routes []*routev3.Route
	for _, v := range m.Versions {
		if !hot(v.Version) {
			continue
		}
		routes = append(routes, &routev3.Route{
			Name: m.Name + "@" + v.Version,
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*routev3.HeaderMatcher{exact(ModelHeader, m.Name), exact(VersionHeader, v.Version)}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster(v.Version)},
				Timeout: durationpb.New(timeout), RetryPolicy: retryOtherReplica()}},
			TypedPerFilterConfig: map[string]*anypb.Any{extProcFilter: disabled},
		})
	}
	rules := m.Traffic
	if n := len(rules); n == 0 || len(rules[n-1].Match) > 0 || len(rules[n-1].When) > 0 {
		// Requests that no rule matches go to the default version (Model.Routes): a route of
		// their own lets them take the hot path too.
		rules = append(slices.Clip(rules), registry.Rule{Split: []registry.Weighted{{Version: m.DefaultVersion, Weight: 100}}})
	}
	allHot := func(rule registry.Rule) bool {
		for _, w := range rule.Split {
			if w.Weight > 0 && !hot(w.Version) {
				return false
			}
		}
		return true
	}
	if !slices.ContainsFunc(rules, func(r registry.Rule) bool { return allHot(r) || actsInEnvoy(r) }) {
		return routes, nil
	}
	for i, rule := range rules {
		hotRule := allHot(rule)
		route, err := ruleRoute(rule, timeout, hotRule)
		if err != nil {
			return nil, fmt.Errorf("model %s traffic rule %d: %w", m.Name, i, err)
		}
		action := route.GetRoute()
		if !hotRule {
			// Requests this rule matches must not fall through to a later rule: send them to
			// the cold path explicitly, where ext_proc applies the same rule.
			action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: WorkersCluster}
		} else {
			var weighted []*routev3.WeightedCluster_ClusterWeight
			for _, w := range rule.Split {
				if w.Weight > 0 {
					weighted = append(weighted, &routev3.WeightedCluster_ClusterWeight{Name: cluster(w.Version), Weight: wrapperspb.UInt32(w.Weight),
						RequestHeadersToAdd: versionHeader(w.Version)})
				}
			}
			if len(weighted) == 1 {
				action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: weighted[0].Name}
				route.RequestHeadersToAdd = append(weighted[0].RequestHeadersToAdd, route.RequestHeadersToAdd...)
			} else {
				action.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: weighted}}
			}
			if mir := rule.Mirror; mir != nil && hot(mir.Version) {
				action.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{
					Cluster:         cluster(mir.Version),
					RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: perMillion(mir.Percent)},
				}}
			}
			route.TypedPerFilterConfig[extProcFilter] = disabled
		}
		// Each condition of the rule is a route of its own, with the same actions.
		for j, match := range ruleMatches(m.Name, rule) {
			r := route
			if j > 0 {
				r = proto.Clone(route).(*routev3.Route)
			}
			r.Name = m.Name + "#" + strconv.Itoa(i)
			if len(rule.When) > 0 {
				r.Name += "." + strconv.Itoa(j)
			}
			r.Match = match
			routes = append(routes, r)
		}
	}
	return routes, nil
}

// actsInEnvoy reports whether a rule asks for something that only the gateway's route can
// do, so that its route is needed even while the model is cold.
func actsInEnvoy(r registry.Rule) bool {
	return r.Timeout != "" || r.Retries != nil || r.Fault != nil || r.RequestHeaders != nil || r.ResponseHeaders != nil
}

// ruleMatches gives one RouteMatch per condition of the rule (one matching any path when it
// has none), each also requiring the model header, no version header and the rule's exact
// headers.
func ruleMatches(model string, rule registry.Rule) []*routev3.RouteMatch {
	base := []*routev3.HeaderMatcher{exact(ModelHeader, model), absent(VersionHeader)}
	for _, h := range sortedKeys(rule.Match) {
		base = append(base, exact(h, rule.Match[h]))
	}
	if len(rule.When) == 0 {
		return []*routev3.RouteMatch{{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: base}}
	}
	out := make([]*routev3.RouteMatch, 0, len(rule.When))
	for _, c := range rule.When {
		match := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Headers: slices.Clone(base)}
		if u := c.URI; u != nil {
			switch {
			case u.Exact != "":
				match.PathSpecifier = &routev3.RouteMatch_Path{Path: u.Exact}
			case u.Prefix != "":
				match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: u.Prefix}
			default:
				match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: u.Regex}}
			}
		}
		for _, h := range sortedKeys(c.Headers) {
			match.Headers = append(match.Headers, &routev3.HeaderMatcher{Name: h,
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatcher(c.Headers[h])}})
		}
		out = append(out, match)
	}
	return out
}

func stringMatcher(s registry.StringMatch) *matcherv3.StringMatcher {
	switch {
	case s.Exact != "":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s.Exact}}
	case s.Prefix != "":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: s.Prefix}}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: s.Regex}}}
}

// ruleRoute is a rule's route without its match and destination: the rule's timeout (else
// the default), retries, header changes and fault. The registry validated the rule; a
// duration that does not parse is still reported rather than ignored.
func ruleRoute(rule registry.Rule, timeout time.Duration, hot bool) (*routev3.Route, error) {
	action := &routev3.RouteAction{Timeout: durationpb.New(timeout)}
	if rule.Timeout != "" {
		d, err := parseDuration(rule.Timeout)
		if err != nil {
			return nil, fmt.Errorf("timeout: %w", err)
		}
		action.Timeout = d
	}
	var err error
	if action.RetryPolicy, err = retryPolicy(rule.Retries, hot); err != nil {
		return nil, err
	}
	route := &routev3.Route{Action: &routev3.Route_Route{Route: action}, TypedPerFilterConfig: map[string]*anypb.Any{}}
	if f := rule.Fault; f != nil {
		fault, err := httpFault(f)
		if err != nil {
			return nil, err
		}
		route.TypedPerFilterConfig[faultFilter] = fault
	}
	if h := rule.RequestHeaders; h != nil {
		route.RequestHeadersToAdd = headersToAdd(h)
		route.RequestHeadersToRemove = h.Remove
	}
	if h := rule.ResponseHeaders; h != nil {
		route.ResponseHeadersToAdd = headersToAdd(h)
		route.ResponseHeadersToRemove = h.Remove
	}
	return route, nil
}

func parseDuration(s string) (*durationpb.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return nil, err
	}
	return durationpb.New(d), nil
}

// httpFault is the fault filter's per-route configuration for a rule's fault.
func httpFault(f *registry.Fault) (*anypb.Any, error) {
	fault := &faultv3.HTTPFault{}
	if f.Delay != "" {
		d, err := parseDuration(f.Delay)
		if err != nil {
			return nil, fmt.Errorf("fault delay: %w", err)
		}
		fault.Delay = &faultcommonv3.FaultDelay{FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: d},
			Percentage: perMillion(f.DelayPercent)}
	}
	if f.AbortStatus != 0 {
		fault.Abort = &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: f.AbortStatus},
			Percentage: perMillion(f.AbortPercent)}
	}
	return anypb.New(fault)
}

// perMillion keeps four decimals of a percent, as Istio does.
func perMillion(percent float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: uint32(math.Round(percent * 10000)), Denominator: typev3.FractionalPercent_MILLION}
}

// headersToAdd turns Set into overwriting and Add into appending header options. Values
// are literal: a "%" is escaped so that Envoy does not read a command in it.
func headersToAdd(h *registry.HeaderOps) []*corev3.HeaderValueOption {
	var out []*corev3.HeaderValueOption
	for _, op := range []struct {
		values map[string]string
		action corev3.HeaderValueOption_HeaderAppendAction
	}{{h.Set, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}, {h.Add, corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD}} {
		for _, k := range sortedKeys(op.values) {
			out = append(out, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: strings.ReplaceAll(op.values[k], "%", "%%")},
				AppendAction: op.action})
		}
	}
	return out
}

func grpcAddr(m map[string]string, data string) string {
	if g, ok := m[data]; ok && g != "" {
		return g
	}
	return data
}

// withGRPCVariants puts, before each hot route naming a cluster in split, the same route
// for gRPC requests (content type application/grpc...) to the clusters' gRPC twins.
func withGRPCVariants(routes []*routev3.Route, split map[string]bool) []*routev3.Route {
	out := make([]*routev3.Route, 0, len(routes))
	for _, r := range routes {
		action := r.GetRoute()
		twin := func(name string) string {
			if split[name] {
				return name + GRPCSuffix
			}
			return name
		}
		needs := split[action.GetCluster()]
		for _, w := range action.GetWeightedClusters().GetClusters() {
			needs = needs || split[w.GetName()]
		}
		if needs {
			g := proto.Clone(r).(*routev3.Route)
			g.Name += GRPCSuffix
			g.Match.Headers = append(g.Match.Headers, &routev3.HeaderMatcher{Name: "content-type",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "application/grpc"}}}})
			ga := g.GetRoute()
			if c := ga.GetCluster(); c != "" {
				ga.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: twin(c)}
			}
			for _, w := range ga.GetWeightedClusters().GetClusters() {
				w.Name = twin(w.GetName())
			}
			for _, mp := range ga.GetRequestMirrorPolicies() {
				mp.Cluster = twin(mp.GetCluster())
			}
			out = append(out, g)
		}
		out = append(out, r)
	}
	return out
}

// retryOtherReplica retries a request that never reached a worker (connection refused or
// reset before any answer) on another replica: a worker that died is still routed until its
// lease ends. Requests a worker answered are never retried.
func retryOtherReplica() *routev3.RetryPolicy {
	previousHosts, _ := anypb.New(&previoushostsv3.PreviousHostsPredicate{}) // an empty message always marshals
	return &routev3.RetryPolicy{
		RetryOn:    defaultRetryOn,
		NumRetries: wrapperspb.UInt32(2),
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: previousHosts}}},
		HostSelectionRetryMaxAttempts: 3,
	}
}

const defaultRetryOn = "connect-failure,refused-stream,reset-before-request"

// retryPolicy is a rule route's retry policy. A hot route without retries in its rule keeps
// retryOtherReplica, a cold one has none, and neither retries at 0 attempts. Hot routes
// retry on another replica; cold ones on the worker ext_proc chose, since the workers
// cluster sends every try there and it is the worker that loaded the model.
func retryPolicy(r *registry.Retries, hot bool) (*routev3.RetryPolicy, error) {
	switch {
	case r == nil && hot:
		return retryOtherReplica(), nil
	case r == nil || r.Attempts == 0:
		return nil, nil
	}
	p := &routev3.RetryPolicy{RetryOn: defaultRetryOn}
	if hot {
		p = retryOtherReplica()
	}
	p.NumRetries = wrapperspb.UInt32(r.Attempts)
	if r.RetryOn != "" {
		p.RetryOn = r.RetryOn
	}
	if r.PerTryTimeout != "" {
		d, err := parseDuration(r.PerTryTimeout)
		if err != nil {
			return nil, fmt.Errorf("retries: perTryTimeout: %w", err)
		}
		p.PerTryTimeout = d
	}
	return p, nil
}

// versionHeader tells the worker which version the route chose: the request names only the
// model, and a worker may hold several of its versions.
func versionHeader(v string) []*corev3.HeaderValueOption {
	return []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: VersionHeader, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
}

func exact(name, value string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value}}}}
}

func absent(name string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true}
}

func buildListener(cfg Config) (*listenerv3.Listener, error) {
	pluginConf, err := anypb.New(wrapperspb.String(fmt.Sprintf(`{"max_models": %d}`, cfg.WasmMaxModels)))
	if err != nil {
		return nil, err
	}
	wasm, err := anypb.New(&wasmfilterv3.Wasm{Config: &wasmv3.PluginConfig{
		Name:   "modelid",
		RootId: "modelid",
		Vm: &wasmv3.PluginConfig_VmConfig{VmConfig: &wasmv3.VmConfig{
			VmId:    "modelid",
			Runtime: "envoy.wasm.runtime.v8",
			Code: &corev3.AsyncDataSource{Specifier: &corev3.AsyncDataSource_Local{
				Local: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: cfg.WasmPath}}}},
		}},
		Configuration:               pluginConf,
		AllowOnHeadersStopIteration: wrapperspb.Bool(true), // the filter waits for the gRPC body
	}})
	if err != nil {
		return nil, err
	}
	extProc, err := anypb.New(&extprocv3.ExternalProcessor{
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ExtProcCluster}}},
		ProcessingMode: &extprocv3.ProcessingMode{
			RequestHeaderMode:   extprocv3.ProcessingMode_SEND,
			ResponseHeaderMode:  extprocv3.ProcessingMode_SKIP,
			RequestTrailerMode:  extprocv3.ProcessingMode_SKIP,
			ResponseTrailerMode: extprocv3.ProcessingMode_SKIP,
		},
		MessageTimeout:    durationpb.New(cfg.ExtProcMessageTimeout),
		MaxMessageTimeout: durationpb.New(cfg.MaxMessageTimeout),
		// ext_proc unreachable: cold requests fail fast with 503, as for a failed load.
		StatusOnError: &typev3.HttpStatus{Code: typev3.StatusCode_ServiceUnavailable},
	})
	if err != nil {
		return nil, err
	}
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	// Faults come before ext_proc, so that an aborted request never loads a model; the
	// filter acts only on routes that carry a fault of their own.
	fault, err := anypb.New(&faultv3.HTTPFault{})
	if err != nil {
		return nil, err
	}
	var tracing *hcmv3.HttpConnectionManager_Tracing
	if cfg.Tracing != nil {
		if tracing, err = hcmTracing(cfg.Tracing); err != nil {
			return nil, err
		}
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: "gateway",
		Tracing:    tracing,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: RouteConfigName, ConfigSource: ads()}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: wasmFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: wasm}},
			{Name: faultFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: fault}},
			{Name: extProcFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: extProc}},
			{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}},
		},
	})
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name:    ListenerName,
		Address: socketAddress(cfg.ListenerAddress, cfg.ListenerPort),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}},
	}, nil
}

func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

// followDownstream makes a cluster speak to the worker in the client's protocol: HTTP/1.1
// for REST, HTTP/2 for gRPC (the worker splits its port by the connection's first bytes).
func followDownstream() (map[string]*anypb.Any, error) {
	opts, err := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
			HttpProtocolOptions: &corev3.Http1ProtocolOptions{}, Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}})
	if err != nil {
		return nil, err
	}
	return map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts}, nil
}

func edsCluster(name string, policy *clusterv3.LoadBalancingPolicy) (*clusterv3.Cluster, error) {
	protocol, err := followDownstream()
	if err != nil {
		return nil, err
	}
	c := &clusterv3.Cluster{
		Name:                          name,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:              &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads()},
		ConnectTimeout:                durationpb.New(time.Second),
		TypedExtensionProtocolOptions: protocol,
	}
	if policy != nil {
		c.LoadBalancingPolicy = policy
	} else {
		c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	}
	return c, nil
}

// workersCluster is the pool of every live worker; the override_host policy sends each
// request to the worker ext_proc chose (header or envoy.lb metadata). A chosen host that is
// not in the pool is never used, so a forged value cannot send traffic anywhere else.
func workersCluster() (*clusterv3.Cluster, error) {
	rr, err := anypb.New(&roundrobinv3.RoundRobin{})
	if err != nil {
		return nil, err
	}
	override, err := anypb.New(&overridehostv3.OverrideHost{
		OverrideHostSources: []*overridehostv3.OverrideHost_OverrideHostSource{
			{Header: DestinationHeader},
			{Metadata: &metadatav3.MetadataKey{Key: lbMetadata, Path: []*metadatav3.MetadataKey_PathSegment{{
				Segment: &metadatav3.MetadataKey_PathSegment_Key{Key: DestinationHeader}}}}},
		},
		FallbackPolicy: &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{
			TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.round_robin", TypedConfig: rr}}}},
	})
	if err != nil {
		return nil, err
	}
	return edsCluster(WorkersCluster, &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{{
		TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.override_host", TypedConfig: override}}}})
}

func extProcCluster(addr string) (*clusterv3.Cluster, error) {
	c, err := staticH2Cluster(ExtProcCluster, addr)
	if err != nil {
		return nil, fmt.Errorf("ext_proc address: %w", err)
	}
	return c, nil
}

// staticH2Cluster is a gRPC service at addr ("host:port"; a host name is resolved by DNS).
func staticH2Cluster(name, addr string) (*clusterv3.Cluster, error) {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return nil, err
	}
	h2, err := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}})
	if err != nil {
		return nil, err
	}
	kind := clusterv3.Cluster_STRICT_DNS
	if net.ParseIP(host) != nil {
		kind = clusterv3.Cluster_STATIC
	}
	return &clusterv3.Cluster{
		Name:                          name,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: kind},
		ConnectTimeout:                durationpb.New(time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(host, port)}}}},
	}, nil
}

func assignment(cluster string, addrs []string) *endpointv3.ClusterLoadAssignment {
	var eps []*endpointv3.LbEndpoint
	for _, a := range addrs {
		host, port, err := splitHostPort(a)
		if err != nil {
			continue // residency records are written by workers; a bad one is skipped, not fatal
		}
		eps = append(eps, lbEndpoint(host, port))
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	if len(eps) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}
	}
	return cla
}

func lbEndpoint(host string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
		Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, port)}}}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func splitHostPort(addr string) (string, uint32, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("%q: bad port", addr)
	}
	return host, uint32(port), nil
}

func sortedUnique(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

func sortedModels(m map[placement.ModelVersion][]string) []placement.ModelVersion {
	out := make([]placement.ModelVersion, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b placement.ModelVersion) int { return strings.Compare(a.String(), b.String()) })
	return out
}
