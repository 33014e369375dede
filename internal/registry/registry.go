// Package registry is the mesh's declarative list of models: what may be served, where its
// files are, how much memory it declares, and how traffic splits between its versions. The
// control plane reads it from a YAML file and publishes it to Redis; ext_proc and the control
// plane's translator read the published form. Standard library plus a YAML decoder only.
package registry

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/modelmesh/mesh/internal/placement"
)

// ErrInvalid wraps every reason a registry is rejected.
var ErrInvalid = errors.New("invalid registry")

// Registry is a validated set of models, sorted by name.
type Registry struct {
	Models []Model `json:"models"`
}

// Model is one registered model.
type Model struct {
	Name string `json:"name"`
	// Runtime the model needs ("onnxruntime", "triton", "mlserver"); workers advertise
	// theirs. Empty with a Format: any runtime that reads the format.
	Runtime string `json:"runtime,omitempty"`
	// Format is the format of the model's files, in KServe's names (see Formats); workers
	// advertise the formats they read, and the model is placed only on one that reads its.
	// Empty: the runtime's own format (onnx for onnxruntime, triton for triton).
	Format string            `json:"format,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// Pinned models are never evicted once loaded.
	Pinned      bool `json:"pinned,omitempty"`
	MinReplicas int  `json:"minReplicas,omitempty"`
	// MaxReplicas bounds the replicas of each version that its demand may add (ext_proc's
	// --scale-max-replicas when 0; 1 keeps one replica whatever the demand).
	MaxReplicas int `json:"maxReplicas,omitempty"`
	// DefaultVersion takes the traffic that no rule sends elsewhere; defaults to the newest.
	DefaultVersion string    `json:"defaultVersion,omitempty"`
	Versions       []Version `json:"versions"`
	// Traffic rules, first match wins; a rule without a match applies to every request.
	// With no rules, everything goes to DefaultVersion.
	Traffic []Rule `json:"traffic,omitempty"`
}

// Version is one version of a model.
type Version struct {
	Version string `json:"version"`
	Files
	// MemoryBytes declared for the version; 0 means measure at load.
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
}

// Files says where a version's files are: a storageUri (file://, s3://, gs://, https://,
// http://), or a storage-config entry and a path in its bucket, as ModelMesh's predictors
// say it. The worker resolves both (docs/storage.md).
type Files struct {
	StorageURI string   `json:"storageUri,omitempty"`
	Storage    *Storage `json:"storage,omitempty"`
	// SHA256, when set, is the digest the files must have: of the file, of the archive, or
	// of a prefix's manifest (docs/storage.md).
	SHA256 string `json:"sha256,omitempty"`
}

// Storage is a path in the bucket of the workers' storage-config entry Key ("default" when
// empty); Bucket overrides the entry's.
type Storage struct {
	Key    string `json:"key,omitempty"`
	Bucket string `json:"bucket,omitempty"`
	Path   string `json:"path"`
}

// storageSchemes are the URI schemes a worker reads.
var storageSchemes = []string{"file", "s3", "gs", "https", "http"}

func (f Files) validate() error {
	switch {
	case f.StorageURI != "" && f.Storage != nil:
		return errors.New("storageUri and storage are exclusive: give one")
	case f.StorageURI == "" && f.Storage == nil:
		return errors.New("no storageUri or storage")
	case f.Storage != nil && strings.TrimPrefix(f.Storage.Path, "/") == "":
		return errors.New("storage: no path")
	case f.SHA256 != "" && (len(f.SHA256) != 64 || strings.Trim(f.SHA256, "0123456789abcdef") != ""):
		return fmt.Errorf("sha256 %q: want 64 lower-case hex digits", f.SHA256)
	}
	if f.StorageURI != "" {
		scheme, rest, ok := strings.Cut(f.StorageURI, "://")
		if !ok || !slices.Contains(storageSchemes, scheme) || rest == "" {
			return fmt.Errorf("storageUri %q: want file://, s3://, gs://, https:// or http://", f.StorageURI)
		}
	}
	return nil
}

// Rule routes the requests it matches to weighted versions, and may mirror a share of them.
// A request matches when every Match header has exactly its value and, if When is not empty,
// at least one of its conditions holds (Istio's http[].match: a list of alternatives).
type Rule struct {
	// Source names where the rule came from when it was not written in the registry file,
	// e.g. "VirtualService models/iris-canary http[0]"; it appears in errors and statuses.
	Source string `json:"source,omitempty"`
	// Headers that must all be present with exactly these values.
	Match  map[string]string `json:"match,omitempty"`
	When   []Condition       `json:"when,omitempty"`
	Split  []Weighted        `json:"split"`
	Mirror *Mirror           `json:"mirror,omitempty"`
	// Timeout bounds the upstream request once routed (not a cold load); "" keeps the
	// gateway's default. A Go duration string, e.g. "2.5s".
	Timeout string   `json:"timeout,omitempty"`
	Retries *Retries `json:"retries,omitempty"`
	Fault   *Fault   `json:"fault,omitempty"`
	// RequestHeaders and ResponseHeaders are changed on the way to and from the model.
	RequestHeaders  *HeaderOps `json:"requestHeaders,omitempty"`
	ResponseHeaders *HeaderOps `json:"responseHeaders,omitempty"`
}

// Condition holds when every header matches and the URI (the request path) matches.
type Condition struct {
	Headers map[string]StringMatch `json:"headers,omitempty"`
	URI     *StringMatch           `json:"uri,omitempty"`
}

// StringMatch sets exactly one of its fields. Regex is RE2 and must match the whole value,
// as in Envoy and Istio.
type StringMatch struct {
	Exact  string `json:"exact,omitempty"`
	Prefix string `json:"prefix,omitempty"`
	Regex  string `json:"regex,omitempty"`
}

// Retries retries a routed request on another replica. Attempts 0 disables retries; RetryOn
// is Envoy's x-envoy-retry-on list ("" means the gateway's default, connect-failure and
// refused-stream), PerTryTimeout a Go duration.
type Retries struct {
	Attempts      uint32 `json:"attempts"`
	PerTryTimeout string `json:"perTryTimeout,omitempty"`
	RetryOn       string `json:"retryOn,omitempty"`
}

// Fault injects a delay and/or an abort into a share of the rule's requests, before any
// model is loaded.
type Fault struct {
	DelayPercent float64 `json:"delayPercent,omitempty"`
	Delay        string  `json:"delay,omitempty"` // Go duration
	AbortPercent float64 `json:"abortPercent,omitempty"`
	// AbortStatus is the HTTP status answered; gRPC requests get it mapped as Envoy does.
	AbortStatus uint32 `json:"abortStatus,omitempty"`
}

// HeaderOps changes headers: Set replaces, Add appends, Remove deletes.
type HeaderOps struct {
	Set    map[string]string `json:"set,omitempty"`
	Add    map[string]string `json:"add,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// Weighted is a version and its relative weight in a split.
type Weighted struct {
	Version string `json:"version"`
	Weight  uint32 `json:"weight"`
}

// Mirror copies Percent of a rule's requests to Version, answers discarded.
type Mirror struct {
	Version string  `json:"version"`
	Percent float64 `json:"percent"`
}

// DefaultRuntime is the runtime of a model that names neither a runtime nor a format.
const DefaultRuntime = "onnxruntime"

// Formats are the model formats the mesh's runtimes read, each with the runtimes that read
// it: ONNX files (embedded ONNX Runtime), Triton repository entries (a config.pbtxt and a
// version directory, for any of Triton's backends), and scikit-learn joblib pickles,
// XGBoost JSON or UBJ boosters and LightGBM text boosters (MLServer).
var Formats = map[string][]string{
	"onnx":     {"onnxruntime"},
	"triton":   {"triton"},
	"sklearn":  {"mlserver"},
	"xgboost":  {"mlserver"},
	"lightgbm": {"mlserver"},
}

// defaultFormats is the format of a model that names a runtime and no format.
var defaultFormats = map[string]string{"onnxruntime": "onnx", "triton": "triton"}

// formatsOf lists the formats runtime reads, sorted.
func formatsOf(runtime string) []string {
	var out []string
	for f, runtimes := range Formats {
		if slices.Contains(runtimes, runtime) {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out
}

// allRuntimes lists the runtimes that read some format, sorted.
func allRuntimes() []string {
	var out []string
	for _, runtimes := range Formats {
		for _, r := range runtimes {
			if !slices.Contains(out, r) {
				out = append(out, r)
			}
		}
	}
	slices.Sort(out)
	return out
}

// defaults fills in the runtime and the format of a model that names neither or only one.
func (m *Model) defaults() {
	if m.Runtime == "" && m.Format == "" {
		m.Runtime = DefaultRuntime
	}
	if m.Format == "" {
		m.Format = defaultFormats[m.Runtime]
	}
}

// Parse decodes and validates a registry from YAML (or JSON). It reports every problem it
// finds, each with the model it belongs to.
func Parse(data []byte) (*Registry, error) {
	var r Registry
	if err := yaml.UnmarshalStrict(data, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := r.normalise(); err != nil {
		return nil, err
	}
	return &r, nil
}

// normalise fills defaults, sorts, and validates the whole registry.
func (r *Registry) normalise() error {
	var errs []error
	seen := map[string]bool{}
	for i := range r.Models {
		m := &r.Models[i]
		m.defaults()
		if err := m.validate(); err != nil {
			errs = append(errs, err)
		}
		if seen[m.Name] {
			errs = append(errs, fmt.Errorf("model %q: registered twice", m.Name))
		}
		seen[m.Name] = true
		slices.SortFunc(m.Versions, func(a, b Version) int { return strings.Compare(a.Version, b.Version) })
		if m.DefaultVersion == "" && len(m.Versions) > 0 {
			m.DefaultVersion = m.Versions[0].Version
			for _, v := range m.Versions {
				if placement.NewerVersion(v.Version, m.DefaultVersion) {
					m.DefaultVersion = v.Version
				}
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	slices.SortFunc(r.Models, func(a, b Model) int { return strings.Compare(a.Name, b.Name) })
	return nil
}

func (m *Model) validate() error {
	var errs []error
	if err := placement.ValidateID(m.Name); err != nil {
		return fmt.Errorf("model %q: %w", m.Name, err)
	}
	fail := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("model %q: "+format, append([]any{m.Name}, args...)...))
	}
	runtimes, known := Formats[m.Format]
	switch {
	case m.Runtime != "" && len(formatsOf(m.Runtime)) == 0:
		fail("runtime %q is not one the mesh runs (%s)", m.Runtime, strings.Join(allRuntimes(), ", "))
	case m.Format == "":
		fail("runtime %s reads several formats: say which in format (%s)", m.Runtime, strings.Join(formatsOf(m.Runtime), ", "))
	case !known:
		fail("format %q is not one the mesh reads (%s)", m.Format, strings.Join(slices.Sorted(maps.Keys(Formats)), ", "))
	case m.Runtime != "" && !slices.Contains(runtimes, m.Runtime):
		fail("runtime %s does not read format %s (%s does)", m.Runtime, m.Format, strings.Join(runtimes, ", "))
	}
	if m.MinReplicas < 0 {
		fail("minReplicas %d is negative", m.MinReplicas)
	}
	if m.MaxReplicas < 0 {
		fail("maxReplicas %d is negative", m.MaxReplicas)
	}
	if m.MaxReplicas > 0 && m.MaxReplicas < m.MinReplicas {
		fail("maxReplicas %d is below minReplicas %d", m.MaxReplicas, m.MinReplicas)
	}
	if len(m.Versions) == 0 {
		fail("no versions")
	}
	versions := map[string]bool{}
	for _, v := range m.Versions {
		if err := placement.ValidateID(v.Version); err != nil {
			fail("version %q: %v", v.Version, err)
			continue
		}
		if versions[v.Version] {
			fail("version %q listed twice", v.Version)
		}
		versions[v.Version] = true
		if err := v.Files.validate(); err != nil {
			fail("version %q: %v", v.Version, err)
		}
		if v.MemoryBytes < 0 {
			fail("version %q: memoryBytes %d is negative", v.Version, v.MemoryBytes)
		}
	}
	if m.DefaultVersion != "" && !versions[m.DefaultVersion] {
		fail("defaultVersion %q is not one of its versions", m.DefaultVersion)
	}
	for i, rule := range m.Traffic {
		name := fmt.Sprintf("traffic rule %d", i)
		if rule.Source != "" {
			name += " (" + rule.Source + ")"
		}
		for _, err := range rule.problems(versions) {
			fail("%s: %v", name, err)
		}
	}
	return errors.Join(errs...)
}

// Model finds a model by name.
func (r *Registry) Model(name string) (Model, bool) {
	i, ok := slices.BinarySearchFunc(r.Models, name, func(m Model, n string) int { return strings.Compare(m.Name, n) })
	if !ok {
		return Model{}, false
	}
	return r.Models[i], true
}

// Version finds a version of the model.
func (m Model) Version(v string) (Version, bool) {
	for _, x := range m.Versions {
		if x.Version == v {
			return x, true
		}
	}
	return Version{}, false
}

// Routes gives the weighted split that applies to a request with the given path (without
// its query) and headers: the first rule that Matches it, else the default version at full
// weight.
func (m Model) Routes(path string, header Lookup) []Weighted {
	for _, rule := range m.Traffic {
		if rule.Matches(path, header) {
			return rule.Split
		}
	}
	return []Weighted{{Version: m.DefaultVersion, Weight: 100}}
}

// ServedVersions lists every version some rule (or the default) can send traffic to.
func (m Model) ServedVersions() []string {
	set := map[string]bool{m.DefaultVersion: true}
	for _, rule := range m.Traffic {
		for _, w := range rule.Split {
			if w.Weight > 0 {
				set[w.Version] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}

// Encode renders the registry as canonical JSON (sorted models and versions, sorted map
// keys), so equal registries encode to equal bytes.
func (r *Registry) Encode() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.Encode(r) // a Registry always encodes
	return bytes.TrimSpace(buf.Bytes())
}

// Digest is a short hash of the canonical encoding, used as the registry's version.
func (r *Registry) Digest() string {
	sum := sha256.Sum256(r.Encode())
	return hex.EncodeToString(sum[:8])
}

// Decode reads a registry written by Encode, validating it again.
func Decode(data []byte) (*Registry, error) {
	var r Registry
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := r.normalise(); err != nil {
		return nil, err
	}
	return &r, nil
}

// WithTraffic returns a copy of r in which each model named in rules has exactly those
// traffic rules, validated as Parse validates a file: an unknown model or an invalid rule is
// an error wrapping ErrInvalid, naming the model. r is left as it was; the copy shares
// versions, labels and the given rule slices with r and rules, so none of them may be
// changed afterwards.
func (r *Registry) WithTraffic(rules map[string][]Rule) (*Registry, error) {
	out := &Registry{Models: slices.Clone(r.Models)}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(rules)) {
		i, ok := slices.BinarySearchFunc(out.Models, name, func(m Model, n string) int { return strings.Compare(m.Name, n) })
		if !ok {
			errs = append(errs, fmt.Errorf("model %q: not registered", name))
			continue
		}
		out.Models[i].Traffic = rules[name]
		if err := out.Models[i].validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	return out, nil
}

// WithModels returns a copy of r with models added, each validated as Parse validates a
// file's. A model that is invalid, or whose name r or an earlier one of models already has,
// is left out and its error is in rejected under its name. r and models are left as they
// were; the copy shares their versions, labels and rules.
func (r *Registry) WithModels(models []Model) (out *Registry, rejected map[string]error) {
	out = &Registry{Models: slices.Clone(r.Models)}
	rejected = map[string]error{}
	taken := map[string]bool{}
	for _, m := range r.Models {
		taken[m.Name] = true
	}
	for _, m := range models {
		m.defaults()
		if taken[m.Name] {
			rejected[m.Name] = fmt.Errorf("%w: model %q: registered twice", ErrInvalid, m.Name)
			continue
		}
		one := Registry{Models: []Model{m}}
		if err := one.normalise(); err != nil {
			rejected[m.Name] = err
			continue
		}
		taken[m.Name] = true
		out.Models = append(out.Models, one.Models[0])
	}
	slices.SortFunc(out.Models, func(a, b Model) int { return strings.Compare(a.Name, b.Name) })
	return out, rejected
}
