package manifests

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

const kedaGroup = "keda.sh"

// scaledObject is KEDA's ScaledObject (keda.sh/v1alpha1), the fields the mesh uses, after
// KEDA's Go types (github.com/kedacore/keda/v2/apis/keda/v1alpha1, not a dependency of the
// module): strict decoding refuses any other field, validate checks what KEDA's CRD and
// admission webhook require. The HPA behaviour is Kubernetes' own type, as in KEDA.
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              scaledObjectSpec `json:"spec"`
}

type scaledObjectSpec struct {
	ScaleTargetRef   *kedaScaleTarget `json:"scaleTargetRef"`
	PollingInterval  *int32           `json:"pollingInterval,omitempty"`
	CooldownPeriod   *int32           `json:"cooldownPeriod,omitempty"`
	IdleReplicaCount *int32           `json:"idleReplicaCount,omitempty"`
	MinReplicaCount  *int32           `json:"minReplicaCount,omitempty"`
	MaxReplicaCount  *int32           `json:"maxReplicaCount,omitempty"`
	Advanced         *struct {
		HorizontalPodAutoscalerConfig *struct {
			Name     string                                         `json:"name,omitempty"`
			Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
		} `json:"horizontalPodAutoscalerConfig,omitempty"`
		RestoreToOriginalReplicaCount bool `json:"restoreToOriginalReplicaCount,omitempty"`
	} `json:"advanced,omitempty"`
	Triggers []kedaTrigger `json:"triggers"`
}

type kedaScaleTarget struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
	Name       string `json:"name"`
}

type kedaTrigger struct {
	Type              string                         `json:"type"`
	Name              string                         `json:"name,omitempty"`
	MetricType        autoscalingv2.MetricTargetType `json:"metricType,omitempty"`
	Metadata          map[string]string              `json:"metadata"`
	AuthenticationRef *struct {
		Name string `json:"name"`
		Kind string `json:"kind,omitempty"`
	} `json:"authenticationRef,omitempty"`
}

// DeepCopyObject makes scaledObject a runtime.Object, as build's output holds; a JSON round
// trip is a deep copy.
func (s *scaledObject) DeepCopyObject() runtime.Object {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	var c scaledObject
	if err := json.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return &c
}

// The prometheus scaler's metadata keys (KEDA's prometheusMetadata), and those it requires.
var (
	prometheusTriggerKeys = []string{"serverAddress", "query", "queryParameters", "threshold", "activationThreshold",
		"namespace", "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner", "authModes"}
	prometheusTriggerRequired = []string{"serverAddress", "query", "threshold"}
)

// decodeKEDA decodes a KEDA object strictly; only ScaledObject is known.
func decodeKEDA(doc []byte, gvk schema.GroupVersionKind) (runtime.Object, error) {
	if gvk != (schema.GroupVersionKind{Group: kedaGroup, Version: "v1alpha1", Kind: "ScaledObject"}) {
		return nil, fmt.Errorf("%s: not a KEDA kind the tests know", gvk)
	}
	var so scaledObject
	if err := yaml.UnmarshalStrict(doc, &so); err != nil {
		return nil, err
	}
	if err := so.validate(); err != nil {
		return nil, fmt.Errorf("ScaledObject %s: %w", so.Name, err)
	}
	return &so, nil
}

