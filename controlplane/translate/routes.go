package translate

import (
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/wire"
)

// buildRoutes is the route configuration RouteConfigName: each registered model's routes
// (modelRoutes), with gRPC twins for the versions in split, then the catch-all cold route
// through ext_proc to the workers pool.
func buildRoutes(cfg Config, reg *registry.Registry, ready map[placement.ModelVersion][]string, split map[placement.ModelVersion]bool) (*routev3.RouteConfiguration, error) {
	var routes []*routev3.Route
	var models []registry.Model
	if reg != nil {
		models = reg.Models
	}
	pr, err := newPerRoute()
	if err != nil {
		return nil, err
	}
	for _, m := range models {
		r, err := modelRoutes(m, ready, cfg, pr)
		if err != nil {
			return nil, err
		}
		routes = append(routes, withGRPCVariants(r, split)...)
	}
	routes = append(routes, &routev3.Route{
		Name:  "cold",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: WorkersCluster},
			Timeout:          durationpb.New(cfg.RouteTimeout),
			RetryPolicy:      noRetries(),
		}},
		TypedPerFilterConfig: map[string]*anypb.Any{extProcFilter: pr.extProcOn},
	})
	// What every hot route shares is the virtual host's, which the routes to the cold path
	// override: Envoy builds a retry policy and a filter configuration once, not once per route.
	return &routev3.RouteConfiguration{
		Name: RouteConfigName,
		VirtualHosts: []*routev3.VirtualHost{{Name: "models", Domains: []string{"*"}, Routes: routes,
			RetryPolicy:          retryOtherReplica(cfg.HotTryTimeout),
			TypedPerFilterConfig: map[string]*anypb.Any{extProcFilter: pr.extProcOff}}},
	}, nil
}

// modelRoutes gives a model's routes, in the order Envoy must try them: one per ready
// version for requests that name the version, then the routes of each traffic rule, and of
// the default version unless the last rule matches every request, for requests that do not.
// A rule's routes are emitted when some rule is hot or does something only Envoy can do
// (timeout, retries, fault, header changes); otherwise the catch-all cold route serves the
// model alike. Before them come their native twins (native.go): of each ready version's
// route, and of the rules' routes up to the first rule that is not hot or has a URI
// condition, since a twin must never take a request that an earlier rule's route would
// have matched.
func modelRoutes(m registry.Model, ready map[placement.ModelVersion][]string, cfg Config, pr perRoute) ([]*routev3.Route, error) {
	hot := func(v string) bool { return len(ready[placement.ModelVersion{Name: m.Name, Version: v}]) > 0 }
	cluster := func(v string) string { return wire.ClusterName(placement.ModelVersion{Name: m.Name, Version: v}) }
	var routes, twins []*routev3.Route
	for _, v := range m.Versions {
		if !hot(v.Version) {
			continue
		}
		r := &routev3.Route{
			Name: m.Name + "@" + v.Version,
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers: []*routev3.HeaderMatcher{exact(wire.HeaderModel, m.Name), exact(wire.HeaderVersion, v.Version)}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster(v.Version)},
				Timeout: durationpb.New(cfg.RouteTimeout)}},
		}
		twins = append(twins, pathTwin(r, m.Name, v.Version, pr)) // never nil: r matches every path
		routes = append(routes, r)
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
		return append(twins, routes...), nil
	}
	pathTwins := true
	for i, rule := range rules {
		hotRule := allHot(rule)
		route, err := ruleRoute(rule, cfg, hotRule)
		if err != nil {
			return nil, fmt.Errorf("model %s traffic rule %d: %w", m.Name, i, err)
		}
		action := route.GetRoute()
		if !hotRule {
			// Requests this rule matches must not fall through to a later rule: send them to
			// the cold path explicitly, where ext_proc applies the same rule.
			action.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: WorkersCluster}
			route.TypedPerFilterConfig[extProcFilter] = pr.extProcOn
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
			var twin *routev3.Route
			if pathTwins && hotRule {
				twin = pathTwin(r, m.Name, "", pr)
			}
			if pathTwins = twin != nil; pathTwins {
				twins = append(twins, twin)
			}
		}
	}
	return append(twins, routes...), nil
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
	base := []*routev3.HeaderMatcher{exact(wire.HeaderModel, model), absent(wire.HeaderVersion)}
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
func ruleRoute(rule registry.Rule, cfg Config, hot bool) (*routev3.Route, error) {
	action := &routev3.RouteAction{Timeout: durationpb.New(cfg.RouteTimeout)}
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

// withGRPCVariants puts, before each hot route naming a cluster of a version in split, the
// same route for gRPC requests (content type application/grpc...) to the clusters' gRPC
// twins. The twin route's name ends as its cluster's does.
func withGRPCVariants(routes []*routev3.Route, split map[placement.ModelVersion]bool) []*routev3.Route {
	twin := func(name string) (string, bool) {
		if m, grpc, ok := wire.ParseClusterName(name); ok && !grpc && split[m] {
			return wire.GRPCClusterName(m), true
		}
		return name, false
	}
	out := make([]*routev3.Route, 0, len(routes))
	for _, r := range routes {
		action := r.GetRoute()
		_, needs := twin(action.GetCluster())
		for _, w := range action.GetWeightedClusters().GetClusters() {
			_, t := twin(w.GetName())
			needs = needs || t
		}
		if needs {
			g := proto.Clone(r).(*routev3.Route)
			g.Name += grpcRouteSuffix
			g.Match.Headers = append(g.Match.Headers, &routev3.HeaderMatcher{Name: "content-type",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "application/grpc"}}}})
			ga := g.GetRoute()
			if c := ga.GetCluster(); c != "" {
				c, _ = twin(c)
				ga.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: c}
			}
			for _, w := range ga.GetWeightedClusters().GetClusters() {
				w.Name, _ = twin(w.GetName())
			}
			for _, mp := range ga.GetRequestMirrorPolicies() {
				mp.Cluster, _ = twin(mp.GetCluster())
			}
			out = append(out, g)
		}
		out = append(out, r)
	}
	return out
}

