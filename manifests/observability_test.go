package manifests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

const observability = "observability"

// promConfig is the part of Prometheus' configuration file the mesh's configurations use;
// decoding it strictly refuses any other field, misspellings included.
type promConfig struct {
	Global struct {
		ScrapeInterval     string `json:"scrape_interval"`
		EvaluationInterval string `json:"evaluation_interval"`
	} `json:"global"`
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `json:"job_name"`
		MetricsPath   string `json:"metrics_path"`
		StaticConfigs []struct {
			Targets []string `json:"targets"`
		} `json:"static_configs"`
		KubernetesSDConfigs []struct {
			Role       string `json:"role"`
			Namespaces struct {
				Names []string `json:"names"`
			} `json:"namespaces"`
		} `json:"kubernetes_sd_configs"`
		RelabelConfigs []relabelConfig `json:"relabel_configs"`
	} `json:"scrape_configs"`
}

type relabelConfig struct {
	SourceLabels []string `json:"source_labels"`
	Separator    *string  `json:"separator"`
	Regex        *string  `json:"regex"`
	TargetLabel  string   `json:"target_label"`
	Replacement  *string  `json:"replacement"`
	Action       string   `json:"action"`
}

func decodePrometheusConfig(doc []byte) (*promConfig, error) {
	var c promConfig
	if err := yaml.UnmarshalStrict(doc, &c); err != nil {
		return nil, err
	}
	if len(c.ScrapeConfigs) == 0 {
		return nil, fmt.Errorf("no scrape_configs")
	}
	return &c, nil
}

// ruleFile is a Prometheus rule file, as strictly as promConfig.
type ruleFile struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval"`
		Rules    []rule `json:"rules"`
	} `json:"groups"`
}

type rule struct {
	Record      string            `json:"record"`
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func decodeRules(doc []byte) (*ruleFile, error) {
	var f ruleFile
	if err := yaml.UnmarshalStrict(doc, &f); err != nil {
		return nil, err
	}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if (r.Record == "") == (r.Alert == "") || r.Expr == "" {
				return nil, fmt.Errorf("group %s: a rule needs record or alert, and expr: %+v", g.Name, r)
			}
		}
	}
	return &f, nil
}

func TestObservabilityFilesRefuseMisspellings(t *testing.T) {
	for path, doc := range map[string]string{
		"prometheus.yaml":        "scrape_configs: [{job_name: x, static_config: [{targets: [a]}]}]\n",
		"prometheus-local.yaml":  "scrape_configs: [{job_name: x, relabel_configs: [{source_label: [a]}]}]\n",
		"rules/alerts.yaml":      "groups: [{name: x, rules: [{alert: A, expr: up < 1, label: {severity: warning}}]}]\n",
		"rules/recording.yaml":   "groups: [{name: x, rules: [{recrd: a:b, expr: up}]}]\n",
		"rules/both.yaml":        "groups: [{name: x, rules: [{record: a:b, alert: A, expr: up}]}]\n",
		"prometheus-empty.yaml":  "global: {scrape_interval: 1s}\n",
		"rules/no-expr.yaml":     "groups: [{name: x, rules: [{alert: A}]}]\n",
		"prometheus-other.yaml":  "rule_file: [a]\nscrape_configs: [{job_name: x}]\n",
		"rules/group-field.yaml": "groups: [{nme: x, rules: []}]\n",
	} {
		if _, err := decodeFileDoc(path, []byte(doc)); err == nil {
			t.Errorf("%s: %q accepted", path, doc)
		}
	}
}

func readRules(t *testing.T) map[string]*ruleFile {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(observability, "rules", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no rule files: %v", err)
	}
	out := map[string]*ruleFile{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rf, err := decodeRules(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[f] = rf
	}
	return out
}

// topLevel reports whether expr has, outside parentheses, braces, brackets and strings, a
// comparison or a set operator: then an alert's trailing comparison would not be its only
// condition.
func topLevel(expr string) bool {
	depth := 0
	var quote byte
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case strings.IndexByte("({[", c) >= 0:
			depth++
		case strings.IndexByte(")}]", c) >= 0:
			depth--
		case depth == 0 && strings.IndexByte("<>=!", c) >= 0:
			return true
		case depth == 0 && isWordStart(expr, i):
			for _, op := range []string{"and", "or", "unless"} {
				if strings.HasPrefix(expr[i:], op) && (i+len(op) == len(expr) || !isWordByte(expr[i+len(op)])) {
					return true
				}
			}
		}
	}
	return false
}

