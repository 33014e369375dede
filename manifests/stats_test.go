package manifests

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
)

func readBootstrap(t *testing.T, path string) *bootstrapv3.Bootstrap {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	boot, err := decodeBootstrap([]byte(localPlaceholders.Replace(string(b))))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return boot
}

// The gateway in Kubernetes and the local one (make run, the e2e tests that prove the
// dashboards) keep and tag the same stats.
func TestBootstrapsAgreeOnStats(t *testing.T) {
	local := readBootstrap(t, filepath.Join("local", "envoy-bootstrap.yaml"))
	k8s := readBootstrap(t, filepath.Join("base", "gateway-bootstrap.yaml"))
	if diff := cmp.Diff(local.GetStatsConfig(), k8s.GetStatsConfig(), protocmp.Transform()); diff != "" {
		t.Errorf("stats_config of local/envoy-bootstrap.yaml and base/gateway-bootstrap.yaml differ (-local +k8s):\n%s", diff)
	}
}

// matches evaluates one of Envoy's string matchers as Envoy does (safe_regex is RE2, which
// Go's regexp implements, and must match the whole name).
func matches(t *testing.T, m *matcherv3.StringMatcher, s string) bool {
	t.Helper()
	if m.GetIgnoreCase() {
		t.Fatalf("matcher %v: ignore_case is not expected here", m)
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		return s == p.Exact
	case *matcherv3.StringMatcher_Prefix:
		return strings.HasPrefix(s, p.Prefix)
	case *matcherv3.StringMatcher_Suffix:
		return strings.HasSuffix(s, p.Suffix)
	case *matcherv3.StringMatcher_Contains:
		return strings.Contains(s, p.Contains)
	case *matcherv3.StringMatcher_SafeRegex:
		return regexp.MustCompile(`^(?:` + p.SafeRegex.GetRegex() + `)$`).MatchString(s)
	}
	t.Fatalf("matcher %v: unexpected kind", m)
	return false
}

// The stats matcher keeps what dashboards, alerts and the e2e tests read, and drops the bulk
// of each model cluster's stats, whatever dots and dashes its model name and version hold.
func TestStatsMatcherKeepsWhatIsReadAndNoMore(t *testing.T) {
	boot := readBootstrap(t, filepath.Join("local", "envoy-bootstrap.yaml"))
	list := boot.GetStatsConfig().GetStatsMatcher().GetInclusionList()
	if list == nil {
		t.Fatal("no stats_matcher inclusion_list")
	}
	kept := func(stat string) bool {
		for _, p := range list.GetPatterns() {
			if matches(t, p, stat) {
				return true
			}
		}
		return false
	}
	var clusters []string
	for _, m := range []string{"model|iris|1", "model|a.b-c_d|1.0", "model|x|v2.beta"} {
		clusters = append(clusters, "cluster."+m+".", "cluster."+m+"|grpc.")
	}
	for _, c := range clusters {
		for _, s := range []string{"membership_healthy", "membership_total", "upstream_rq_total", "upstream_rq_2xx",
			"upstream_rq_5xx", "upstream_rq_time", "external.upstream_rq_5xx", "internal.upstream_rq_time",
			"upstream_rq_retry", "upstream_rq_timeout", "upstream_rq_per_try_timeout"} {
			if !kept(c + s) {
				t.Errorf("%s is dropped", c+s)
			}
		}
		for _, s := range []string{"upstream_cx_total", "upstream_cx_active", "lb_healthy_panic", "upstream_rq_200",
			"external.upstream_rq_503", "circuit_breakers.default.rq_open", "upstream_cx_connect_ms", "update_success",
			"outlier_detection.ejections_active"} {
			if kept(c + s) {
				t.Errorf("%s is kept", c+s)
			}
		}
	}
	for _, s := range []string{"cluster_manager.active_clusters", "control_plane.connected_state", "server.memory_allocated",
		"cluster.workers.upstream_rq_retry", "cluster.workers.upstream_rq_per_try_timeout", "cluster.extproc.upstream_rq_total",
		"http.gateway.downstream_rq_5xx", "http.gateway.downstream_rq_time", "http.gateway.ext_proc.streams_started",
		"http.gateway.rds.models.update_rejected", "listener_manager.lds.update_rejected", "cluster_manager.cds.update_rejected",
		"wasmcustom.modelmesh.model_requests.a.b", "wasmcustom.modelmesh.invalid_requests"} {
		if !kept(s) {
			t.Errorf("%s is dropped", s)
		}
	}
	// Stats a client could multiply (the fault filter's per downstream cluster ones, named
	// after a request header), per-listener and per-worker-thread stats.
	for _, s := range []string{"http.gateway.fault.client-a.aborts_injected", "listener.0.0.0.0_8080.downstream_cx_total",
		"listener.0.0.0.0_8080.worker_0.downstream_cx_active", "wasm.envoy.wasm.runtime.v8.active", "vhost.gateway.vcluster.other.upstream_rq_total"} {
		if kept(s) {
			t.Errorf("%s is kept", s)
		}
	}
}

// Every stat the matcher keeps for model clusters is one the tag extractors tag with model
// and version: the three regexes and the matcher name the same stats.
func TestModelTagsFollowTheMatcher(t *testing.T) {
	boot := readBootstrap(t, filepath.Join("local", "envoy-bootstrap.yaml"))
	suffixes := regexp.MustCompile(`\((upstream_rq_total\|[^)]*)\)\$`)
	var want string
	for _, p := range boot.GetStatsConfig().GetStatsMatcher().GetInclusionList().GetPatterns() {
		if r := p.GetSafeRegex().GetRegex(); strings.HasPrefix(r, `^cluster\.model`) {
			want = strings.ReplaceAll(suffixes.FindStringSubmatch(r)[1], `[1-5]xx`, `\dxx`)
		}
	}
	if want == "" {
		t.Fatal("the stats matcher keeps no model cluster stats")
	}
	tagged := map[string]bool{}
	for _, tag := range boot.GetStatsConfig().GetStatsTags() {
		switch tag.GetTagName() {
		case "envoy.cluster_name", "model", "version":
			tagged[tag.GetTagName()] = true
			if !strings.Contains(tag.GetRegex(), "(?:"+want+")$") {
				t.Errorf("tag %s: regex %s does not end with the matcher's model stats (?:%s)$", tag.GetTagName(), tag.GetRegex(), want)
			}
		}
	}
	if len(tagged) != 3 {
		t.Errorf("tags %v, want envoy.cluster_name, model and version", tagged)
	}
	if v := boot.GetStatsConfig().GetUseAllDefaultTags(); v == nil || v.GetValue() {
		t.Error("use_all_default_tags must be false: Envoy's default cluster name tag cuts model|a.b|1 at the dot")
	}
}
