package istio

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/modelmesh/mesh/internal/registry"
)

const testRegistry = `
models:
  - name: iris
    defaultVersion: "1"
    versions:
      - {version: "1", storageUri: "file:///m/iris/1"}
      - {version: "2", storageUri: "file:///m/iris/2"}
      - {version: "3", storageUri: "file:///m/iris/3"}
    traffic: [{split: [{version: "1", weight: 100}]}]
  - name: digits
    versions: [{version: "1", storageUri: "file:///m/digits/1"}]
`

func testReg(t testing.TB) *registry.Registry {
	t.Helper()
	reg, err := registry.Parse([]byte(testRegistry))
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// convert decodes YAML documents and converts them against the test registry.
func convert(t *testing.T, docs string) Result {
	t.Helper()
	vss, drs, err := Decode([]byte(docs))
	if err != nil {
		t.Fatal(err)
	}
	return Convert(vss, drs, testReg(t))
}

// vs is a VirtualService named name in namespace models for the given hosts and http routes
// (YAML indented for the list under http).
func vs(name, hosts, http string) string {
	return `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ` + name + `, namespace: models}
spec:
  hosts: ` + hosts + `
  http:
` + http + "---\n"
}

// want is the expected verdict on one object: reasons and warnings are substrings that
// must each appear in some reason or warning.
type want struct {
	obj      string // "Kind namespace/name"
	state    State
	reasons  []string
	warnings []string
}

func checkStatuses(t *testing.T, got []Status, wants []want) {
	t.Helper()
	if len(got) != len(wants) {
		t.Errorf("%d statuses, want %d: %+v", len(got), len(wants), got)
	}
	byObj := map[string]Status{}
	for _, st := range got {
		byObj[st.Kind+" "+st.Namespace+"/"+st.Name] = st
	}
	for _, w := range wants {
		st, ok := byObj[w.obj]
		if !ok {
			t.Errorf("no status for %s", w.obj)
			continue
		}
		if st.State != w.state {
			t.Errorf("%s is %s, want %s; reasons %q", w.obj, st.State, w.state, st.Reasons)
		}
		for _, s := range w.reasons {
			if !containsSub(st.Reasons, s) {
				t.Errorf("%s: no reason mentions %q; reasons %q", w.obj, s, st.Reasons)
			}
		}
		for _, s := range w.warnings {
			if !containsSub(st.Warnings, s) {
				t.Errorf("%s: no warning mentions %q; warnings %q", w.obj, s, st.Warnings)
			}
		}
		if len(w.reasons) == 0 && len(st.Reasons) > 0 {
			t.Errorf("%s: unexpected reasons %q", w.obj, st.Reasons)
		}
		if len(w.warnings) == 0 && len(st.Warnings) > 0 {
			t.Errorf("%s: unexpected warnings %q", w.obj, st.Warnings)
		}
	}
}

func containsSub(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

const irisSubsets = `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: iris, namespace: models}
spec:
  host: iris
  exportTo: ["."] # Istio's visibility: nothing to the mesh
  subsets:
    - {name: stable, labels: {version: "1"}}
    - {name: canary, labels: {version: "2"}}
---
`

func TestConvert(t *testing.T) {
	t.Parallel()
	const src = "VirtualService models/iris-canary "
	tests := []struct {
		name      string
		give      string
		wantRules map[string][]registry.Rule
		want      []want
	}{
		{
			name: "DestinationRule subsets name the versions",
			give: irisSubsets + vs("iris-canary", "[iris]", `
    - match: [{headers: {x-canary: {exact: "yes"}}}]
      route: [{destination: {host: iris, subset: canary}}]
    - route:
        - {destination: {host: iris, subset: stable}, weight: 90}
        - {destination: {host: iris, subset: canary}, weight: 10}
`),
			wantRules: map[string][]registry.Rule{"iris": {
				{Source: src + "http[0]", When: []registry.Condition{{Headers: map[string]registry.StringMatch{"x-canary": {Exact: "yes"}}}},
					Split: []registry.Weighted{{Version: "2", Weight: 100}}},
				{Source: src + "http[1]", Split: []registry.Weighted{{Version: "1", Weight: 90}, {Version: "2", Weight: 10}}},
			}},
			want: []want{
				{obj: "DestinationRule models/iris", state: Accepted},
				{obj: "VirtualService models/iris-canary", state: Accepted, warnings: []string{`replaces the 1 traffic rules of model "iris"`}},
			},
		},
		{
			name: "without a DestinationRule the subset is the version, no subset the default version",
			give: vs("iris-canary", "[iris]", `
    - route:
        - {destination: {host: iris}, weight: 3}
        - {destination: {host: iris, subset: "3"}, weight: 1}
`),
			wantRules: map[string][]registry.Rule{"iris": {
				{Source: src + "http[0]", Split: []registry.Weighted{{Version: "1", Weight: 3}, {Version: "3", Weight: 1}}},
			}},
			want: []want{{obj: "VirtualService models/iris-canary", state: Accepted, warnings: []string{"replaces"}}},
		},
		{
			name: "a single destination takes everything; zero weights are left out and one version's shares add up",
			give: vs("iris-canary", "[iris]", `
    - match: [{uri: {prefix: /v2/models/iris/versions/2}}]
      route: [{destination: {host: iris, subset: "2"}, weight: 7}]
    - route:
        - {destination: {host: iris, subset: "1"}, weight: 50}
        - {destination: {host: iris, subset: "2"}, weight: 0}
        - {destination: {host: iris, subset: "1"}, weight: 25}
        - {destination: {host: iris, subset: "3"}, weight: 25}
`),
			wantRules: map[string][]registry.Rule{"iris": {
				{Source: src + "http[0]", When: []registry.Condition{{URI: &registry.StringMatch{Prefix: "/v2/models/iris/versions/2"}}},
					Split: []registry.Weighted{{Version: "2", Weight: 100}}},
				{Source: src + "http[1]", Split: []registry.Weighted{{Version: "1", Weight: 75}, {Version: "3", Weight: 25}}},
			}},
			want: []want{{obj: "VirtualService models/iris-canary", state: Accepted, warnings: []string{"replaces"}}},
		},
		{
			name: "every supported field",
			give: vs("iris-canary", "[iris]", `
    - name: tenants
      match:
        - name: acme
          headers:
            x-tenant: {exact: acme}
            x-user: {prefix: "eng-"}
          uri: {regex: "/v2/models/iris/.*"}
        - headers: {x-tenant: {regex: "beta-[0-9]+"}}
        - uri: {exact: /v2/models/iris/infer}
      route: [{destination: {host: iris, subset: "2"}}]
      timeout: 2.5s
      retries: {attempts: 3, perTryTimeout: 0.5s, retryOn: "5xx,reset"}
      fault:
        delay: {fixedDelay: 0.1s, percentage: {value: 10}}
        abort: {httpStatus: 503, percentage: {value: 0.5}}
      headers:
        request: {set: {x-team: ml}, add: {x-trace: "1"}, remove: [x-debug]}
        response: {set: {x-served-by: mesh}}
      mirror: {host: iris, subset: "3"}
      mirrorPercentage: {value: 12.5}
    - route: [{destination: {host: iris}}]
      mirrors: [{destination: {host: iris, subset: "2"}}]
`),
			wantRules: map[string][]registry.Rule{"iris": {
				{
					Source: src + "http[0]",
					When: []registry.Condition{
						{Headers: map[string]registry.StringMatch{"x-tenant": {Exact: "acme"}, "x-user": {Prefix: "eng-"}}, URI: &registry.StringMatch{Regex: "/v2/models/iris/.*"}},
						{Headers: map[string]registry.StringMatch{"x-tenant": {Regex: "beta-[0-9]+"}}},
						{URI: &registry.StringMatch{Exact: "/v2/models/iris/infer"}},
					},
					Split:           []registry.Weighted{{Version: "2", Weight: 100}},
					Mirror:          &registry.Mirror{Version: "3", Percent: 12.5},
					Timeout:         "2.5s",
					Retries:         &registry.Retries{Attempts: 3, PerTryTimeout: "500ms", RetryOn: "5xx,reset"},
					Fault:           &registry.Fault{DelayPercent: 10, Delay: "100ms", AbortPercent: 0.5, AbortStatus: 503},
					RequestHeaders:  &registry.HeaderOps{Set: map[string]string{"x-team": "ml"}, Add: map[string]string{"x-trace": "1"}, Remove: []string{"x-debug"}},
					ResponseHeaders: &registry.HeaderOps{Set: map[string]string{"x-served-by": "mesh"}},
				},
				{Source: src + "http[1]", Split: []registry.Weighted{{Version: "1", Weight: 100}}, Mirror: &registry.Mirror{Version: "2", Percent: 100}},
			}},
			want: []want{{obj: "VirtualService models/iris-canary", state: Accepted, warnings: []string{"replaces"}}},
		},
		{
			name: "mirror without a percentage mirrors everything; the deprecated mirrorPercent counts",
			give: vs("iris-canary", "[iris]", `
    - match: [{headers: {x-a: {exact: "1"}}}]
      route: [{destination: {host: iris}}]
      mirror: {host: iris, subset: "2"}
    - route: [{destination: {host: iris}}]
      mirror: {host: iris, subset: "3"}
      mirrorPercent: 20
`),
			wantRules: map[string][]registry.Rule{"iris": {
				{Source: src + "http[0]", When: []registry.Condition{{Headers: map[string]registry.StringMatch{"x-a": {Exact: "1"}}}},
					Split: []registry.Weighted{{Version: "1", Weight: 100}}, Mirror: &registry.Mirror{Version: "2", Percent: 100}},
				{Source: src + "http[1]", Split: []registry.Weighted{{Version: "1", Weight: 100}}, Mirror: &registry.Mirror{Version: "3", Percent: 20}},
			}},
			want: []want{{obj: "VirtualService models/iris-canary", state: Accepted, warnings: []string{"replaces"}}},
		},
		{
			name: "a match alternative without conditions matches everything; informational fields warn",
			give: vs("iris-canary", "[digits]", `
    - match: [{headers: {x-a: {exact: "1"}}}, {name: all, statPrefix: digits}]
      route: [{destination: {host: digits}}]
      fault: {delay: {fixedDelay: 1s}}
      mirror: {host: digits}
      mirrorPercentage: {value: 0}
      retries: {attempts: 1, backoff: 1s}
`),
			wantRules: map[string][]registry.Rule{"digits": {
				{Source: src + "http[0]", Split: []registry.Weighted{{Version: "1", Weight: 100}}, Retries: &registry.Retries{Attempts: 1}},
			}},
			want: []want{{obj: "VirtualService models/iris-canary", state: Accepted, warnings: []string{
				"http[0].match[1].statPrefix is ignored",
				"http[0].fault.delay: no percentage",
				"http[0].mirror: percentage 0 mirrors nothing",
				"http[0].retries: retryRemoteLocalities, retryIgnorePreviousHosts and backoff are ignored",
			}}},
		},
		{
			name: "requests no route matches go to the default version, unlike Istio: a warning says so",
			give: vs("iris-canary", "[digits]", `
    - match: [{headers: {x-a: {exact: "1"}}}]
      route: [{destination: {host: digits}}]
`),
			wantRules: map[string][]registry.Rule{"digits": {
				{Source: src + "http[0]", When: []registry.Condition{{Headers: map[string]registry.StringMatch{"x-a": {Exact: "1"}}}},
					Split: []registry.Weighted{{Version: "1", Weight: 100}}},
			}},
			want: []want{{obj: "VirtualService models/iris-canary", state: Accepted, warnings: []string{"http[0] has a match: requests that match no http route go to the model's default version"}}},
		},
		{
			name:      "unknown host",
			give:      vs("iris-canary", "[fraud]", "    - route: [{destination: {host: fraud}}]\n"),
			wantRules: map[string][]registry.Rule{},
			want:      []want{{obj: "VirtualService models/iris-canary", state: Rejected, reasons: []string{`hosts[0]: "fraud" is not a registered model`}}},
		},
		{
			name:      "unregistered version",
			give:      vs("iris-canary", "[iris]", "    - route: [{destination: {host: iris, subset: \"9\"}}]\n"),
			wantRules: map[string][]registry.Rule{},
			want: []want{{obj: "VirtualService models/iris-canary", state: Rejected, warnings: []string{"replaces"},
				reasons: []string{`http[0].route[0].destination.subset: "9": version "9" of model "iris" is not registered`}}},
		},
		{
			name:      "a subset the DestinationRule does not define",
			give:      irisSubsets + vs("iris-canary", "[iris]", "    - route: [{destination: {host: iris, subset: \"2\"}}]\n"),
			wantRules: map[string][]registry.Rule{},
			want: []want{
				{obj: "DestinationRule models/iris", state: Accepted},
				{obj: "VirtualService models/iris-canary", state: Rejected, warnings: []string{"replaces"},
					reasons: []string{`http[0].route[0].destination.subset: "2" is not a subset of DestinationRule models/iris`}},
			},
		},
		{
			name: "a subset of a rejected DestinationRule",
			give: `
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: iris, namespace: models}
spec:
  host: iris
  subsets: [{name: canary, labels: {version: "2", track: canary}}]
---
` + vs("iris-canary", "[iris]", "    - route: [{destination: {host: iris, subset: canary}}]\n"),
			wantRules: map[string][]registry.Rule{},
			want: []want{
				{obj: "DestinationRule models/iris", state: Rejected, reasons: []string{"subsets[0].labels.track: only the version label"}},
				{obj: "VirtualService models/iris-canary", state: Rejected, warnings: []string{"replaces"},
					reasons: []string{`http[0].route[0].destination.subset: "canary": DestinationRule models/iris for model "iris" is rejected`}},
			},
		},
		{
			name: "the older of two DestinationRules for a model wins",
			give: `
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: b-new, namespace: models, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {host: iris, subsets: [{name: canary, labels: {version: "3"}}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: z-old, namespace: models, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  host: iris
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets: [{name: canary, labels: {version: "2"}}, {name: "9"}]
---
` + vs("iris-canary", "[iris]", "    - route: [{destination: {host: iris, subset: canary}}]\n"),
			wantRules: map[string][]registry.Rule{"iris": {{Source: src + "http[0]", Split: []registry.Weighted{{Version: "2", Weight: 100}}}}},
			want: []want{
				{obj: "DestinationRule models/z-old", state: Accepted, warnings: []string{"trafficPolicy is ignored", `subsets[1]: version "9" of model "iris" is not registered`}},
				{obj: "DestinationRule models/b-new", state: Rejected, reasons: []string{`model "iris" already has its subsets defined by DestinationRule models/z-old, which is older`}},
				{obj: "VirtualService models/iris-canary", state: Accepted, warnings: []string{"replaces"}},
			},
		},
		{
			name: "the older of two VirtualServices for a model wins, ties by namespace and name",
			give: `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-new, namespace: models, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {hosts: [iris], http: [{route: [{destination: {host: iris, subset: "2"}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: z-old, namespace: models, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {hosts: [iris], http: [{route: [{destination: {host: iris, subset: "3"}}]}]}
---
` + vs("c", "[digits]", "    - route: [{destination: {host: digits}}]\n") +
				vs("b", "[digits]", "    - route: [{destination: {host: digits}}]\n") +
				vs("a", "[iris, digits]", "    - route: [{destination: {host: iris}}]\n"),
			wantRules: map[string][]registry.Rule{
				"digits": {{Source: "VirtualService models/b http[0]", Split: []registry.Weighted{{Version: "1", Weight: 100}}}},
				"iris":   {{Source: "VirtualService models/z-old http[0]", Split: []registry.Weighted{{Version: "3", Weight: 100}}}},
			},
			want: []want{
				{obj: "VirtualService models/z-old", state: Accepted, warnings: []string{"replaces"}},
				{obj: "VirtualService models/a-new", state: Rejected, warnings: []string{"replaces"},
					reasons: []string{`hosts[0]: model "iris" is already routed by VirtualService models/z-old, which is older`}},
				// a is older than b (all three have no creation time) but invalid: it does not
				// keep b from winning digits.
				{obj: "VirtualService models/a", state: Rejected, warnings: []string{"replaces"},
					reasons: []string{`http[0].route[0].destination.host: "iris" is another model; a route for model "digits" goes to its own versions`}},
				{obj: "VirtualService models/b", state: Accepted},
				{obj: "VirtualService models/c", state: Rejected, reasons: []string{`hosts[0]: model "digits" is already routed by VirtualService models/b`}},
			},
		},
		{
			name: "rules the registry refuses reject the VirtualService with the registry's reason",
			give: vs("iris-canary", "[iris]", `
    - route:
        - {destination: {host: iris, subset: "1"}, weight: 0}
        - {destination: {host: iris, subset: "2"}, weight: 0}
      mirror: {host: iris}
      mirrorPercentage: {value: 150}
`) + vs("digits", "[digits]", "    - route: [{destination: {host: digits}}]\n"),
			wantRules: map[string][]registry.Rule{"digits": {{Source: "VirtualService models/digits http[0]", Split: []registry.Weighted{{Version: "1", Weight: 100}}}}},
			want: []want{
				{obj: "VirtualService models/iris-canary", state: Rejected, warnings: []string{"replaces"},
					reasons: []string{"weights add up to 0", "mirror needs a registered version and a percent in (0, 100]"}},
				{obj: "VirtualService models/digits", state: Accepted},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := convert(t, tt.give)
			if diff := cmp.Diff(tt.wantRules, got.Rules); diff != "" {
				t.Errorf("rules (-want +got):\n%s", diff)
			}
			checkStatuses(t, got.Statuses, tt.want)
		})
	}
}

func TestConvertRejectsWhatTheMeshCannotHonour(t *testing.T) {
	t.Parallel()
	const route = "      route: [{destination: {host: digits}}]\n"
	tests := []struct {
		give string // the http list, or spec fields then the http list
		path string // the field path the reason must name
	}{
		{give: "    - match: [{queryParams: {a: {exact: b}}}]\n" + route, path: "http[0].match[0].queryParams"},
		{give: "    - match: [{method: {exact: GET}}]\n" + route, path: "http[0].match[0].method"},
		{give: "    - match: [{authority: {exact: a}}]\n" + route, path: "http[0].match[0].authority"},
		{give: "    - match: [{scheme: {exact: https}}]\n" + route, path: "http[0].match[0].scheme"},
		{give: "    - match: [{port: 8080}]\n" + route, path: "http[0].match[0].port"},
		{give: "    - match: [{sourceLabels: {app: a}}]\n" + route, path: "http[0].match[0].sourceLabels"},
		{give: "    - match: [{sourceNamespace: ns}]\n" + route, path: "http[0].match[0].sourceNamespace"},
		{give: "    - match: [{gateways: [mesh]}]\n" + route, path: "http[0].match[0].gateways"},
		{give: "    - match: [{withoutHeaders: {x-a: {exact: b}}}]\n" + route, path: "http[0].match[0].withoutHeaders"},
		{give: "    - match: [{ignoreUriCase: true}]\n" + route, path: "http[0].match[0].ignoreUriCase"},
		{give: "    - match: [{headers: {x-a: {}}}]\n" + route, path: "http[0].match[0].headers.x-a: a match on presence"},
		{give: "    - match: [{uri: {}}]\n" + route, path: "http[0].match[0].uri: a match on presence"},
		{give: "    - match: [{headers: {x-a: {exact: \"\"}}}]\n" + route, path: "http[0].match[0].headers.x-a: an empty value"},
		{give: "    - rewrite: {uri: /}\n" + route, path: "http[0].rewrite"},
		{give: "    - redirect: {uri: /}\n", path: "http[0].redirect"},
		{give: "    - directResponse: {status: 503}\n", path: "http[0].directResponse"},
		{give: "    - delegate: {name: other}\n", path: "http[0].delegate"},
		{give: "    - redirect: {uri: /}\n", path: "http[0].route: empty"},
		{give: "    - corsPolicy: {allowOrigins: [{exact: a}]}\n" + route, path: "http[0].corsPolicy"},
		{give: "    - route: [{destination: {host: digits}, headers: {request: {set: {a: b}}}}]\n", path: "http[0].route[0].headers"},
		{give: "    - route: [{destination: {host: digits, port: {number: 80}}}]\n", path: "http[0].route[0].destination.port"},
		{give: "    - route: [{destination: {host: iris}}]\n", path: `http[0].route[0].destination.host: "iris" is another model`},
		{give: "    - route: [{destination: {host: digits.models.svc.cluster.local}}]\n", path: `http[0].route[0].destination.host: "digits.models.svc.cluster.local" is not model "digits"`},
		{give: "    - route: [{destination: {host: digits}, weight: -1}, {destination: {host: digits}, weight: 2}]\n", path: "http[0].route[0].weight: -1 is negative"},
		{give: "    - mirror: {host: iris}\n" + route, path: "http[0].mirror.host"},
		{give: "    - mirrors: [{destination: {host: digits}}, {destination: {host: digits}}]\n" + route, path: "http[0].mirrors: 2 mirrors"},
		{give: "    - mirror: {host: digits}\n      mirrors: [{destination: {host: digits}}]\n" + route, path: "http[0].mirrors: set together with mirror"},
		{give: "    - fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1}}}\n" + route, path: "http[0].fault.abort.grpcStatus"},
		{give: "    - fault: {abort: {http2Error: x, percentage: {value: 1}}}\n" + route, path: "http[0].fault.abort: only httpStatus"},
		{give: "    - fault: {delay: {exponentialDelay: 1s, percentage: {value: 1}}}\n" + route, path: "http[0].fault.delay: only fixedDelay"},
		{give: "    - retries: {attempts: -1}\n" + route, path: "http[0].retries.attempts"},
		{give: "    []\n", path: "http: empty"},
		{give: "  gateways: [istio-system/ingress]\n  http:\n" + route[:4] + "- " + route[6:], path: "gateways"},
		{give: "  tcp: [{route: [{destination: {host: digits}}]}]\n  http:\n" + route[:4] + "- " + route[6:], path: "tcp"},
		{give: "  tls: [{match: [{sniHosts: [digits]}], route: [{destination: {host: digits}}]}]\n  http:\n" + route[:4] + "- " + route[6:], path: "tls"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			http := tt.give
			doc := vs("v", "[digits]", http)
			if !strings.HasPrefix(http, "    ") { // spec fields first: the http key comes with them
				doc = strings.Replace(vs("v", "[digits]", ""), "  http:\n", http, 1)
			}
			got := convert(t, doc)
			if len(got.Rules) != 0 {
				t.Errorf("a rejected VirtualService gave rules: %v", got.Rules)
			}
			checkStatuses(t, got.Statuses, []want{{obj: "VirtualService models/v", state: Rejected, reasons: []string{tt.path}}})
		})
	}
}

func TestConvertIgnoresNilAndEmpty(t *testing.T) {
	t.Parallel()
	res := Convert(nil, nil, testReg(t))
	if len(res.Rules) != 0 || len(res.Statuses) != 0 {
		t.Fatalf("nothing converted to %+v", res)
	}
	res = Convert([]*networkingv1.VirtualService{nil}, []*networkingv1.DestinationRule{nil}, testReg(t))
	if len(res.Rules) != 0 || len(res.Statuses) != 0 {
		t.Fatalf("nil objects converted to %+v", res)
	}
}

func TestOverlay(t *testing.T) {
	t.Parallel()
	reg := testReg(t)
	res := convert(t, vs("iris-canary", "[iris]", "    - route: [{destination: {host: iris, subset: \"2\"}}]\n"))
	got := Overlay(reg, res)
	iris, _ := got.Model("iris")
	if diff := cmp.Diff(res.Rules["iris"], iris.Traffic); diff != "" {
		t.Errorf("iris traffic (-want +got):\n%s", diff)
	}
	if digits, _ := got.Model("digits"); digits.Traffic != nil {
		t.Errorf("digits, routed by no VirtualService, got rules %v", digits.Traffic)
	}
	if before, _ := reg.Model("iris"); before.Traffic[0].Split[0].Version != "1" {
		t.Errorf("the file registry changed: %v", before.Traffic)
	}
	// What the control plane publishes must read back as a valid registry (ext_proc does).
	if _, err := registry.Decode(got.Encode()); err != nil {
		t.Fatalf("overlaid registry does not decode: %v", err)
	}
	if got.Digest() == reg.Digest() {
		t.Error("the overlay did not change the registry's digest, so it would not be published")
	}
}

// TestConvertCanaryExamples: every step of docs/canary.md is accepted as it stands.
func TestConvertCanaryExamples(t *testing.T) {
	t.Parallel()
	reg, err := registry.Parse([]byte(`
models:
  - name: breast-cancer
    versions: [{version: "1", storageUri: "file:///m/bc/1"}, {version: "2", storageUri: "file:///m/bc/2"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("examples/canary/0[1-9]-*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	dr, err := os.ReadFile("examples/canary/00-destinationrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		vs, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		vss, drs, err := Decode([]byte(string(dr) + "---\n" + string(vs)))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		res := Convert(vss, drs, reg)
		checkStatuses(t, res.Statuses, []want{
			{obj: "DestinationRule modelmesh/breast-cancer", state: Accepted},
			{obj: "VirtualService modelmesh/breast-cancer", state: Accepted},
		})
		if len(res.Rules["breast-cancer"]) == 0 {
			t.Errorf("%s: no rules", f)
		}
	}
}

// TestReasonsListsEachProblem: a registry refusal with several problems becomes one reason
// per problem, without the "invalid registry" prefix.
func TestReasonsListsEachProblem(t *testing.T) {
	_, err := registry.Parse([]byte("models:\n  - name: a\n    versions: []\n  - name: -b\n    versions: []\n"))
	if err == nil {
		t.Fatal("a registry with two bad models parsed")
	}
	got := reasons(err)
	if len(got) < 2 {
		t.Fatalf("reasons %q of %v, want one per problem", got, err)
	}
	for _, r := range got {
		if strings.Contains(r, "\n") || strings.Contains(r, registry.ErrInvalid.Error()) {
			t.Errorf("reason %q", r)
		}
	}
	if got := reasons(errors.New("one")); len(got) != 1 || got[0] != "one" {
		t.Errorf("a plain error gives reasons %q", got)
	}
}