func isWordByte(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isWordStart(s string, i int) bool { return i == 0 || !isWordByte(s[i-1]) }

// alertForm is an alert's expr: a signal, then one comparison with a number.
var alertForm = regexp.MustCompile(`(?s)^(.*\S)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+\s*$`)

// Every alert is `<signal> <comparison> <number>` (the e2e test evaluates the signal alone),
// has a severity, a summary, a description and a runbook section in docs/observability.md.
func TestAlertsFollowTheConvention(t *testing.T) {
	docs := readDocs(t)
	names := map[string]bool{}
	records := map[string]bool{}
	for f, rf := range readRules(t) {
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				if r.Record != "" {
					if !regexp.MustCompile(`^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$`).MatchString(r.Record) {
						t.Errorf("%s: recording rule %s is not named level:metric:operations", f, r.Record)
					}
					records[r.Record] = true
					continue
				}
				if names[r.Alert] {
					t.Errorf("alert %s defined twice", r.Alert)
				}
				names[r.Alert] = true
				parts := alertForm.FindStringSubmatch(r.Expr)
				if parts == nil || topLevel(parts[1]) {
					t.Errorf("%s: alert %s: expr is not `<signal> <comparison> <number>` with one top-level comparison: %s", f, r.Alert, r.Expr)
				}
				if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
					t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
				}
				for _, a := range []string{"summary", "description", "runbook"} {
					if r.Annotations[a] == "" {
						t.Errorf("alert %s: no %s annotation", r.Alert, a)
					}
				}
				if want := "docs/observability.md#" + strings.ToLower(r.Alert); r.Annotations["runbook"] != want {
					t.Errorf("alert %s: runbook %q, want %q", r.Alert, r.Annotations["runbook"], want)
				}
				if !strings.Contains(docs, "\n### "+r.Alert+"\n") {
					t.Errorf("alert %s: docs/observability.md has no section ### %s", r.Alert, r.Alert)
				}
			}
		}
	}
	if len(names) < 10 || len(records) == 0 {
		t.Errorf("%d alerts and %d recording rules", len(names), len(records))
	}
}

func TestTopLevel(t *testing.T) {
	for expr, want := range map[string]bool{
		`sum(rate(x[5m]))`:                             false,
		`(count(up{job="a"} == 1) or vector(0))`:       false,
		`x{a!="b"} / y`:                                false,
		`a > 1 and b`:                                  true,
		`a or b`:                                       true,
		`sort_desc(x)`:                                 false,
		`x / (y > 0.1)`:                                false,
		`time() - max by (instance) (x)`:               false,
		`histogram_quantile(0.5, sum by (le) (r))`:     false,
		`label_replace(x, "a", "$1", "b", "(.+)") > 1`: true,
	} {
		if got := topLevel(expr); got != want {
			t.Errorf("topLevel(%s) = %v, want %v", expr, got, want)
		}
	}
}

// Running promtool (installed by make setup with Prometheus) on the rule files and the local
// configuration; e2e/observability_test.go runs them too, and loads both into Prometheus.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found; run `make setup` (scripts/setup.sh installs Prometheus and promtool)")
	}
	rules, err := filepath.Abs(filepath.Join(observability, "rules"))
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(rules, "*.yaml"))
	if out, err := exec.Command(promtool, append([]string{"check", "rules"}, files...)...).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(observability, "prometheus-local.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "prometheus.yaml")
	local := strings.ReplaceAll(localPlaceholders.Replace(string(b)), "/rules/", rules+"/")
	if err := os.WriteFile(cfg, []byte(local), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "config", cfg).CombinedOutput(); err != nil {
		t.Errorf("promtool check config prometheus-local.yaml: %v\n%s", err, out)
	}
	// Debian's Prometheus is built without Kubernetes service discovery, so its promtool
	// cannot read prometheus.yaml; TestScrapeConfigFindsTheMesh checks that one.
}

