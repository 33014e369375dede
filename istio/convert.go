// Package istio turns Istio VirtualServices and DestinationRules into the mesh's traffic
// rules. A VirtualService whose hosts are registered model names replaces those models'
// traffic rules; a DestinationRule for a model maps its subset names to model versions.
// Objects come from a directory of YAML files (WatchDir) or from the Kubernetes API (Kube),
// always as the full current set. Convert is pure; Traffic ties one source, the conversion
// and the statuses users read together for the control plane. See docs/istio.md.
package istio

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/durationpb"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/modelmesh/mesh/internal/registry"
)

// Kinds of the objects the package reads.
const (
	KindVirtualService  = "VirtualService"
	KindDestinationRule = "DestinationRule"
)

// State is the verdict on an object.
type State string

// The two verdicts: an accepted object is in force, a rejected one has no effect at all.
const (
	Accepted State = "accepted"
	Rejected State = "rejected"
)

// Status is the verdict on one object, as users read it.
type Status struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	State     State  `json:"state"`
	// Models the object is about: a VirtualService's hosts, a DestinationRule's host.
	Models []string `json:"models,omitempty"`
	// Reasons the object is rejected, each naming the field it is about.
	Reasons []string `json:"reasons,omitempty"`
	// Warnings about what is accepted but not acted on, or acted on unlike Istio.
	Warnings []string `json:"warnings,omitempty"`
}

// Result is what a set of objects means for a registry.
type Result struct {
	// Rules replace the traffic rules of each model an accepted VirtualService routes.
	Rules map[string][]registry.Rule
	// Statuses has one entry per object, sorted by kind, namespace and name.
	Statuses []Status
}

