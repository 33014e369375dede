package manifests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istioscheme "istio.io/client-go/pkg/clientset/versioned/scheme"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	k8sscheme "k8s.io/client-go/kubernetes/scheme"
	kustomizetypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/yaml"

	// Types the Envoy bootstraps name in typed_config.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/bootstrap/internal_listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/modelmesh/mesh/internal/registry"
)

// k8sDecoder decodes every built-in Kubernetes kind, refusing unknown and duplicate fields.
var k8sDecoder = serializer.NewCodecFactory(k8sscheme.Scheme, serializer.EnableStrict).UniversalDeserializer()

// splitDocs returns the non-empty YAML documents of b.
func splitDocs(b []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var docs [][]byte
	for {
		d, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			docs = append(docs, d)
		}
	}
}

func stripComments(b []byte) []byte {
	var out []byte
	for _, l := range bytes.Split(b, []byte("\n")) {
		if t := bytes.TrimSpace(l); len(t) == 0 || t[0] == '#' {
			continue
		}
		out = append(out, l...)
		out = append(out, '\n')
	}
	return out
}

func isIstioGroup(group string) bool {
	return strings.HasSuffix(group, ".istio.io")
}

// decodeObject decodes one Kubernetes, Istio, KEDA or KServe object strictly.
func decodeObject(doc []byte) (runtime.Object, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	if tm.APIVersion == "" || tm.Kind == "" {
		return nil, errors.New("no apiVersion or kind")
	}
	gv, err := schema.ParseGroupVersion(tm.APIVersion)
	if err != nil {
		return nil, err
	}
	if isIstioGroup(gv.Group) {
		return decodeIstio(doc, gv.WithKind(tm.Kind))
	}
	if gv.Group == kedaGroup {
		return decodeKEDA(doc, gv.WithKind(tm.Kind))
	}
	if gv.Group == kserveGroup {
		return decodeKServe(doc, gv.WithKind(tm.Kind))
	}
	obj, _, err := k8sDecoder.Decode(doc, nil, nil)
	return obj, err
}

// decodeIstio decodes an Istio object into its istio.io/client-go type. The spec is read
// with protojson, which refuses unknown fields: the types' own UnmarshalJSON accepts them.
func decodeIstio(doc []byte, gvk schema.GroupVersionKind) (runtime.Object, error) {
	obj, err := istioscheme.Scheme.New(gvk)
	if err != nil {
		return nil, err
	}
	var env struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            json.RawMessage   `json:"spec"`
	}
	if err := yaml.UnmarshalStrict(doc, &env); err != nil {
		return nil, err
	}
	v := reflect.ValueOf(obj).Elem()
	spec, ok := v.FieldByName("Spec").Addr().Interface().(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%s: spec is not a protobuf message", gvk)
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(env.Spec, spec); err != nil {
		return nil, fmt.Errorf("%s %s spec: %w", gvk.Kind, env.Metadata.Name, err)
	}
	v.FieldByName("TypeMeta").Set(reflect.ValueOf(env.TypeMeta))
	v.FieldByName("ObjectMeta").Set(reflect.ValueOf(env.Metadata))
	return obj, nil
}

func decodeKustomization(doc []byte) (*kustomizetypes.Kustomization, error) {
	var k kustomizetypes.Kustomization
	if err := yaml.UnmarshalStrict(doc, &k); err != nil {
		return nil, err
	}
	return &k, nil
}

// decodeBootstrap reads an Envoy bootstrap strictly (protojson refuses unknown fields, and
// every typed_config must name a known type) and checks its constraints.
func decodeBootstrap(doc []byte) (*bootstrapv3.Bootstrap, error) {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(j, &b); err != nil {
		return nil, err
	}
	return &b, b.ValidateAll()
}