// grpcRouteSuffix ends the name of a route's gRPC twin.
const grpcRouteSuffix = "|grpc"

// retryOtherReplica retries a request that got no answer (connection refused, or reset
// before any answer: the worker died with it in flight, or its connection was already
// closed) on another replica, or on the fallback listener once the model cluster ejected
// every replica (clusters.go). Inference is idempotent. Of the answers a worker gives, only
// 404 is retried: on a hot route it means the replica is gone from that worker (unloaded as
// it drained, a moment before the gateway's configuration caught up), and another replica,
// or the cold path, has the model.
//
// A try that takes longer than tryTimeout (0: no bound but the route's) is given up and
// retried the same way: a hung worker (stopped, or wedged) holds a request that long, once,
// and its replica is ejected at that first timeout.
func retryOtherReplica(tryTimeout time.Duration) *routev3.RetryPolicy {
	previousHosts, _ := anypb.New(&previoushostsv3.PreviousHostsPredicate{}) // an empty message always marshals
	var perTry *durationpb.Duration
	retryOn := defaultRetryOn + ",retriable-status-codes"
	if tryTimeout > 0 {
		perTry, retryOn = durationpb.New(tryTimeout), retryOn+",gateway-error" // a timed-out try is a 504
	}
	return &routev3.RetryPolicy{
		RetryOn:              retryOn,
		RetriableStatusCodes: []uint32{http.StatusNotFound},
		PerTryTimeout:        perTry,
		NumRetries:           wrapperspb.UInt32(3),
		RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts",
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: previousHosts}}},
		HostSelectionRetryMaxAttempts: 3,
	}
}

const defaultRetryOn = "connect-failure,refused-stream,reset"

// noRetries is the policy of a route that must not retry: a route's policy replaces the
// virtual host's whole.
func noRetries() *routev3.RetryPolicy {
	return &routev3.RetryPolicy{NumRetries: wrapperspb.UInt32(0)}
}

// retryPolicy is a rule route's retry policy. A hot route without retries in its rule keeps
// the virtual host's (nil: retryOtherReplica), a cold one has none, and neither retries at 0
// attempts. Hot routes retry on another replica; cold ones on the worker ext_proc chose,
// since the workers cluster sends every try there and it is the worker that loaded the
// model.
func retryPolicy(r *registry.Retries, hot bool) (*routev3.RetryPolicy, error) {
	switch {
	case r == nil && hot:
		return nil, nil
	case r == nil || r.Attempts == 0:
		return noRetries(), nil
	}
	p := &routev3.RetryPolicy{RetryOn: defaultRetryOn}
	if hot {
		p = retryOtherReplica(0)
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
	return []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: wire.HeaderVersion, Value: v},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
}

func exact(name, value string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value}}}}
}

func absent(name string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