// Convert decides which objects are in force against reg and turns the accepted
// VirtualServices into traffic rules. An object that is invalid, that asks for what the mesh
// cannot do, or that loses a conflict is rejected alone; every model's new rules pass the
// registry's validation. Conflicts go to the older object (creation time, then namespace and
// name). The inputs are not changed.
func Convert(vss []*networkingv1.VirtualService, drs []*networkingv1.DestinationRule, reg *registry.Registry) Result {
	c := converter{reg: reg, subsets: map[string]*subsets{}}
	res := Result{Rules: map[string][]registry.Rule{}}
	for _, dr := range byAge(drs) {
		res.Statuses = append(res.Statuses, c.destinationRule(dr))
	}
	owners := map[string]string{} // model → the VirtualService in force for it
	for _, vs := range byAge(vss) {
		v, rules := c.virtualService(vs)
		for i, host := range vs.Spec.GetHosts() {
			if owner, ok := owners[host]; ok {
				v.reject("hosts[%d]: model %q is already routed by VirtualService %s, which is older", i, host, owner)
			}
		}
		st := v.status(KindVirtualService, vs.Namespace, vs.Name, vs.Spec.GetHosts())
		res.Statuses = append(res.Statuses, st)
		if st.State == Accepted {
			for host, r := range rules {
				owners[host] = vs.Namespace + "/" + vs.Name
				res.Rules[host] = r
			}
		}
	}
	slices.SortFunc(res.Statuses, func(a, b Status) int {
		return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	return res
}

// Overlay returns the registry in force: reg with the traffic rules of every model in
// res.Rules replaced by those. reg must be the registry res was converted against, which
// validated each model's new rules; reg itself is not changed.
func Overlay(reg *registry.Registry, res Result) *registry.Registry {
	out := &registry.Registry{Models: slices.Clone(reg.Models)}
	for i, m := range out.Models {
		if rules, ok := res.Rules[m.Name]; ok {
			out.Models[i].Traffic = rules
		}
	}
	return out
}

// byAge orders objects oldest first, ties broken by namespace and name; nil entries go.
func byAge[T interface {
	comparable
	metav1.Object
}](objs []T) []T {
	var zero T
	out := slices.DeleteFunc(slices.Clone(objs), func(o T) bool { return o == zero })
	slices.SortFunc(out, func(a, b T) int {
		ta, tb := a.GetCreationTimestamp(), b.GetCreationTimestamp()
		return cmp.Or(ta.Compare(tb.Time), strings.Compare(a.GetNamespace(), b.GetNamespace()), strings.Compare(a.GetName(), b.GetName()))
	})
	return out
}

// verdict gathers an object's reasons and warnings, each once, in the order found.
type verdict struct {
	reasons, warnings []string
}

func (v *verdict) reject(format string, args ...any) {
	if s := fmt.Sprintf(format, args...); !slices.Contains(v.reasons, s) {
		v.reasons = append(v.reasons, s)
	}
}

func (v *verdict) warn(format string, args ...any) {
	if s := fmt.Sprintf(format, args...); !slices.Contains(v.warnings, s) {
		v.warnings = append(v.warnings, s)
	}
}

func (v *verdict) status(kind, namespace, name string, models []string) Status {
	st := Status{Kind: kind, Namespace: namespace, Name: name, State: Accepted, Models: slices.Clone(models), Reasons: v.reasons, Warnings: v.warnings}
	if len(v.reasons) > 0 {
		st.State = Rejected
	}
	return st
}

// subsets is what the DestinationRules say about one model's subsets.
type subsets struct {
	owner    string            // namespace/name of the DestinationRule in force, or of a rejected one
	accepted bool              // whether owner is in force
	versions map[string]string // subset name → version, when accepted
}

type converter struct {
	reg     *registry.Registry
	subsets map[string]*subsets // by model
}

// destinationRule checks a DestinationRule and, when accepted, records its subsets.
// DestinationRules are seen oldest first, so the first accepted one for a host wins.
func (c *converter) destinationRule(dr *networkingv1.DestinationRule) Status {
	var v verdict
	spec := &dr.Spec
	host := spec.GetHost()
	m, known := c.reg.Model(host)
	if !known {
		v.reject("host: %q is not a registered model", host)
	}
	if spec.GetTrafficPolicy() != nil {
		v.warn("trafficPolicy is ignored: the gateway balances load over a version's replicas by least requests")
	}
	if spec.GetWorkloadSelector() != nil {
		v.reject("workloadSelector: the mesh's gateway is not a workload it could select")
	}
	versions := map[string]string{}
	for i, s := range spec.GetSubsets() {
		at := fmt.Sprintf("subsets[%d]", i)
		if s.GetName() == "" {
			v.reject("%s.name: empty", at)
		}
		if _, dup := versions[s.GetName()]; dup {
			v.reject("%s.name: subset %q is defined twice", at, s.GetName())
		}
		for _, k := range slices.Sorted(maps.Keys(s.GetLabels())) {
			if k != "version" {
				v.reject("%s.labels.%s: only the version label selects model replicas", at, k)
			}
		}
		version := cmp.Or(s.GetLabels()["version"], s.GetName())
		versions[s.GetName()] = version
		if _, ok := m.Version(version); known && !ok {
			v.warn("%s: version %q of model %q is not registered; routes to subset %q are rejected", at, version, host, s.GetName())
		}
		if s.GetTrafficPolicy() != nil {
			v.warn("%s.trafficPolicy is ignored: the gateway balances load over a version's replicas by least requests", at)
		}
	}
	name := dr.Namespace + "/" + dr.Name
	if prev := c.subsets[host]; prev != nil && prev.accepted && known {
		v.reject("host: model %q already has its subsets defined by DestinationRule %s, which is older", host, prev.owner)
	}
	var models []string
	if host != "" {
		models = []string{host}
	}
	st := v.status(KindDestinationRule, dr.Namespace, dr.Name, models)
	switch prev := c.subsets[host]; {
	case st.State == Accepted:
		c.subsets[host] = &subsets{owner: name, accepted: true, versions: versions}
	case prev == nil && known:
		c.subsets[host] = &subsets{owner: name}
	}
	return st
}

// virtualService checks a VirtualService and converts its http routes into rules for each
// of its hosts. The caller adds conflicts with other VirtualServices.
func (c *converter) virtualService(vs *networkingv1.VirtualService) (*verdict, map[string][]registry.Rule) {
	v := &verdict{}
	spec := &vs.Spec
	if len(spec.GetHosts()) == 0 {
		v.reject("hosts: empty; each host names a registered model")
	}
	if len(spec.GetGateways()) > 0 {
		v.reject("gateways: the mesh's rules apply at its own gateway only")
	}
	if len(spec.GetTls()) > 0 {
		v.reject("tls: the mesh routes HTTP only")
	}
	if len(spec.GetTcp()) > 0 {
		v.reject("tcp: the mesh routes HTTP only")
	}
	if len(spec.GetHttp()) == 0 {
		v.reject("http: empty")
	}
	for i, h := range spec.GetHttp() {
		unsupportedRoute(v, fmt.Sprintf("http[%d]", i), h)
	}
	rules := map[string][]registry.Rule{}
	for i, host := range spec.GetHosts() {
		m, ok := c.reg.Model(host)
		switch {
		case !ok:
			v.reject("hosts[%d]: %q is not a registered model", i, host)
			continue
		case rules[host] != nil:
			continue // listed twice: same rules
		}
		var rs []registry.Rule
		for j, h := range spec.GetHttp() {
			at := fmt.Sprintf("http[%d]", j)
			r := c.rule(v, m, at, h)
			r.Source = fmt.Sprintf("VirtualService %s/%s %s", vs.Namespace, vs.Name, at)
			rs = append(rs, r)
			if j == len(spec.GetHttp())-1 && r.When != nil {
				v.warn("%s has a match: requests that match no http route go to the model's default version (Istio would answer 404)", at)
			}
		}
		if len(m.Traffic) > 0 {
			v.warn("replaces the %d traffic rules of model %q in the registry file", len(m.Traffic), host)
		}
		// Registry validation of the model with these rules alone: the rest of the
		// registry is not this object's business.
		one := &registry.Registry{Models: []registry.Model{m}}
		if _, err := one.WithTraffic(map[string][]registry.Rule{host: rs}); err != nil {
			for _, reason := range reasons(err) {
				v.reject("%s", reason)
			}
		}
		rules[host] = rs
	}
	return v, rules
}

// reasons lists what err says is wrong, one reason per error joined into it (the registry
// joins every problem it finds, under ErrInvalid).
func reasons(err error) []string {
	multi, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []string{err.Error()}
	}
	var out []string
	for _, e := range multi.Unwrap() {
		if e != registry.ErrInvalid {
			out = append(out, reasons(e)...)
		}
	}
	return out
}

// unsupportedRoute rejects the parts of an http route the mesh cannot honour, whichever
// model it is for.
func unsupportedRoute(v *verdict, at string, h *networkingv1alpha3.HTTPRoute) {
	for _, f := range []struct {
		name string
		set  bool
		why  string
	}{
		{"redirect", h.GetRedirect() != nil, "the mesh only forwards to model versions"},
		{"directResponse", h.GetDirectResponse() != nil, "the mesh only forwards to model versions"},
		{"delegate", h.GetDelegate() != nil, "delegation is not supported"},
		{"rewrite", h.GetRewrite() != nil, "model servers need the request's own path and authority"},
		{"corsPolicy", h.GetCorsPolicy() != nil, "CORS is not handled by the mesh"},
	} {
		if f.set {
			v.reject("%s.%s: not supported: %s", at, f.name, f.why)
		}
	}
	for j, m := range h.GetMatch() {
		p := fmt.Sprintf("%s.match[%d]", at, j)
		for _, f := range []struct {
			name string
			set  bool
		}{
			{"scheme", m.GetScheme() != nil},
			{"method", m.GetMethod() != nil},
			{"authority", m.GetAuthority() != nil},
			{"port", m.GetPort() != 0},
			{"sourceLabels", len(m.GetSourceLabels()) > 0},
			{"gateways", len(m.GetGateways()) > 0},
			{"queryParams", len(m.GetQueryParams()) > 0},
			{"ignoreUriCase", m.GetIgnoreUriCase()},
			{"withoutHeaders", len(m.GetWithoutHeaders()) > 0},
			{"sourceNamespace", m.GetSourceNamespace() != ""},
		} {
			if f.set {
				v.reject("%s.%s: not supported: the mesh matches request headers and the URI only", p, f.name)
			}
		}
		if m.GetStatPrefix() != "" {
			v.warn("%s.statPrefix is ignored: the gateway's stats are per model version", p)
		}
	}
	for k, d := range h.GetRoute() {
		if d.GetHeaders() != nil {
			v.reject("%s.route[%d].headers: not supported: set headers for the whole route in %s.headers", at, k, at)
		}
		if d.GetWeight() < 0 {
			v.reject("%s.route[%d].weight: %d is negative", at, k, d.GetWeight())
		}
	}
	if len(h.GetRoute()) == 0 {
		v.reject("%s.route: empty; the mesh only forwards to model versions", at)
	}
	if h.GetMirror() != nil && len(h.GetMirrors()) > 0 {
		v.reject("%s.mirrors: set together with mirror", at)
	}
	if len(h.GetMirrors()) > 1 {
		v.reject("%s.mirrors: %d mirrors; the mesh mirrors to one version", at, len(h.GetMirrors()))
	}
	//lint:ignore SA1019 Istio still accepts the deprecated mirrorPercent; so does the mesh
	if h.GetMirror() == nil && (h.GetMirrorPercentage() != nil || h.GetMirrorPercent() != nil) {
		v.warn("%s.mirrorPercentage is ignored without mirror", at)
	}
	if r := h.GetRetries(); r != nil {
		if r.GetAttempts() < 0 {
			v.reject("%s.retries.attempts: %d is negative", at, r.GetAttempts())
		}
		if r.GetRetryRemoteLocalities() != nil || r.GetRetryIgnorePreviousHosts() != nil || r.GetBackoff() != nil {
			v.warn("%s.retries: retryRemoteLocalities, retryIgnorePreviousHosts and backoff are ignored: the gateway retries on another replica after Envoy's default backoff", at)
		}
	}
	if d := h.GetFault().GetDelay(); d != nil && d.GetFixedDelay() == nil {
		v.reject("%s.fault.delay: only fixedDelay is supported", at)
	}
	if a := h.GetFault().GetAbort(); a != nil {
		switch a.GetErrorType().(type) {
		case *networkingv1alpha3.HTTPFaultInjection_Abort_HttpStatus:
		case *networkingv1alpha3.HTTPFaultInjection_Abort_GrpcStatus:
			v.reject("%s.fault.abort.grpcStatus: not supported; use httpStatus (gRPC callers get it mapped as Envoy maps HTTP statuses)", at)
		default:
			v.reject("%s.fault.abort: only httpStatus is supported", at)
		}
	}
}

// rule converts one http route for model m. Checks that do not depend on the model are
// unsupportedRoute's.
func (c *converter) rule(v *verdict, m registry.Model, at string, h *networkingv1alpha3.HTTPRoute) registry.Rule {
	r := registry.Rule{When: conditions(v, at, h.GetMatch())}
	for k, d := range h.GetRoute() {
		version, ok := c.version(v, fmt.Sprintf("%s.route[%d].destination", at, k), m, d.GetDestination())
		if !ok {
			continue
		}
		w := uint32(max(d.GetWeight(), 0))
		if len(h.GetRoute()) == 1 {
			w = 100 // a single destination takes all traffic, whatever its weight
		}
		if i := slices.IndexFunc(r.Split, func(x registry.Weighted) bool { return x.Version == version }); i >= 0 {
			// Two destinations of one version are one share; a sum past uint32 is kept at its
			// maximum, which validation then rejects with the others' total.
			r.Split[i].Weight = uint32(min(uint64(r.Split[i].Weight)+uint64(w), math.MaxUint32))
			continue
		}
		r.Split = append(r.Split, registry.Weighted{Version: version, Weight: w})
	}
	// A destination of weight 0 receives nothing: leave it out unless nothing else is left,
	// which validation then reports.
	if slices.ContainsFunc(r.Split, func(x registry.Weighted) bool { return x.Weight > 0 }) {
		r.Split = slices.DeleteFunc(r.Split, func(x registry.Weighted) bool { return x.Weight == 0 })
	}
	r.Mirror = c.mirror(v, m, at, h)
	if t := h.GetTimeout(); t != nil {
		r.Timeout = goDuration(t)
	}
	if rt := h.GetRetries(); rt != nil {
		r.Retries = &registry.Retries{Attempts: uint32(max(rt.GetAttempts(), 0)), RetryOn: rt.GetRetryOn()}
		if p := rt.GetPerTryTimeout(); p != nil {
			r.Retries.PerTryTimeout = goDuration(p)
		}
	}
	r.Fault = fault(v, at, h.GetFault())
	r.RequestHeaders = headerOps(h.GetHeaders().GetRequest())
	r.ResponseHeaders = headerOps(h.GetHeaders().GetResponse())
	return r
}

// version resolves a destination of model m to one of its registered versions: the subset
// through the model's DestinationRule, else the subset's name; no subset is the default
// version.
func (c *converter) version(v *verdict, at string, m registry.Model, d *networkingv1alpha3.Destination) (string, bool) {
	if d == nil {
		v.reject("%s: missing", at)
		return "", false
	}
	if d.GetHost() != m.Name {
		if _, other := c.reg.Model(d.GetHost()); other {
			v.reject("%s.host: %q is another model; a route for model %q goes to its own versions", at, d.GetHost(), m.Name)
		} else {
			v.reject("%s.host: %q is not model %q", at, d.GetHost(), m.Name)
		}
		return "", false
	}
	if d.GetPort() != nil {
		v.reject("%s.port: not supported: the gateway knows each replica's port", at)
	}
	subset := d.GetSubset()
	if subset == "" {
		return m.DefaultVersion, true
	}
	version := subset
	switch dr := c.subsets[m.Name]; {
	case dr != nil && !dr.accepted:
		v.reject("%s.subset: %q: DestinationRule %s for model %q is rejected", at, subset, dr.owner, m.Name)
		return "", false
	case dr != nil:
		var ok bool
		if version, ok = dr.versions[subset]; !ok {
			v.reject("%s.subset: %q is not a subset of DestinationRule %s", at, subset, dr.owner)
			return "", false
		}
	}
	if _, ok := m.Version(version); !ok {
		v.reject("%s.subset: %q: version %q of model %q is not registered", at, subset, version, m.Name)
		return "", false
	}
	return version, true
}

// mirror converts mirror (with mirrorPercentage, or the deprecated mirrorPercent) or the
// single entry of mirrors. Istio mirrors everything when no percentage is given.
func (c *converter) mirror(v *verdict, m registry.Model, at string, h *networkingv1alpha3.HTTPRoute) *registry.Mirror {
	var d *networkingv1alpha3.Destination
	percent := 100.0
	switch {
	case h.GetMirror() != nil:
		d, at = h.GetMirror(), at+".mirror"
		//lint:ignore SA1019 the deprecated mirrorPercent, which Istio still accepts
		legacy := h.GetMirrorPercent()
		if p := h.GetMirrorPercentage(); p != nil {
			percent = p.GetValue()
		} else if legacy != nil {
			percent = float64(legacy.GetValue())
		}
	case len(h.GetMirrors()) == 1:
		d, at = h.GetMirrors()[0].GetDestination(), at+".mirrors[0].destination"
		if p := h.GetMirrors()[0].GetPercentage(); p != nil {
			percent = p.GetValue()
		}
	default:
		return nil
	}
	version, ok := c.version(v, at, m, d)
	switch {
	case !ok:
		return nil
	case percent == 0:
		v.warn("%s: percentage 0 mirrors nothing", at)
		return nil
	}
	return &registry.Mirror{Version: version, Percent: percent}
}

// conditions converts http[].match[]: the route applies when any entry holds.
func conditions(v *verdict, at string, matches []*networkingv1alpha3.HTTPMatchRequest) []registry.Condition {
	var out []registry.Condition
	everything := false
	for j, m := range matches {
		p := fmt.Sprintf("%s.match[%d]", at, j)
		var c registry.Condition
		for _, name := range slices.Sorted(maps.Keys(m.GetHeaders())) {
			switch name {
			case "uri", "scheme", "method", "authority":
				v.warn("%s.headers.%s is ignored, as Istio ignores it", p, name)
				continue
			}
			if s, ok := stringMatch(v, p+".headers."+name, m.GetHeaders()[name]); ok {
				if c.Headers == nil {
					c.Headers = map[string]registry.StringMatch{}
				}
				c.Headers[name] = s
			}
		}
		if m.GetUri() != nil {
			if s, ok := stringMatch(v, p+".uri", m.GetUri()); ok {
				c.URI = &s
			}
		}
		everything = everything || c.Headers == nil && c.URI == nil
		out = append(out, c)
	}
	if everything {
		return nil // one alternative without conditions holds for every request
	}
	return out
}

func stringMatch(v *verdict, at string, s *networkingv1alpha3.StringMatch) (registry.StringMatch, bool) {
	var out registry.StringMatch
	switch t := s.GetMatchType().(type) {
	case *networkingv1alpha3.StringMatch_Exact:
		out.Exact = t.Exact
	case *networkingv1alpha3.StringMatch_Prefix:
		out.Prefix = t.Prefix
	case *networkingv1alpha3.StringMatch_Regex:
		out.Regex = t.Regex
	default:
		v.reject("%s: a match on presence alone is not supported; give exact, prefix or regex", at)
		return out, false
	}
	if out == (registry.StringMatch{}) {
		v.reject("%s: an empty value is not supported", at)
		return out, false
	}
	return out, true
}

// fault converts a fixed delay and an HTTP abort. Istio injects a fault into no request
// when its percentage is absent, so such a fault is left out, with a warning.
func fault(v *verdict, at string, f *networkingv1alpha3.HTTPFaultInjection) *registry.Fault {
	if f == nil {
		return nil
	}
	var out registry.Fault
	kept := false
	if d := f.GetDelay(); d.GetFixedDelay() != nil {
		percent := float64(d.GetPercent()) //lint:ignore SA1019 the deprecated integer form Istio still accepts
		if p := d.GetPercentage(); p != nil {
			percent = p.GetValue()
		}
		if percent == 0 {
			v.warn("%s.fault.delay: no percentage: Istio delays no request", at)
		} else {
			out.DelayPercent, out.Delay, kept = percent, goDuration(d.GetFixedDelay()), true
		}
	}
	if s, ok := f.GetAbort().GetErrorType().(*networkingv1alpha3.HTTPFaultInjection_Abort_HttpStatus); ok {
		if percent := f.GetAbort().GetPercentage().GetValue(); percent == 0 {
			v.warn("%s.fault.abort: no percentage: Istio aborts no request", at)
		} else {
			out.AbortPercent, out.AbortStatus, kept = percent, uint32(max(s.HttpStatus, 0)), true
		}
	}
	if !kept {
		return nil
	}
	return &out
}

func headerOps(h *networkingv1alpha3.Headers_HeaderOperations) *registry.HeaderOps {
	if len(h.GetSet()) == 0 && len(h.GetAdd()) == 0 && len(h.GetRemove()) == 0 {
		return nil
	}
	return &registry.HeaderOps{Set: maps.Clone(h.GetSet()), Add: maps.Clone(h.GetAdd()), Remove: slices.Clone(h.GetRemove())}
}

// goDuration renders a protobuf duration as the Go duration string the registry takes.
func goDuration(d *durationpb.Duration) string { return d.AsDuration().String() }