// validate checks what KEDA would refuse: a target without a name, bounds out of order,
// triggers missing, unnamed twice, or with a metric type or prometheus metadata KEDA does
// not take.
func (so *scaledObject) validate() error {
	s := so.Spec
	if s.ScaleTargetRef == nil || s.ScaleTargetRef.Name == "" {
		return fmt.Errorf("spec.scaleTargetRef.name is required")
	}
	minR, maxR := ptrOr(s.MinReplicaCount, 0), ptrOr(s.MaxReplicaCount, 100)
	if minR < 0 || minR > maxR {
		return fmt.Errorf("minReplicaCount %d, maxReplicaCount %d", minR, maxR)
	}
	if s.IdleReplicaCount != nil && *s.IdleReplicaCount >= minR {
		return fmt.Errorf("idleReplicaCount %d must be below minReplicaCount %d", *s.IdleReplicaCount, minR)
	}
	if len(s.Triggers) == 0 {
		return fmt.Errorf("spec.triggers is required")
	}
	names := map[string]bool{}
	for i, tr := range s.Triggers {
		where := fmt.Sprintf("trigger %d (%s)", i, tr.Name)
		if tr.Name != "" {
			if names[tr.Name] {
				return fmt.Errorf("%s: name used twice", where)
			}
			names[tr.Name] = true
		}
		if !slices.Contains([]autoscalingv2.MetricTargetType{"", autoscalingv2.AverageValueMetricType, autoscalingv2.ValueMetricType}, tr.MetricType) {
			return fmt.Errorf("%s: metricType %s, want AverageValue or Value", where, tr.MetricType)
		}
		if tr.Type != "prometheus" {
			return fmt.Errorf("%s: type %q: only prometheus triggers are checked", where, tr.Type)
		}
		for k := range tr.Metadata {
			if !slices.Contains(prometheusTriggerKeys, k) {
				return fmt.Errorf("%s: prometheus metadata has no key %s", where, k)
			}
		}
		for _, k := range prometheusTriggerRequired {
			if tr.Metadata[k] == "" {
				return fmt.Errorf("%s: prometheus metadata %s is required", where, k)
			}
		}
		for _, k := range []string{"threshold", "activationThreshold"} {
			if v, ok := tr.Metadata[k]; ok {
				if _, err := strconv.ParseFloat(v, 64); err != nil {
					return fmt.Errorf("%s: %s %q: %v", where, k, v, err)
				}
			}
		}
		for _, k := range []string{"ignoreNullValues", "unsafeSsl"} {
			if v, ok := tr.Metadata[k]; ok {
				if _, err := strconv.ParseBool(v); err != nil {
					return fmt.Errorf("%s: %s %q: %v", where, k, v, err)
				}
			}
		}
		if u, err := url.Parse(tr.Metadata["serverAddress"]); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s: serverAddress %q is not an http(s) URL", where, tr.Metadata["serverAddress"])
		}
	}
	return nil
}

// adapterConfig is prometheus-adapter's configuration file (its pkg/config types), strictly.
type adapterConfig struct {
	Rules         []adapterRule   `json:"rules,omitempty"`
	ResourceRules json.RawMessage `json:"resourceRules,omitempty"`
	ExternalRules []adapterRule   `json:"externalRules,omitempty"`
}

type adapterRule struct {
	SeriesQuery   string `json:"seriesQuery"`
	SeriesFilters []struct {
		Is    string `json:"is,omitempty"`
		IsNot string `json:"isNot,omitempty"`
	} `json:"seriesFilters,omitempty"`
	Resources struct {
		Namespaced *bool  `json:"namespaced,omitempty"`
		Template   string `json:"template,omitempty"`
		Overrides  map[string]struct {
			Group    string `json:"group,omitempty"`
			Resource string `json:"resource"`
		} `json:"overrides,omitempty"`
	} `json:"resources"`
	Name struct {
		Matches string `json:"matches"`
		As      string `json:"as"`
	} `json:"name"`
	MetricsQuery           string `json:"metricsQuery,omitempty"`
	LabelValueReplacements []struct {
		Find    string `json:"find,omitempty"`
		Replace string `json:"replace,omitempty"`
	} `json:"labelValueReplacements,omitempty"`
}