// Placeholders of the local files, filled by scripts/run.sh and the e2e tests.
var localPlaceholders = strings.NewReplacer("${ADMIN_PORT}", "9901", "${XDS_HOST}", "127.0.0.1",
	"${XDS_PORT}", "18000", "${XDS_API}", "GRPC", "${NODE_ID}", "gateway-local", "${MODELS}", "/models",
	"${SCRAPE_INTERVAL}", "1s", "${RULES}", "/rules", "${GATEWAY_ADMIN}", "127.0.0.1:9901",
	"${CONTROLPLANE}", "127.0.0.1:18001", "${EXTPROC}", "127.0.0.1:9003", "${WORKERS}", `"127.0.0.1:8011", "127.0.0.1:8012"`)

// decodeFileDoc decodes one document of a file under manifests/ or istio/ by what it is.
func decodeFileDoc(path string, doc []byte) (any, error) {
	doc = []byte(localPlaceholders.Replace(string(doc)))
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return nil, err
	}
	base := filepath.Base(path)
	switch {
	case strings.HasPrefix(tm.APIVersion, "kustomize.config.k8s.io/"):
		return decodeKustomization(doc)
	case tm.APIVersion != "":
		return decodeObject(doc)
	case strings.HasSuffix(base, "bootstrap.yaml"):
		return decodeBootstrap(doc)
	case base == "registry.yaml":
		return registry.Parse(doc)
	case filepath.Base(filepath.Dir(path)) == "rules":
		return decodeRules(doc)
	case base == "prometheus-adapter.yaml":
		return decodeAdapterConfig(doc)
	case strings.HasPrefix(base, "prometheus"):
		return decodePrometheusConfig(doc)
	}
	return nil, errors.New("not a Kubernetes, Istio, KEDA or kustomize object, an Envoy bootstrap, a registry, a Prometheus configuration or rule file, or a prometheus-adapter configuration")
}

// yamlFiles lists the YAML files under the given directories, leaving out testdata
// directories: Go packages keep deliberately broken inputs there.
func yamlFiles(t *testing.T, roots ...string) []string {
	t.Helper()
	var files []string
	for _, root := range roots {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return files
}

func TestEveryYAMLDecodesStrictly(t *testing.T) {
	files := yamlFiles(t, ".", filepath.Join("..", "istio"))
	if len(files) < 20 {
		t.Fatalf("found only %d YAML files", len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs, err := splitDocs(b)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if len(docs) == 0 {
			t.Errorf("%s: no document", f)
		}
		for i, d := range docs {
			if _, err := decodeFileDoc(f, d); err != nil {
				t.Errorf("%s, document %d: %v", f, i+1, err)
			}
		}
	}
}

// Each decoder refuses a misspelled field, so the test above can fail.
func TestMisspelledFieldsAreRefused(t *testing.T) {
	cases := map[string]string{
		"deployment": `apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  replica: 2
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec: {containers: [{name: x, image: x}]}
`,
		"container field": `apiVersion: v1
kind: Pod
metadata: {name: x}
spec: {containers: [{name: x, image: x, readinessprobe: {}}]}
`,
		"virtualservice spec": `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [x]
  http: [{rout: [{destination: {host: x}}]}]
`,
		"istio metadata": `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: x, namespaces: y}
spec: {mtls: {mode: STRICT}}
`,
		"wasmplugin": `apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: x}
spec: {url: "oci://x", phaze: AUTHN}
`,
		"kustomization": `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resource: [a.yaml]
`,
		"bootstrap": `static_resource: {}
`,
	}
	for name, doc := range cases {
		path := "x.yaml"
		if name == "bootstrap" {
			path = "envoy-bootstrap.yaml"
		}
		if _, err := decodeFileDoc(path, []byte(doc)); err == nil {
			t.Errorf("%s: a misspelled field was accepted", name)
		}
	}
	// And the same documents spelled right are accepted.
	good := map[string]string{
		"virtualservice": `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: x}
spec:
  hosts: [x]
  http: [{route: [{destination: {host: x}}]}]
`,
		"wasmplugin": `apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: x}
spec: {url: "oci://x", phase: AUTHN}
`,
	}
	for name, doc := range good {
		if _, err := decodeFileDoc("x.yaml", []byte(doc)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
