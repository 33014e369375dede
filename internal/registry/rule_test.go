package registry

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// rich uses every field of a rule.
const rich = `
models:
  - name: fraud
    versions:
      - {version: "1", storageUri: "file:///m/fraud/1"}
      - {version: "2", storageUri: "file:///m/fraud/2"}
    traffic:
      - source: VirtualService risk/fraud http[0]
        match: {x-tenant: acme}
        when:
          - headers: {x-canary: {prefix: "yes"}}
          - uri: {regex: "/v2/models/fraud/versions/[0-9]+/infer"}
            headers: {":method": {exact: POST}}
        split: [{version: "2", weight: 100}]
        timeout: 2.5s
        retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure"}
        fault: {delayPercent: 10, delay: 100ms, abortPercent: 0.5, abortStatus: 503}
        requestHeaders: {set: {x-route: canary}, add: {x-trace: "1"}, remove: [x-debug]}
        responseHeaders: {set: {cache-control: no-store}, remove: [server]}
      - when: [{uri: {prefix: /v2/models/fraud/}}]
        split: [{version: "1", weight: 1}]
        retries: {attempts: 0}
`

func TestParseRichRule(t *testing.T) {
	t.Parallel()
	r, err := Parse([]byte(rich))
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(r.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, back); diff != "" {
		t.Fatalf("decode(encode) differs: %s", diff)
	}
	want := Rule{
		Source: "VirtualService risk/fraud http[0]",
		Match:  map[string]string{"x-tenant": "acme"},
		When: []Condition{
			{Headers: map[string]StringMatch{"x-canary": {Prefix: "yes"}}},
			{URI: &StringMatch{Regex: "/v2/models/fraud/versions/[0-9]+/infer"}, Headers: map[string]StringMatch{":method": {Exact: "POST"}}},
		},
		Split:           []Weighted{{"2", 100}},
		Timeout:         "2.5s",
		Retries:         &Retries{Attempts: 3, PerTryTimeout: "500ms", RetryOn: "5xx,connect-failure"},
		Fault:           &Fault{DelayPercent: 10, Delay: "100ms", AbortPercent: 0.5, AbortStatus: 503},
		RequestHeaders:  &HeaderOps{Set: map[string]string{"x-route": "canary"}, Add: map[string]string{"x-trace": "1"}, Remove: []string{"x-debug"}},
		ResponseHeaders: &HeaderOps{Set: map[string]string{"cache-control": "no-store"}, Remove: []string{"server"}},
	}
	if diff := cmp.Diff(want, r.Models[0].Traffic[0]); diff != "" {
		t.Fatalf("rule (-want +got):\n%s", diff)
	}
}

