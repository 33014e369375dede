//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/modelmesh/mesh/internal/proctest"
)

const observability = "../manifests/observability"

// observabilityRegistry is the demo registry (iris, digits, breast-cancer in two versions)
// plus six 100 MiB fillers, of which two 250 MiB workers hold four, and a model whose file
// does not exist.
func observabilityRegistry(t *testing.T) string {
	t.Helper()
	reg := render(t, "../manifests/local/registry.yaml", nil)
	var sb strings.Builder
	sb.WriteString(reg)
	for i := range 6 {
		fmt.Fprintf(&sb, "  - name: filler-%d\n    versions: [{version: \"1\", storageUri: \"file://${MODELS}/iris/1/model.onnx\", memoryBytes: 104857600}]\n", i)
	}
	sb.WriteString("  - name: broken\n    versions: [{version: \"1\", storageUri: \"file://${MODELS}/iris/1/missing.onnx\"}]\n")
	return sb.String()
}

// Istio objects for the control plane's --istio-dir: breast-cancer split 80/20 with a tester
// pinned to the canary, and a VirtualService the mesh rejects.
var observabilityIstio = bcDestinationRule + "---\n" + bcVirtualService(80, 20, 0) + "---\n" + digitsRewriteVS

// prometheus is a running Prometheus server.
type prometheus struct{ addr string }

// startPrometheus runs Debian's prometheus (make setup) with manifests/observability's local
// configuration: every component of m scraped each second, the rule files loaded.
func startPrometheus(t *testing.T, m *mesh) *prometheus {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not installed; run `make setup`: %v", err)
	}
	rules, err := filepath.Abs(filepath.Join(observability, "rules"))
	must(t, err)
	var workers []string
	for _, w := range m.workers {
		workers = append(workers, strconv.Quote(w.MgmtAddr))
	}
	cfg := render(t, filepath.Join(observability, "prometheus-local.yaml"), map[string]string{
		"SCRAPE_INTERVAL": "1s", "RULES": rules, "GATEWAY_ADMIN": m.Admin, "CONTROLPLANE": m.CPMetrics,
		"EXTPROC": m.ExtProcMetrics, "WORKERS": strings.Join(workers, ", ")})
	dir := t.TempDir()
	path := filepath.Join(dir, "prometheus.yaml")
	must(t, os.WriteFile(path, []byte(cfg), 0o644))
	if out, err := exec.Command("promtool", "check", "config", path).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	p := &prometheus{addr: freePort(t)}
	startProcess(t, "prometheus", bin, []string{"--config.file", path, "--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", p.addr, "--log.level", "warn"}, proctest.HTTPOK("http://"+p.addr+"/-/ready"))
	eventually(t, 30*time.Second, "every target scraped", func() bool {
		var targets struct {
			ActiveTargets []struct {
				Health string `json:"health"`
			} `json:"activeTargets"`
		}
		if err := p.api(t, "/api/v1/targets", nil, &targets); err != nil {
			return false
		}
		up := 0
		for _, tg := range targets.ActiveTargets {
			if tg.Health == "up" {
				up++
			}
		}
		return up == 3+len(m.workers)
	})
	return p
}

