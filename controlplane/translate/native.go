package translate

import (
	"maps"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/modelmesh/mesh/internal/wire"
)

// Native routes: twins of a model's hot routes that Envoy chooses from the request as the
// client sent it, for requests whose model the wasm filter would find without doubt and
// without changing anything but the model headers. On such a route the filter and ext_proc
// are left out of the request's filter chain (FilterConfig.disabled, which Envoy applies
// when it creates the chain from the first route it picks), so the hot path costs what
// Envoy's own routing does. Every other request takes the routes the filter's headers
// select, as before. A twin matches only what the filter would resolve to the same model
// and version (docs/wasm.md): the path is exactly /v2/models/NAME/infer (or
// .../versions/V/infer; the query string aside) and the client sent no id or version header
// at all; it adds the headers the filter would set. After the filter ran, x-model-id is
// set, so a twin never takes a request whose route is chosen again (it would not leave
// ext_proc out: FilterConfig.disabled acts only on the chain's first route).
//
// Requests naming the model in x-model-id are not matched natively: Envoy's header matcher
// takes a header sent several times as matching when any one value matches, where the
// filter refuses different values, and a route cannot tell one value from several.
//
// The filter's per-model counter does not see requests on native routes: their route stats,
// vhost.models.route.<model>.upstream_rq_total (the route's stat_prefix is the model name,
// shared by a model's twins), count them instead (docs/observability.md).
const v2ModelsPrefix = "/v2/models/"

// perRoute is the per-route filter configuration the routes share, built once per route
// configuration. The virtual host turns ext_proc off (extProcOff: every hot route takes the
// route its headers select); the routes to the cold path turn it back on (extProcOn), and
// native twins leave the wasm filter and ext_proc out of the chain (nativeOff). Set once on
// the virtual host rather than on each of thousands of hot routes, it costs Envoy nothing per
// route when it applies a route configuration.
type perRoute struct {
	extProcOff, extProcOn, nativeOff *anypb.Any
}

func newPerRoute() (perRoute, error) {
	var pr perRoute
	var err error
	for _, c := range []struct {
		to  **anypb.Any
		msg proto.Message
	}{
		{&pr.extProcOff, &extprocv3.ExtProcPerRoute{Override: &extprocv3.ExtProcPerRoute_Disabled{Disabled: true}}},
		{&pr.extProcOn, &extprocv3.ExtProcPerRoute{Override: &extprocv3.ExtProcPerRoute_Overrides{Overrides: &extprocv3.ExtProcOverrides{}}}},
		{&pr.nativeOff, &routev3.FilterConfig{Disabled: true}},
	} {
		if *c.to, err = anypb.New(c.msg); err != nil {
			return perRoute{}, err
		}
	}
	return pr, nil
}

// pathTwin is r, a hot route of model name (version: the version its match requires, ""
// for a rule's route), as a native twin: for the KServe v2 infer path of that model and
// version with no id or version header sent, with the model's route stats, and the wasm
// filter and ext_proc left out of the chain of requests that pick it first. It is nil when
// r has a path condition of its own (a rule's URI), which the exact infer path cannot also
// carry. r's other header conditions stay; its model and version headers become required
// absent, and are added for the worker.
func pathTwin(r *routev3.Route, name, version string, pr perRoute) *routev3.Route {
	if r.GetMatch().GetPrefix() != "/" {
		return nil
	}
	// The twin shares r's action and header changes, which no one changes after
	// translation (a deep copy of each twin was half the time of a translation).
	// TestNativeTwinKeepsItsRoutesFields checks that no field of r is left out.
	path := v2ModelsPrefix + name
	if version != "" {
		path += "/versions/" + version
	}
	t := &routev3.Route{
		Name:                    r.Name + "~p",
		Match:                   &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: path + "/infer"}},
		Action:                  r.Action,
		StatPrefix:              name,
		TypedPerFilterConfig:    maps.Clone(r.TypedPerFilterConfig),
		RequestHeadersToRemove:  r.RequestHeadersToRemove,
		ResponseHeadersToAdd:    r.ResponseHeadersToAdd,
		ResponseHeadersToRemove: r.ResponseHeadersToRemove,
	}
	if t.TypedPerFilterConfig == nil {
		t.TypedPerFilterConfig = map[string]*anypb.Any{}
	}
	t.TypedPerFilterConfig[wasmFilter] = pr.nativeOff
	t.TypedPerFilterConfig[extProcFilter] = pr.nativeOff
	headers := []*routev3.HeaderMatcher{absent(wire.HeaderModel), absent(wire.HeaderVModelID), absent(wire.HeaderMMModelID), absent(wire.HeaderVersion)}
	for _, h := range r.Match.GetHeaders() {
		if h.GetName() != wire.HeaderModel && h.GetName() != wire.HeaderVersion {
			headers = append(headers, h)
		}
	}
	t.Match.Headers = headers
	add := []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: wire.HeaderModel, Value: name},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
	if version != "" {
		add = append(add, versionHeader(version)...)
	}
	t.RequestHeadersToAdd = append(add, r.RequestHeadersToAdd...)
	return t
}