func TestParseRejectsRules(t *testing.T) {
	t.Parallel()
	rule := func(body string) string {
		return "models:\n  - name: m\n    versions: [{version: \"1\", storageUri: \"file:///m/1\"}]\n" +
			"    traffic:\n      - split: [{version: \"1\", weight: 1}]\n" + body
	}
	tests := []struct {
		name, give, want string
	}{
		{"names the source", rule("        source: VirtualService ns/vs http[2]\n        timeout: 0s\n"),
			`model "m": traffic rule 0 (VirtualService ns/vs http[2]): timeout: 0s is below 1ms`},
		{"names the rule", rule("        timeout: soon\n"), `model "m": traffic rule 0: timeout: time: invalid duration`},
		{"weights past Envoy's limit", "models:\n  - name: m\n    versions: [{version: \"1\", storageUri: \"file:///m/1\"}, {version: \"2\", storageUri: \"file:///m/2\"}]\n" +
			"    traffic:\n      - split: [{version: \"1\", weight: 4294967295}, {version: \"2\", weight: 1}]\n",
			"weights add up to 4294967296, more than the 4294967295 Envoy accepts"},
		{"two patterns", rule("        when: [{headers: {x-a: {exact: a, prefix: b}}}]\n"), `when[0]: header "x-a": set exactly one of exact, prefix and regex`},
		{"no pattern", rule("        when: [{uri: {}}]\n"), "when[0]: uri: set exactly one"},
		{"bad regex", rule("        when: [{headers: {x-a: {regex: \"(\"}}}]\n"), `regex "(": error parsing regexp: missing closing )`},
		{"regex too big for Envoy", rule("        when: [{uri: {regex: \"[a-z0-9._-]{1,20}\"}}]\n"), "too complex for the gateway"},
		{"upper-case condition header", rule("        when: [{headers: {X-A: {exact: a}}}]\n"), `header name "X-A" must be lower-case`},
		{"empty condition header", rule("        when: [{headers: {\"\": {exact: a}}}]\n"), `header name "" must be lower-case and not empty`},
		{"header name with a space", rule("        match: {\"x a\": b}\n"), `match: header name "x a"`},
		{"internal header", rule("        match: {x-mesh-tier: gold}\n"), `match: header "x-mesh-tier" is internal to the mesh`},
		{"destination header", rule("        when: [{headers: {x-gateway-destination-endpoint: {prefix: \"10.\"}}}]\n"), `when[0]: header "x-gateway-destination-endpoint" is internal`},
		{"relative uri", rule("        when: [{uri: {prefix: v2/}}]\n"), `uri: "v2/" does not start with /`},
		{"relative exact uri", rule("        when: [{uri: {exact: v2}}]\n"), `uri: "v2" does not start with /`},
		{"negative timeout", rule("        timeout: -1s\n"), "timeout: -1s is below 1ms"},
		{"sub-millisecond timeout", rule("        timeout: 900us\n"), "below 1ms"},
		{"too many retries", rule("        retries: {attempts: 11}\n"), "retries: 11 attempts, at most 10"},
		{"bad per-try timeout", rule("        retries: {attempts: 1, perTryTimeout: 0s}\n"), "perTryTimeout: 0s is below 1ms"},
		{"unknown retry condition", rule("        retries: {attempts: 1, retryOn: \"5xx,503\"}\n"), `retryOn "503" is not one of Envoy's`},
		{"delay percent above 100", rule("        fault: {delayPercent: 101, delay: 1s}\n"), "percents must be within [0, 100]"},
		{"negative abort percent", rule("        fault: {abortPercent: -1, abortStatus: 503}\n"), "percents must be within [0, 100]"},
		{"delay without duration", rule("        fault: {delayPercent: 5}\n"), "delayPercent without a delay"},
		{"bad delay", rule("        fault: {delayPercent: 5, delay: 0s}\n"), "fault: delay: 0s is below 1ms"},
		{"abort status too low", rule("        fault: {abortPercent: 100, abortStatus: 199}\n"), "abortStatus 199 is not within 200..599"},
		{"abort status too high", rule("        fault: {abortPercent: 100, abortStatus: 600}\n"), "abortStatus 600"},
		{"abort without status", rule("        fault: {abortPercent: 100}\n"), "abortStatus 0"},
		{"empty fault", rule("        fault: {}\n"), "neither a delay nor an abort"},
		{"sets the model header", rule("        requestHeaders: {set: {x-model-id: other}}\n"), `requestHeaders: set: header "x-model-id" belongs to the mesh`},
		{"adds the version header", rule("        requestHeaders: {add: {x-model-version: \"2\"}}\n"), `requestHeaders: add: header "x-model-version"`},
		{"removes the destination", rule("        requestHeaders: {remove: [x-gateway-destination-endpoint]}\n"), `remove: header "x-gateway-destination-endpoint"`},
		{"sets host", rule("        requestHeaders: {set: {host: example.com}}\n"), `header "host"`},
		{"sets a pseudo-header", rule("        requestHeaders: {set: {\":path\": /x}}\n"), `header name ":path"`},
		{"removes a response pseudo-header", rule("        responseHeaders: {remove: [\":status\"]}\n"), `responseHeaders: remove: header name ":status"`},
		{"upper-case op header", rule("        responseHeaders: {set: {X-A: b}}\n"), `header name "X-A"`},
		{"value with a newline", rule("        responseHeaders: {add: {x-a: \"b\\r\\nx-b: c\"}}\n"), "value holds NUL, CR or LF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(tt.give))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

func TestRuleMatches(t *testing.T) {
	t.Parallel()
	const infer = "/v2/models/fraud/infer"
	tests := []struct {
		name    string
		rule    Rule
		path    string
		headers map[string]string
		want    bool
	}{
		{"no match at all", Rule{}, infer, nil, true},
		{"exact header", Rule{Match: map[string]string{"x-a": "1"}}, infer, map[string]string{"x-a": "1"}, true},
		{"exact header differs", Rule{Match: map[string]string{"x-a": "1"}}, infer, map[string]string{"x-a": "10"}, false},
		{"header prefix", when(Condition{Headers: map[string]StringMatch{"x-a": {Prefix: "can"}}}), infer, map[string]string{"x-a": "canary"}, true},
		{"header prefix differs", when(Condition{Headers: map[string]StringMatch{"x-a": {Prefix: "can"}}}), infer, map[string]string{"x-a": "ca"}, false},
		{"header regex matches the whole value", when(Condition{Headers: map[string]StringMatch{"x-a": {Regex: "b+"}}}), infer, map[string]string{"x-a": "bbb"}, true},
		{"header regex on part of the value", when(Condition{Headers: map[string]StringMatch{"x-a": {Regex: "b+"}}}), infer, map[string]string{"x-a": "abba"}, false},
		{"alternation is anchored as a whole", when(Condition{Headers: map[string]StringMatch{"x-a": {Regex: "a|b"}}}), infer, map[string]string{"x-a": "ab"}, false},
		{"missing header never matches", when(Condition{Headers: map[string]StringMatch{"x-a": {Regex: ".*"}}}), infer, nil, false},
		{"an empty header is present: .* holds, as in Envoy", when(Condition{Headers: map[string]StringMatch{"x-a": {Regex: ".*"}}}), infer, map[string]string{"x-a": ""}, true},
		{"exact empty value needs the header", Rule{Match: map[string]string{"x-a": ""}}, infer, nil, false},
		{"exact empty value", Rule{Match: map[string]string{"x-a": ""}}, infer, map[string]string{"x-a": ""}, true},
		{"uri exact", when(Condition{URI: &StringMatch{Exact: infer}}), infer, nil, true},
		{"uri exact differs", when(Condition{URI: &StringMatch{Exact: infer}}), infer + "/x", nil, false},
		{"uri prefix", when(Condition{URI: &StringMatch{Prefix: "/v2/models/"}}), infer, nil, true},
		{"uri regex", when(Condition{URI: &StringMatch{Regex: "/v2/models/[a-z]+/infer"}}), infer, nil, true},
		{"uri regex on part of the path", when(Condition{URI: &StringMatch{Regex: "/v2/models/[a-z]+"}}), infer, nil, false},
		{"uri and header both needed", when(Condition{URI: &StringMatch{Prefix: "/v2/"}, Headers: map[string]StringMatch{"x-a": {Exact: "1"}}}),
			infer, nil, false},
		{"any condition", when(Condition{Headers: map[string]StringMatch{"x-a": {Exact: "1"}}}, Condition{URI: &StringMatch{Prefix: "/v2/"}}),
			infer, nil, true},
		{"match and when are both needed", Rule{Match: map[string]string{"x-t": "acme"}, When: []Condition{{URI: &StringMatch{Prefix: "/v2/"}}}},
			infer, nil, false},
		{"empty condition holds", when(Condition{}), infer, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.rule.Matches(tt.path, MapLookup(tt.headers)); got != tt.want {
				t.Fatalf("Matches(%q, %v) = %v, want %v", tt.path, tt.headers, got, tt.want)
			}
		})
	}
}

func when(c ...Condition) Rule { return Rule{When: c} }

func TestRoutesTakesTheFirstMatchingRule(t *testing.T) {
	t.Parallel()
	r, err := Parse([]byte(rich))
	if err != nil {
		t.Fatal(err)
	}
	fraud, _ := r.Model("fraud")
	tests := []struct {
		name    string
		path    string
		headers map[string]string
		want    []Weighted
	}{
		{"canary prefix", "/v2/models/fraud/infer", map[string]string{"x-tenant": "acme", "x-canary": "yes-please"}, []Weighted{{"2", 100}}},
		{"versioned path and method", "/v2/models/fraud/versions/7/infer", map[string]string{"x-tenant": "acme", ":method": "POST"}, []Weighted{{"2", 100}}},
		{"another tenant", "/v2/models/fraud/infer", map[string]string{"x-tenant": "other", "x-canary": "yes"}, []Weighted{{"1", 1}}},
		{"no rule", "/inference.GRPCInferenceService/ModelInfer", nil, []Weighted{{"2", 100}}}, // the newest version
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, fraud.Routes(tt.path, MapLookup(tt.headers))); diff != "" {
				t.Fatal(diff)
			}
		})
	}
}

// FuzzParse: Parse never panics, and what it accepts survives Encode and Decode.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte(rich))
	f.Add([]byte("models: [{name: m, versions: [{version: \"1\", storageUri: \"file:///m\"}], traffic: [{split: [{version: \"1\", weight: 1}], fault: {abortPercent: 1e-9, abortStatus: 200}}]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			return
		}
		back, err := Decode(r.Encode())
		if err != nil {
			t.Fatalf("Decode(Encode()) of an accepted registry: %v\n%s", err, r.Encode())
		}
		// Empty and absent maps and lists encode alike (omitempty).
		if diff := cmp.Diff(r, back, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("decode(encode) differs: %s", diff)
		}
	})
}