// relabel applies Prometheus' relabelling (keep, drop, replace) to a target's labels; false
// means the target is dropped.
func relabel(t *testing.T, labels map[string]string, cfgs []relabelConfig) bool {
	t.Helper()
	or := func(p *string, def string) string {
		if p == nil {
			return def
		}
		return *p
	}
	for _, c := range cfgs {
		var values []string
		for _, l := range c.SourceLabels {
			values = append(values, labels[l])
		}
		value := strings.Join(values, or(c.Separator, ";"))
		re := regexp.MustCompile("^(?:" + or(c.Regex, "(.*)") + ")$")
		switch or(&c.Action, "replace") {
		case "keep":
			if !re.MatchString(value) {
				return false
			}
		case "drop":
			if re.MatchString(value) {
				return false
			}
		case "replace", "":
			m := re.FindStringSubmatchIndex(value)
			if m == nil {
				continue
			}
			if res := string(re.ExpandString(nil, or(c.Replacement, "$1"), value, m)); res != "" {
				labels[c.TargetLabel] = res
			} else {
				delete(labels, c.TargetLabel)
			}
		default:
			t.Fatalf("relabel action %s is not simulated", c.Action)
		}
	}
	return true
}

var metaName = regexp.MustCompile(`[^a-zA-Z0-9_]`)

// The Kubernetes scrape configuration, applied to the pods the manifests run (as Prometheus'
// pod discovery presents them: one target per declared container port), scrapes each mesh
// workload once, at the port and path its annotations name, under the job the dashboards
// and alerts use; Redis is not scraped.
func TestScrapeConfigFindsTheMesh(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(observability, "prometheus.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := decodePrometheusConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.ScrapeConfigs) != 1 || len(cfg.ScrapeConfigs[0].KubernetesSDConfigs) != 1 {
		t.Fatalf("want one scrape job with Kubernetes pod discovery: %+v", cfg.ScrapeConfigs)
	}
	job := cfg.ScrapeConfigs[0]
	wantJobs := map[string]string{"mesh-controlplane": "mesh-controlplane", "mesh-extproc": "mesh-extproc",
		"mesh-gateway": "mesh-gateway", "mesh-worker": "mesh-worker", "mesh-worker-triton": "mesh-worker"}
	for _, dir := range []string{"base", filepath.Join("overlays", "gpu")} {
		for _, d := range all[*appsv1.Deployment](build(t, dir)) {
			if !slices.Contains(job.KubernetesSDConfigs[0].Namespaces.Names, d.Namespace) {
				t.Errorf("%s: %s runs in namespace %s, which the scrape job does not watch", dir, d.Name, d.Namespace)
			}
			pod := d.Spec.Template
			targets := map[string]bool{}
			for _, c := range pod.Spec.Containers {
				for _, p := range c.Ports {
					labels := map[string]string{"__address__": fmt.Sprintf("10.0.0.7:%d", p.ContainerPort), "__metrics_path__": "/metrics",
						"job": job.JobName, "__meta_kubernetes_namespace": d.Namespace, "__meta_kubernetes_pod_name": d.Name + "-7d9f8-x2x4q"}
					for k, v := range pod.Annotations {
						labels["__meta_kubernetes_pod_annotation_"+metaName.ReplaceAllString(k, "_")] = v
					}
					for k, v := range pod.Labels {
						labels["__meta_kubernetes_pod_label_"+metaName.ReplaceAllString(k, "_")] = v
					}
					if relabel(t, labels, job.RelabelConfigs) {
						targets[labels["job"]+" "+labels["__address__"]+labels["__metrics_path__"]] = true
					}
				}
			}
			want, scraped := wantJobs[d.Name]
			if !scraped {
				if len(targets) > 0 {
					t.Errorf("%s: %s is scraped: %v", dir, d.Name, targets)
				}
				continue
			}
			a := pod.Annotations
			target := want + " 10.0.0.7:" + a["prometheus.io/port"] + a["prometheus.io/path"]
			if len(targets) != 1 || !targets[target] {
				t.Errorf("%s: %s gives targets %v, want %s", dir, d.Name, targets, target)
			}
		}
	}
}