// api calls Prometheus' HTTP API and decodes the data of a successful answer into out; it
// returns the error Prometheus reported, if any.
func (p *prometheus) api(t *testing.T, path string, params url.Values, out any) error {
	t.Helper()
	code, body := get(t, "http://"+p.addr+path+"?"+params.Encode())
	var answer struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
		Error  string          `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &answer); err != nil {
		t.Fatalf("%s: %d %s", path, code, body)
	}
	if answer.Status != "success" {
		return fmt.Errorf("%s (%d)", answer.Error, code)
	}
	must(t, json.Unmarshal(answer.Data, out))
	return nil
}

// series is one element of a range query's result.
type series struct {
	Metric map[string]string `json:"metric"`
	Values [][2]any          `json:"values"`
}

// queryRange evaluates expr every second from start until now, as a Grafana panel over that
// time range does; it returns the series or the error Prometheus reported.
func (p *prometheus) queryRange(t *testing.T, expr string, start time.Time) ([]series, error) {
	t.Helper()
	var data struct {
		ResultType string   `json:"resultType"`
		Result     []series `json:"result"`
	}
	params := url.Values{"query": {expr}, "start": {unix(start)}, "end": {unix(time.Now())}, "step": {"1"}}
	if err := p.api(t, "/api/v1/query_range", params, &data); err != nil {
		return nil, err
	}
	return data.Result, nil
}

func unix(t time.Time) string { return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64) }

// checkQuery evaluates expr over the time since start: it must parse and return at least one
// number (not NaN), so that its panel or rule shows the workload.
func (p *prometheus) checkQuery(t *testing.T, what, expr string, start time.Time) {
	t.Helper()
	result, err := p.queryRange(t, expr, start)
	if err != nil {
		t.Errorf("%s: %s\n  %v", what, expr, err)
		return
	}
	points := 0
	for _, s := range result {
		for _, v := range s.Values {
			points++
			if f, err := strconv.ParseFloat(fmt.Sprint(v[1]), 64); err == nil && !math.IsNaN(f) {
				return
			}
		}
	}
	if points == 0 {
		t.Errorf("%s returned no data: %s", what, expr)
	} else {
		t.Errorf("%s returned only NaN (%d points in %d series): %s", what, points, len(result), expr)
	}
}

// dashboard is what the test reads of a Grafana dashboard.
type dashboard struct {
	Title  string `json:"title"`
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// ruleFile is what the test reads of a Prometheus rule file.
type ruleFile struct {
	Groups []struct {
		Rules []struct {
			Record string `json:"record"`
			Alert  string `json:"alert"`
			Expr   string `json:"expr"`
		} `json:"rules"`
	} `json:"groups"`
}

// alertForm is the form of every alert expression: a signal, then one comparison with a
// number (manifests/observability/rules/alerts.yaml).
var alertForm = regexp.MustCompile(`(?s)^(.*\S)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+\s*$`)

// labelValues is Grafana's label_values(selector, label) variable query.
var labelValues = regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)

// TestObservability proves the dashboards and the rules against a real Prometheus scraping a
// real mesh: a workload with cold loads, hot traffic, evictions, errors, a failing load and a
// canary split, then every query of every dashboard and every rule expression evaluated
// through Prometheus' HTTP API must return data.
func TestObservability(t *testing.T) {
	rules, err := filepath.Glob(filepath.Join(observability, "rules", "*.yaml"))
	must(t, err)
	if out, err := exec.Command("promtool", append([]string{"check", "rules"}, rules...)...).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules (promtool comes with make setup's prometheus): %v\n%s", err, out)
	}
	istio := t.TempDir()
	must(t, os.WriteFile(filepath.Join(istio, "traffic.yaml"), []byte(observabilityIstio), 0o644))
	m := startMesh(t, meshOptions{Registry: observabilityRegistry(t), Capacities: []string{"250MiB", "250MiB"},
		WorkerArgs: []string{"--eviction-min-idle", "100ms"}, ControlPlaneArgs: []string{"--istio-dir", istio}})
	prom := startPrometheus(t, m)
	start := time.Now()
	observabilityWorkload(t, m)

	// Every rule evaluated without error since the workload ended.
	eventually(t, 30*time.Second, "every rule evaluated after the workload", func() bool {
		return prom.rulesHealthy(t, time.Now().Add(-2*time.Second))
	})
	// Panels are evaluated as Grafana draws them over a time range that holds the workload:
	// range queries every second; $__rate_interval is four scrape intervals, as Grafana
	// computes it; $__range is the whole range; the model variable takes each model of the
	// workload in turn.
	rangeWindow := fmt.Sprintf("%ds", int(time.Since(start).Seconds())+1)
	files, err := filepath.Glob(filepath.Join(observability, "dashboards", "*.json"))
	must(t, err)
	if len(files) < 4 {
		t.Fatalf("%d dashboards, want fleet, model, cache and control plane", len(files))
	}
	queries := 0
	for _, f := range files {
		raw, err := os.ReadFile(f)
		must(t, err)
		var d dashboard
		must(t, json.Unmarshal(raw, &d))
		models := []string{""}
		for _, v := range d.Templating.List {
			if v.Name == "model" {
				models = []string{"iris", "breast-cancer"}
				prom.checkVariable(t, d.Title, v.Query, models, start)
			}
		}
		for _, model := range models {
			for _, p := range d.Panels {
				for _, tg := range p.Targets {
					expr := strings.NewReplacer("$__rate_interval", "4s", "$__range", rangeWindow, "$model", model).Replace(tg.Expr)
					prom.checkQuery(t, fmt.Sprintf("%s / %s (model %q)", d.Title, p.Title, model), expr, start)
					queries++
				}
			}
		}
	}
	for _, f := range rules {
		raw, err := os.ReadFile(f)
		must(t, err)
		var rf ruleFile
		must(t, yaml.Unmarshal(raw, &rf))
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				queries++
				if r.Record != "" {
					prom.checkQuery(t, "recording rule "+r.Record, r.Expr, start)
					continue
				}
				parts := alertForm.FindStringSubmatch(r.Expr)
				if parts == nil {
					t.Errorf("alert %s: expr is not `<signal> <comparison> <number>`: %s", r.Alert, r.Expr)
					continue
				}
				if _, err := prom.queryRange(t, r.Expr, start); err != nil {
					t.Errorf("alert %s: %s\n  %v", r.Alert, r.Expr, err)
				}
				prom.checkQuery(t, "signal of alert "+r.Alert, parts[1], start)
			}
		}
	}
	t.Logf("%d queries evaluated over a workload of %s", queries, rangeWindow)

	// The workload's failing loads and rejected VirtualService are alerted on; nothing is
	// down, disconnected or rejected by Envoy.
	active := prom.activeAlerts(t)
	for _, want := range []string{"MeshLoadFailures", "MeshVirtualServiceRejected"} {
		if !slices.Contains(active, want) {
			t.Errorf("alert %s not pending or firing; active: %v", want, active)
		}
	}
	for _, unwanted := range []string{"MeshControlPlaneDown", "MeshComponentDown", "MeshGatewayDisconnected", "MeshConfigRejected", "MeshExtProcSnapshotStale", "MeshGatewayErrors"} {
		if slices.Contains(active, unwanted) {
			t.Errorf("alert %s active in a healthy mesh", unwanted)
		}
	}
}

// observabilityWorkload exercises every panel: cold loads, hot traffic, a canary split,
// evictions, client errors, an unknown model and a model whose load fails. It is paced over
// some fifteen seconds, so that one-second scrapes see each phase.
func observabilityWorkload(t *testing.T, m *mesh) {
	t.Helper()
	post := func(model string, body string, headers map[string]string, want int) {
		t.Helper()
		if code, out := inferREST(t, m.Gateway, model, body, headers); code != want {
			t.Fatalf("%s: %d %v, want %d", model, code, out, want)
		}
	}
	// paced sends n requests evenly over d.
	paced := func(n int, d time.Duration, send func()) {
		t.Helper()
		for range n {
			next := time.Now().Add(d / time.Duration(n))
			send()
			time.Sleep(time.Until(next))
		}
	}
	iris := func() { post("iris", irisSetosa, nil, 200) }
	// Cold, then hot.
	iris()
	m.waitHot(t, "iris", "1")
	paced(300, 3*time.Second, iris)
	// The canary: the tester pinned to version 2, the rest split 80/20.
	bc := testsetRow(t, "breast-cancer")
	for range 5 {
		post("breast-cancer", bc, map[string]string{"x-tester": "alice"}, 200)
	}
	post("breast-cancer/versions/1", bc, nil, 200)
	m.waitHot(t, "breast-cancer", "1")
	m.waitHot(t, "breast-cancer", "2")
	paced(200, 2*time.Second, func() { post("breast-cancer", bc, nil, 200) })
	post("digits", testsetRow(t, "digits"), nil, 200)
	// Client errors on the hot path (a wrong shape), an unknown model, failing loads.
	wrongShape := `{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`
	paced(10, time.Second, func() {
		post("iris", wrongShape, nil, 400)
		post("breast-cancer", wrongShape, nil, 400)
		post("no-such-model", irisSetosa, nil, 404)
	})
	paced(6, time.Second, func() { post("broken", irisSetosa, nil, 502) }) // its files are missing
	// Six 100 MiB models through four slots, twice: loads, drains, evictions.
	for range 2 {
		for i := range 6 {
			post(fmt.Sprintf("filler-%d", i), irisSetosa, nil, 200)
			time.Sleep(300 * time.Millisecond)
		}
	}
	// Hot traffic again, after the evictions.
	iris()
	m.waitHot(t, "iris", "1")
	paced(300, 3*time.Second, iris)
	// Two scrapes after the last request.
	time.Sleep(2500 * time.Millisecond)
}

// rulesHealthy reports whether every rule was evaluated after since, without error.
func (p *prometheus) rulesHealthy(t *testing.T, since time.Time) bool {
	t.Helper()
	var data struct {
		Groups []struct {
			Rules []struct {
				Name           string    `json:"name"`
				Health         string    `json:"health"`
				LastError      string    `json:"lastError"`
				LastEvaluation time.Time `json:"lastEvaluation"`
			} `json:"rules"`
		} `json:"groups"`
	}
	must(t, p.api(t, "/api/v1/rules", nil, &data))
	n := 0
	for _, g := range data.Groups {
		for _, r := range g.Rules {
			n++
			if r.LastError != "" {
				t.Fatalf("rule %s: %s", r.Name, r.LastError)
			}
			if r.Health != "ok" || r.LastEvaluation.Before(since) {
				return false
			}
		}
	}
	return n > 0
}

// activeAlerts names the alerts pending or firing.
func (p *prometheus) activeAlerts(t *testing.T) []string {
	t.Helper()
	var data struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
		} `json:"alerts"`
	}
	must(t, p.api(t, "/api/v1/alerts", nil, &data))
	var names []string
	for _, a := range data.Alerts {
		names = append(names, a.Labels["alertname"])
	}
	return names
}

// checkVariable evaluates a dashboard's label_values variable query: it must offer every
// model of want.
func (p *prometheus) checkVariable(t *testing.T, title string, query any, want []string, start time.Time) {
	t.Helper()
	q, ok := query.(map[string]any)
	expr, _ := q["query"].(string)
	parts := labelValues.FindStringSubmatch(expr)
	if !ok || parts == nil {
		t.Errorf("%s: variable query %v is not label_values(selector, label)", title, query)
		return
	}
	var values []string
	params := url.Values{"match[]": {parts[1]}, "start": {unix(start)}, "end": {unix(time.Now())}}
	if err := p.api(t, "/api/v1/label/"+parts[2]+"/values", params, &values); err != nil {
		t.Errorf("%s: variable %s: %v", title, expr, err)
	}
	for _, w := range want {
		if !slices.Contains(values, w) {
			t.Errorf("%s: variable %s offers %v, not %s", title, expr, values, w)
		}
	}
}