// seriesName is the one metric name a rule's seriesQuery selects (`name{...}`); the mesh's
// rules name their series, so that the tests can follow them.
var seriesName = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})?$`)

func decodeAdapterConfig(doc []byte) (*adapterConfig, error) {
	var c adapterConfig
	if err := yaml.UnmarshalStrict(doc, &c); err != nil {
		return nil, err
	}
	if len(c.Rules)+len(c.ExternalRules) == 0 {
		return nil, fmt.Errorf("no rules and no externalRules")
	}
	for i, r := range slices.Concat(c.Rules, c.ExternalRules) {
		if seriesName.FindStringSubmatch(r.SeriesQuery) == nil {
			return nil, fmt.Errorf("rule %d: seriesQuery %q does not name its series", i, r.SeriesQuery)
		}
		if _, err := regexp.Compile(r.Name.Matches); err != nil {
			return nil, fmt.Errorf("rule %d: name.matches: %v", i, err)
		}
		if _, err := adapterQuery(r); err != nil {
			return nil, fmt.Errorf("rule %d: metricsQuery: %v", i, err)
		}
	}
	return &c, nil
}

// adapterQuery renders a rule's metricsQuery as the adapter does, for a series with one
// label matcher; the template must use the series and its matchers.
func adapterQuery(r adapterRule) (string, error) {
	if !strings.Contains(r.MetricsQuery, "<<.Series>>") || !strings.Contains(r.MetricsQuery, "<<.LabelMatchers>>") {
		return "", fmt.Errorf("%q does not use <<.Series>> and <<.LabelMatchers>>", r.MetricsQuery)
	}
	tmpl, err := template.New("q").Delims("<<", ">>").Option("missingkey=error").Parse(r.MetricsQuery)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	err = tmpl.Execute(&b, map[string]string{"Series": seriesName.FindStringSubmatch(r.SeriesQuery)[1],
		"LabelMatchers": `namespace="modelmesh"`, "GroupBy": "namespace"})
	return b.String(), err
}

// externalName is the name the adapter serves a series under: name.as with the captures of
// name.matches, by default $0 without captures and $1 with one.
func externalName(r adapterRule, series string) (string, bool) {
	re := regexp.MustCompile(r.Name.Matches)
	m := re.FindStringSubmatchIndex(series)
	if m == nil {
		return "", false
	}
	as := r.Name.As
	if as == "" {
		as = "$0"
		if re.NumSubexp() == 1 {
			as = "$1"
		}
	}
	return string(re.ExpandString(nil, as, series, m)), true
}

// servedMetric is an external metric the adapter serves: the recorded series behind it.
type servedMetric struct {
	series, expr string
}

// externalMetrics reads prometheus-adapter's rules from the ConfigMap manifests/observability
// builds, and checks that each serves, by the HorizontalPodAutoscaler's namespace, a series
// a recording rule defines.
func externalMetrics(t *testing.T) map[string]servedMetric {
	t.Helper()
	records := map[string]string{}
	for _, rf := range readRules(t) {
		for _, g := range rf.Groups {
			for _, r := range g.Rules {
				if r.Record != "" {
					records[r.Record] = r.Expr
				}
			}
		}
	}
	cm := named[*corev1.ConfigMap](t, build(t, observability), "mesh-prometheus-adapter")
	cfg, err := decodeAdapterConfig([]byte(cm.Data["config.yaml"]))
	if err != nil {
		t.Fatalf("ConfigMap mesh-prometheus-adapter: %v", err)
	}
	if len(cfg.ExternalRules) == 0 {
		t.Fatal("the adapter configuration has no externalRules")
	}
	served := map[string]servedMetric{}
	for _, r := range cfg.ExternalRules {
		series := seriesName.FindStringSubmatch(r.SeriesQuery)[1]
		expr, ok := records[series]
		if !ok {
			t.Errorf("adapter rule %q: no recording rule records %s", r.SeriesQuery, series)
			continue
		}
		name, ok := externalName(r, series)
		if !ok || strings.Contains(name, ":") {
			t.Errorf("adapter rule %q: name.matches %q does not match %s, or the name %q has colons", r.SeriesQuery, r.Name.Matches, series, name)
			continue
		}
		if _, dup := served[name]; dup {
			t.Errorf("external metric %s served twice", name)
		}
		if o, ok := r.Resources.Overrides["namespace"]; !ok || o.Resource != "namespace" || o.Group != "" || !ptrOr(r.Resources.Namespaced, true) {
			t.Errorf("adapter rule for %s: the namespace label must map to the namespace resource, so that an HPA reads its own namespace", name)
		}
		if !slices.Contains(grouping(expr), "namespace") {
			t.Errorf("recording rule %s: keeps no namespace label (by (...)), which the adapter selects on", series)
		}
		served[name] = servedMetric{series, expr}
	}
	return served
}

// grouping lists the labels of an expression's first `by (...)` clause, less histogram
// buckets' le (gone after histogram_quantile).
func grouping(expr string) []string {
	m := regexp.MustCompile(`\bby\s*\(([^)]*)\)`).FindStringSubmatch(expr)
	if m == nil {
		return nil
	}
	var labels []string
	for l := range strings.SplitSeq(m[1], ",") {
		if l = strings.TrimSpace(l); l != "" && l != "le" {
			labels = append(labels, l)
		}
	}
	return labels
}

// exportedMetrics lists the metric names our binaries register (Name: "mesh_..." in their
// non-test Go files).
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	re := regexp.MustCompile(`Name:\s*"(mesh_[a-z0-9_]+)"`)
	for _, dir := range []string{"extproc", "runtime-worker", "controlplane"} {
		err := filepath.WalkDir(filepath.Join("..", dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			b, err := os.ReadFile(p)
			for _, m := range re.FindAllSubmatch(b, -1) {
				names[string(m[1])] = true
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(names) < 20 {
		t.Fatalf("found only %d metrics in the binaries' sources", len(names))
	}
	return names
}

// scrapeLabels are the labels the Kubernetes scrape job gives a Deployment's pods' series.
func scrapeLabels(t *testing.T, d *appsv1.Deployment) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(observability, "prometheus.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := decodePrometheusConfig(b)
	if err != nil {
		t.Fatal(err)
	}
	job := cfg.ScrapeConfigs[0]
	pod := d.Spec.Template
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
				return labels
			}
		}
	}
	t.Fatalf("the scrape job does not scrape %s", d.Name)
	return nil
}

// scaleTarget finds the Deployment a scaleTargetRef names in objs.
func scaleTarget(t *testing.T, objs []runtime.Object, apiVersion, kind, name string) *appsv1.Deployment {
	t.Helper()
	if apiVersion != "apps/v1" || kind != "Deployment" {
		t.Fatalf("scale target %s %s %s: want an apps/v1 Deployment", apiVersion, kind, name)
	}
	return named[*appsv1.Deployment](t, objs, name)
}

// checkScaledWorkers checks a worker Deployment under an autoscaler with these bounds and
// behaviour: the autoscaler owns the count, never goes below the base's two workers, scales
// down one drain at a time, slowly, and each drain fits the pod's grace period.
func checkScaledWorkers(t *testing.T, objs []runtime.Object, d *appsv1.Deployment, minR, maxR int32, b *autoscalingv2.HorizontalPodAutoscalerBehavior) {
	t.Helper()
	if d.Spec.Replicas != nil {
		t.Errorf("%s: replicas %d set beside the autoscaler, which owns the count", d.Name, *d.Spec.Replicas)
	}
	base := ptrOr(named[*appsv1.Deployment](t, build(t, "base"), d.Name).Spec.Replicas, 1)
	if minR < base || minR < 2 || maxR <= minR {
		t.Errorf("%s: replicas %d to %d; want at least the base's %d and 2, and room above", d.Name, minR, maxR, base)
	}
	var worker *invocation
	for _, in := range invocations(t, objs) {
		if in.workload == d.Name && in.binary == "mesh-worker" {
			worker = &in
		}
	}
	if worker == nil {
		t.Fatalf("%s runs no mesh-worker", d.Name)
	}
	drain := worker.duration(t, "shutdown-timeout") + worker.duration(t, "drain-timeout") + worker.duration(t, "drain-grace")
	grace := time.Duration(ptrOr(d.Spec.Template.Spec.TerminationGracePeriodSeconds, 30)) * time.Second
	if grace <= drain+time.Duration(preStopSleep(worker.container))*time.Second {
		t.Errorf("%s: terminationGracePeriodSeconds %s does not cover a scaled-down worker's drain, --shutdown-timeout + --drain-timeout + --drain-grace %s", d.Name, grace, drain)
	}
	if b == nil || b.ScaleUp == nil || b.ScaleDown == nil {
		t.Fatalf("%s: the autoscaler needs a scaleUp and a scaleDown behaviour: %+v", d.Name, b)
	}
	down := b.ScaleDown
	if w := ptrOr(down.StabilizationWindowSeconds, 300); w < 600 {
		t.Errorf("scaleDown stabilization %d s: want at least 10 minutes; each removed worker's models load again elsewhere", w)
	}
	if len(down.Policies) == 0 {
		t.Error("scaleDown has no policies: the autoscaler could remove every surplus worker at once")
	}
	for _, p := range down.Policies {
		if p.Type != autoscalingv2.PodsScalingPolicy || p.Value != 1 || time.Duration(p.PeriodSeconds)*time.Second < grace {
			t.Errorf("scaleDown policy %+v: want one pod per period of at least the grace period %s, one drain at a time", p, grace)
		}
	}
	for _, p := range b.ScaleUp.Policies {
		if p.Value <= 0 || p.PeriodSeconds <= 0 || p.PeriodSeconds > 1800 {
			t.Errorf("scaleUp policy %+v out of range", p)
		}
	}
}

// The HorizontalPodAutoscaler of components/autoscaling: opt-in, on the worker Deployment,
// on external metrics prometheus-adapter serves from recording rules over metrics our
// binaries export, with selectors the scrape job's labels satisfy.
func TestWorkerAutoscaler(t *testing.T) {
	served := externalMetrics(t)
	exported := exportedMetrics(t)
	histogram := regexp.MustCompile(`_(bucket|sum|count)$`)
	for name, m := range served {
		for _, n := range metricNames(m.expr) {
			if strings.HasPrefix(n, "mesh_") && !exported[histogram.ReplaceAllString(n, "")] {
				t.Errorf("external metric %s: recording rule %s reads %s, which no binary exports", name, m.series, n)
			}
		}
	}
	if hpas := all[*autoscalingv2.HorizontalPodAutoscaler](build(t, "base")); len(hpas) > 0 {
		t.Error("the base must not autoscale: autoscaling needs prometheus-adapter, and is opt-in")
	}
	objs := build(t, filepath.Join("overlays", "autoscaling"))
	hpas := all[*autoscalingv2.HorizontalPodAutoscaler](objs)
	if len(hpas) != 1 {
		t.Fatalf("%d HorizontalPodAutoscalers, want 1", len(hpas))
	}
	h := hpas[0]
	ref := h.Spec.ScaleTargetRef
	d := scaleTarget(t, objs, ref.APIVersion, ref.Kind, ref.Name)
	checkScaledWorkers(t, objs, d, ptrOr(h.Spec.MinReplicas, 1), h.Spec.MaxReplicas, h.Spec.Behavior)
	labels := scrapeLabels(t, d)
	if len(h.Spec.Metrics) < 2 {
		t.Errorf("%d metrics, want the cold queue and evictions", len(h.Spec.Metrics))
	}
	for _, m := range h.Spec.Metrics {
		if m.Type != autoscalingv2.ExternalMetricSourceType || m.External == nil {
			t.Errorf("metric %+v: want External (prometheus-adapter)", m)
			continue
		}
		name := m.External.Metric.Name
		sm, ok := served[name]
		if !ok {
			t.Errorf("external metric %s: prometheus-adapter.yaml does not serve it", name)
			continue
		}
		if sel := m.External.Metric.Selector; sel != nil {
			if len(sel.MatchExpressions) > 0 {
				t.Errorf("%s: matchExpressions are not checked; use matchLabels", name)
			}
			for k, v := range sel.MatchLabels {
				if !slices.Contains(grouping(sm.expr), k) {
					t.Errorf("%s: selects %s=%s, a label recording rule %s does not keep", name, k, v, sm.series)
				}
				if labels[k] != v {
					t.Errorf("%s: selects %s=%s, but the scrape job labels %s's series %s=%q", name, k, v, d.Name, k, labels[k])
				}
			}
		}
		if tg := m.External.Target; tg.Type != autoscalingv2.AverageValueMetricType || tg.AverageValue == nil || tg.AverageValue.Sign() <= 0 {
			t.Errorf("%s: target %+v; want an AverageValue above 0 (a fleet-wide sum per worker)", name, tg)
		}
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// promSum is a trigger query of the form sum(series{label="value", ...}).
var promSum = regexp.MustCompile(`^sum\(([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}\)$`)

// The KEDA ScaledObject of components/autoscaling-keda scales the same workers on the same
// series, with the same bounds, behaviour and thresholds as the HorizontalPodAutoscaler.
func TestWorkerAutoscalerKEDA(t *testing.T) {
	served := externalMetrics(t)
	hpaObjs := build(t, filepath.Join("overlays", "autoscaling"))
	hpa := all[*autoscalingv2.HorizontalPodAutoscaler](hpaObjs)[0]
	objs := build(t, filepath.Join("overlays", "autoscaling-keda"))
	if len(all[*autoscalingv2.HorizontalPodAutoscaler](objs)) > 0 {
		t.Error("KEDA makes the HorizontalPodAutoscaler; another one would fight it")
	}
	sos := all[*scaledObject](objs)
	if len(sos) != 1 {
		t.Fatalf("%d ScaledObjects, want 1", len(sos))
	}
	so := sos[0]
	ref := so.Spec.ScaleTargetRef
	// KEDA's defaults: an apps/v1 Deployment.
	d := scaleTarget(t, objs, orDefault(ref.APIVersion, "apps/v1"), orDefault(ref.Kind, "Deployment"), ref.Name)
	if d.Name != hpa.Spec.ScaleTargetRef.Name {
		t.Errorf("KEDA scales %s, the HPA %s", d.Name, hpa.Spec.ScaleTargetRef.Name)
	}
	var behavior *autoscalingv2.HorizontalPodAutoscalerBehavior
	if a := so.Spec.Advanced; a != nil && a.HorizontalPodAutoscalerConfig != nil {
		behavior = a.HorizontalPodAutoscalerConfig.Behavior
	}
	minR, maxR := ptrOr(so.Spec.MinReplicaCount, 0), ptrOr(so.Spec.MaxReplicaCount, 100)
	checkScaledWorkers(t, objs, d, minR, maxR, behavior)
	if minR != ptrOr(hpa.Spec.MinReplicas, 1) || maxR != hpa.Spec.MaxReplicas {
		t.Errorf("KEDA scales %d to %d, the HPA %d to %d", minR, maxR, ptrOr(hpa.Spec.MinReplicas, 1), hpa.Spec.MaxReplicas)
	}
	if diff := cmp.Diff(hpa.Spec.Behavior, behavior); diff != "" {
		t.Errorf("KEDA's behaviour differs from the HPA's (-hpa +keda):\n%s", diff)
	}

	// Each trigger is one HPA metric: the same series, selector and threshold.
	bySeries := map[string]autoscalingv2.ExternalMetricSource{}
	for _, m := range hpa.Spec.Metrics {
		bySeries[served[m.External.Metric.Name].series] = *m.External
	}
	seen := map[string]bool{}
	for _, tr := range so.Spec.Triggers {
		q := promSum.FindStringSubmatch(tr.Metadata["query"])
		if q == nil {
			t.Errorf("trigger %s: query %q is not sum(series{matchers})", tr.Name, tr.Metadata["query"])
			continue
		}
		m, ok := bySeries[q[1]]
		if !ok {
			t.Errorf("trigger %s: reads %s, which no HPA metric reads", tr.Name, q[1])
			continue
		}
		seen[q[1]] = true
		matchers := map[string]string{}
		for p := range strings.SplitSeq(q[2], ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
			if unq, err := strconv.Unquote(v); !ok || err != nil || strings.ContainsAny(k, "!~") {
				t.Errorf("trigger %s: matcher %q is not label=\"value\"", tr.Name, p)
			} else {
				matchers[k] = unq
			}
		}
		if matchers["namespace"] != d.Namespace {
			t.Errorf("trigger %s: namespace %q, the workers run in %q", tr.Name, matchers["namespace"], d.Namespace)
		}
		delete(matchers, "namespace")
		var want map[string]string
		if m.Metric.Selector != nil {
			want = m.Metric.Selector.MatchLabels
		}
		if diff := cmp.Diff(want, matchers, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("trigger %s: selects other labels than the HPA's metric %s (-hpa +keda):\n%s", tr.Name, m.Metric.Name, diff)
		}
		threshold, _ := strconv.ParseFloat(tr.Metadata["threshold"], 64)
		if tr.MetricType != autoscalingv2.AverageValueMetricType || math.Abs(threshold-m.Target.AverageValue.AsApproximateFloat64()) > 1e-9 {
			t.Errorf("trigger %s: %s %v, the HPA's %s: AverageValue %s", tr.Name, tr.MetricType, threshold, m.Metric.Name, m.Target.AverageValue)
		}
	}
	for series := range bySeries {
		if !seen[series] {
			t.Errorf("no KEDA trigger reads %s, which the HPA uses", series)
		}
	}
}

// The KEDA and adapter decoders refuse misspellings and what KEDA would refuse, so the tests
// above can fail.
func TestAutoscalingDecodersRefuse(t *testing.T) {
	so := func(spec string) string {
		return "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: x}\nspec:\n" + spec
	}
	target := "  scaleTargetRef: {name: w}\n"
	trigger := func(meta string) string {
		return "  triggers: [{type: prometheus, metadata: {" + meta + "}}]\n"
	}
	good := "serverAddress: 'http://p:9090', query: up, threshold: '1'"
	for name, doc := range map[string]string{
		"HPA field name":        so(target + "  minReplicas: 2\n" + trigger(good)),
		"misspelled trigger":    so(target + "  triggers: [{type: prometheus, metricTyp: Value, metadata: {" + good + "}}]\n"),
		"unknown metadata":      so(target + trigger(good+", treshold: '2'")),
		"no threshold":          so(target + trigger("serverAddress: 'http://p:9090', query: up")),
		"bad threshold":         so(target + trigger("serverAddress: 'http://p:9090', query: up, threshold: ten")),
		"no target":             so(trigger(good)),
		"bounds":                so(target + "  minReplicaCount: 3\n  maxReplicaCount: 2\n" + trigger(good)),
		"no triggers":           so(target),
		"server address":        so(target + trigger("serverAddress: prometheus:9090, query: up, threshold: '1'")),
		"unknown kind":          "apiVersion: keda.sh/v1alpha1\nkind: ScaledJob\nmetadata: {name: x}\nspec: {}\n",
		"behavior field":        so(target + "  advanced: {horizontalPodAutoscalerConfig: {behavior: {scaleDown: {stabilizationWindow: 1}}}}\n" + trigger(good)),
		"adapter misspelled":    "externalRule: []\n",
		"adapter rule field":    "externalRules: [{seriesQuery: 'a{}', metricQuery: 'sum(<<.Series>>{<<.LabelMatchers>>})'}]\n",
		"adapter query":         "externalRules: [{seriesQuery: 'a{}', metricsQuery: 'sum(a)'}]\n",
		"adapter series query":  "externalRules: [{seriesQuery: '{__name__=~\"a.*\"}', metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>})'}]\n",
		"adapter template":      "externalRules: [{seriesQuery: 'a{}', metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>}) <<.Nope'}]\n",
		"adapter name regex":    "externalRules: [{seriesQuery: 'a{}', name: {matches: '(('}, metricsQuery: 'sum(<<.Series>>{<<.LabelMatchers>>})'}]\n",
		"adapter without rules": "rules: []\n",
	} {
		path := "x.yaml"
		if strings.HasPrefix(name, "adapter") {
			path = "prometheus-adapter.yaml"
		}
		if _, err := decodeFileDoc(path, []byte(doc)); err == nil {
			t.Errorf("%s: accepted:\n%s", name, doc)
		}
	}
	if _, err := decodeFileDoc("x.yaml", []byte(so(target+"  minReplicaCount: 2\n"+trigger(good)))); err != nil {
		t.Errorf("a valid ScaledObject: %v", err)
	}
	r := adapterRule{SeriesQuery: "a:b:c{x!=\"\"}"}
	r.Name.Matches = "^a:(b):c$"
	if got, _ := externalName(r, "a:b:c"); got != "b" {
		t.Errorf("externalName with one capture and no as = %q, want b", got)
	}
	r.Name.As = "mesh_$1"
	if got, _ := externalName(r, "a:b:c"); got != "mesh_b" {
		t.Errorf("externalName = %q, want mesh_b", got)
	}
}
