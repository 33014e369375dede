package translate

import (
	"fmt"

	mutationrulesv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	headermutationv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/modelmesh/mesh/internal/wire"
)

// buildListener is the listener ListenerName: one HTTP connection manager (HTTP/1.1 and
// HTTP/2 on one port) reading its routes by RDS, with the filters strip (the internal
// headers), wasm (model id), fault, ext_proc (the cold path) and router, in that order.
// Native routes (native.go) leave wasm and ext_proc out of a request's filter chain.
func buildListener(cfg Config) (*listenerv3.Listener, error) {
	strip, err := stripInternalHeaders()
	if err != nil {
		return nil, err
	}
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
	extProc, err := extProcConfig(cfg)
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
			{Name: stripFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: strip}},
			{Name: wasmFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: wasm}},
			{Name: faultFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: fault}},
			{Name: extProcFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: extProc}},
			routerFilter(router),
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

// stripInternalHeaders is the header mutation filter that removes the headers only the mesh
// may set (wire.HeaderDestination and every wire.InternalHeaderPrefix header) from each
// client request, first of the gateway's filters: on native routes it is the only filter
// before the router that sees the request, and Envoy matches the prefix itself.
func stripInternalHeaders() (*anypb.Any, error) {
	return anypb.New(&headermutationv3.HeaderMutation{Mutations: &headermutationv3.Mutations{RequestMutations: []*mutationrulesv3.HeaderMutation{
		{Action: &mutationrulesv3.HeaderMutation_Remove{Remove: wire.HeaderDestination}},
		{Action: &mutationrulesv3.HeaderMutation_RemoveOnMatch_{RemoveOnMatch: &mutationrulesv3.HeaderMutation_RemoveOnMatch{
			KeyMatcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: wire.InternalHeaderPrefix}}}}},
	}}})
}

// extProcConfig is the ext_proc filter of the cold path, on the gateway listener and on the
// fallback listener alike.
func extProcConfig(cfg Config) (*anypb.Any, error) {
	return anypb.New(&extprocv3.ExternalProcessor{
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
}

// buildFallback is the internal listener FallbackListener, the second priority of every
// model cluster (clusters.go): a request none of whose ready replicas could take it (their
// worker died or hangs, and Envoy ejected them) arrives here through Envoy's user-space
// socket and takes the cold path, ext_proc then the router to the workers pool, where
// ext_proc routes it to another replica or loads the model elsewhere. The gateway listener
// already set the model headers, so there is no wasm filter here.
func buildFallback(cfg Config) (*listenerv3.Listener, error) {
	extProc, err := extProcConfig(cfg)
	if err != nil {
		return nil, err
	}
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: FallbackListener,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: FallbackListener,
			VirtualHosts: []*routev3.VirtualHost{{Name: FallbackListener, Domains: []string{"*"}, Routes: []*routev3.Route{{
				Name:  "cold",
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: WorkersCluster},
					Timeout:          durationpb.New(cfg.RouteTimeout),
				}},
			}}}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: extProcFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: extProc}},
			routerFilter(router),
		},
	})
	if err != nil {
		return nil, err
	}
	return &listenerv3.Listener{
		Name: FallbackListener,
		// No address: an internal listener is found by its name.
		ListenerSpecifier: &listenerv3.Listener_InternalListener{InternalListener: &listenerv3.Listener_InternalListenerConfig{}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}},
	}, nil
}

// internalAddress is the fallback listener's address in Envoy's user space.
func internalAddress() *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_EnvoyInternalAddress{EnvoyInternalAddress: &corev3.EnvoyInternalAddress{
		AddressNameSpecifier: &corev3.EnvoyInternalAddress_ServerListenerName{ServerListenerName: FallbackListener}}}}
}

// routerFilter is the router, last of both listeners' filters.
func routerFilter(router *anypb.Any) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}
}