// grafanaDashboard is the part of Grafana's dashboard model the mesh's dashboards use;
// decoding refuses other fields (fieldConfig and options are Grafana's to check).
type grafanaDashboard struct {
	UID           string   `json:"uid"`
	Title         string   `json:"title"`
	Description   string   `json:"description"`
	Tags          []string `json:"tags"`
	Timezone      string   `json:"timezone"`
	Editable      bool     `json:"editable"`
	GraphTooltip  int      `json:"graphTooltip"`
	SchemaVersion int      `json:"schemaVersion"`
	Version       int      `json:"version"`
	Refresh       string   `json:"refresh"`
	Time          struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
	Annotations struct {
		List []json.RawMessage `json:"list"`
	} `json:"annotations"`
	Links []struct {
		Title       string   `json:"title"`
		Type        string   `json:"type"`
		Tags        []string `json:"tags"`
		AsDropdown  bool     `json:"asDropdown"`
		IncludeVars bool     `json:"includeVars"`
		KeepTime    bool     `json:"keepTime"`
	} `json:"links"`
	Templating struct {
		List []struct {
			Name        string          `json:"name"`
			Label       string          `json:"label"`
			Type        string          `json:"type"`
			Datasource  *datasource     `json:"datasource"`
			Query       json.RawMessage `json:"query"`
			Definition  string          `json:"definition"`
			Current     json.RawMessage `json:"current"`
			Options     json.RawMessage `json:"options"`
			Hide        int             `json:"hide"`
			Refresh     int             `json:"refresh"`
			Regex       string          `json:"regex"`
			Sort        int             `json:"sort"`
			IncludeAll  bool            `json:"includeAll"`
			Multi       bool            `json:"multi"`
			SkipURLSync bool            `json:"skipUrlSync"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID          int        `json:"id"`
		Type        string     `json:"type"`
		Title       string     `json:"title"`
		Description string     `json:"description"`
		Datasource  datasource `json:"datasource"`
		GridPos     struct {
			H int `json:"h"`
			W int `json:"w"`
			X int `json:"x"`
			Y int `json:"y"`
		} `json:"gridPos"`
		Targets []struct {
			RefID        string     `json:"refId"`
			Datasource   datasource `json:"datasource"`
			Expr         string     `json:"expr"`
			LegendFormat string     `json:"legendFormat"`
			Range        bool       `json:"range"`
		} `json:"targets"`
		FieldConfig json.RawMessage `json:"fieldConfig"`
		Options     json.RawMessage `json:"options"`
	} `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func readDashboards(t *testing.T) map[string]grafanaDashboard {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(observability, "dashboards", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	out := map[string]grafanaDashboard{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var d grafanaDashboard
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out[f] = d
	}
	return out
}

var variableRef = regexp.MustCompile(`\$(\w+)|\$\{(\w+)\}`)

// The dashboards hold together: unique ids, panels on Grafana's 24-column grid, every query
// on the datasource variable, every variable a query names defined, every panel described
// here and in docs/observability.md.
func TestDashboards(t *testing.T) {
	docs := readDocs(t)
	uids := map[string]bool{}
	for f, d := range readDashboards(t) {
		if d.UID == "" || uids[d.UID] || !strings.HasPrefix(d.Title, "Model mesh / ") || !slices.Contains(d.Tags, "modelmesh") {
			t.Errorf("%s: uid %q (unique, required), title %q (Model mesh / ...), tags %v (modelmesh)", f, d.UID, d.Title, d.Tags)
		}
		uids[d.UID] = true
		if !strings.Contains(docs, "## "+d.Title+"\n") {
			t.Errorf("%s: docs/observability.md has no section ## %s", f, d.Title)
		}
		vars := map[string]bool{"__rate_interval": true, "__range": true, "__interval": true}
		for _, v := range d.Templating.List {
			vars[v.Name] = true
		}
		if !vars["datasource"] {
			t.Errorf("%s: no datasource variable", f)
		}
		ids := map[int]bool{}
		for _, p := range d.Panels {
			where := fmt.Sprintf("%s: panel %d %q", f, p.ID, p.Title)
			if ids[p.ID] || p.ID <= 0 {
				t.Errorf("%s: id not unique", where)
			}
			ids[p.ID] = true
			if g := p.GridPos; g.W < 1 || g.H < 1 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
				t.Errorf("%s: off the grid %+v", where, g)
			}
			if p.Description == "" || !strings.Contains(docs, "**"+p.Title+"**") {
				t.Errorf("%s: needs a description, and an entry **%s** in docs/observability.md", where, p.Title)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no query", where)
			}
			onVariable := datasource{Type: "prometheus", UID: "${datasource}"}
			if p.Datasource != onVariable {
				t.Errorf("%s: datasource %+v, want the datasource variable", where, p.Datasource)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.Datasource != onVariable {
					t.Errorf("%s: query %s: datasource %+v, want the datasource variable", where, tg.RefID, tg.Datasource)
				}
				if tg.Expr == "" || tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: query %q with refId %q (unique, required)", where, tg.Expr, tg.RefID)
				}
				refs[tg.RefID] = true
				for _, m := range variableRef.FindAllStringSubmatch(tg.Expr, -1) {
					if name := m[1] + m[2]; !vars[name] {
						t.Errorf("%s: query names $%s, which the dashboard does not define", where, name)
					}
				}
			}
		}
	}
	for _, uid := range []string{"modelmesh-fleet", "modelmesh-model", "modelmesh-cache", "modelmesh-controlplane"} {
		if !uids[uid] {
			t.Errorf("no dashboard %s", uid)
		}
	}
}

// metricNames lists the metric names a PromQL expression reads: identifiers outside label
// matchers, strings, ranges and grouping clauses that are not functions or keywords.
func metricNames(expr string) []string {
	for _, strip := range []string{`"(?:[^"\\]|\\.)*"`, `\{[^}]*\}`, `\[[^\]]*\]`,
		`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`} {
		expr = regexp.MustCompile(strip).ReplaceAllString(expr, " ")
	}
	var names []string
	for _, m := range regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`).FindAllStringIndex(expr, -1) {
		word := expr[m[0]:m[1]]
		next := strings.TrimLeft(expr[m[1]:], " \n\t")
		if strings.HasPrefix(next, "(") || slices.Contains([]string{"and", "or", "unless", "bool", "offset", "inf", "nan"}, word) {
			continue
		}
		if m[0] > 0 && (expr[m[0]-1] >= '0' && expr[m[0]-1] <= '9' || expr[m[0]-1] == '.') {
			continue // the exponent or unit of a number
		}
		names = append(names, word)
	}
	return names
}

func TestMetricNames(t *testing.T) {
	got := metricNames(`histogram_quantile(0.99, sum by (le, version) (rate(envoy_cluster_upstream_rq_time_bucket{model="$model", envoy_response_code_class!="2"}[5m]))) / (a:b:c or vector(0)) > 1e3 and up`)
	want := []string{"envoy_cluster_upstream_rq_time_bucket", "a:b:c", "up"}
	if !slices.Equal(got, want) {
		t.Errorf("metricNames = %v, want %v", got, want)
	}
}

func readDocs(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "docs", "observability.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every metric a dashboard or rule reads is explained in docs/observability.md, in backquotes
// with or without its labels (histogram series by their family's name).
func TestEveryMetricIsDocumented(t *testing.T) {
	docs := readDocs(t)
	used := map[string]string{}
	for f, d := range readDashboards(t) {
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				for _, n := range metricNames(tg.Expr) {
					used[n] = f
				}
			}
		}
	}
	for f, rf := range readRules(t) {
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				for _, n := range metricNames(r.Expr) {
					used[n] = f
				}
			}
		}
	}
	if len(used) < 40 {
		t.Errorf("only %d metrics found in the dashboards and rules", len(used))
	}
	for n, f := range used {
		family := regexp.MustCompile(`_(bucket|sum|count)$`).ReplaceAllString(n, "")
		if !strings.Contains(docs, "`"+family+"`") && !strings.Contains(docs, "`"+family+"{") {
			t.Errorf("%s reads %s, which docs/observability.md does not explain", f, n)
		}
	}
}
