package istio

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// group is the API group of VirtualServices and DestinationRules. Every version of it that
// Istio serves (v1, v1beta1, v1alpha3) has the same spec, so all decode into the v1 types.
const group = "networking.istio.io"

// Decode reads the VirtualServices and DestinationRules of a stream of YAML (or JSON)
// documents separated by "---", including those inside a kind: List. Documents of other
// kinds are skipped. The objects of group networking.istio.io are decoded strictly: an
// unknown or misspelt field anywhere is an error, as is an object without a name. A
// namespace left out is "default", as kubectl would apply it. The first error stops the
// decoding and names its document (counted from 1), so a file is taken whole or not at all.
func Decode(data []byte) ([]*networkingv1.VirtualService, []*networkingv1.DestinationRule, error) {
	var d decoder
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return d.vss, d.drs, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("document %d: %w", n, err)
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, nil, fmt.Errorf("document %d: %w", n, err)
		}
		if err := d.object(js); err != nil {
			return nil, nil, fmt.Errorf("document %d: %w", n, err)
		}
	}
}

type decoder struct {
	vss []*networkingv1.VirtualService
	drs []*networkingv1.DestinationRule
}

// object decodes one JSON document; null (an empty document) and other kinds are skipped.
func (d *decoder) object(js []byte) error {
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil
	}
	var head struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Items      []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}
	if head.APIVersion == "v1" && head.Kind == "List" {
		for i, item := range head.Items {
			if err := d.object(item); err != nil {
				return fmt.Errorf("items[%d]: %w", i, err)
			}
		}
		return nil
	}
	g, version, _ := strings.Cut(head.APIVersion, "/")
	if g != group || head.Kind != KindVirtualService && head.Kind != KindDestinationRule {
		return nil
	}
	switch version {
	case "v1", "v1beta1", "v1alpha3":
	default:
		return fmt.Errorf("%s: apiVersion %q: not %s/v1, v1beta1 or v1alpha3", head.Kind, head.APIVersion, group)
	}
	var obj struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   metav1.ObjectMeta `json:"metadata"`
		Spec       json.RawMessage   `json:"spec"`
		// Status is written by the cluster; exports of live objects carry it. Ignored.
		Status json.RawMessage `json:"status"`
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&obj); err != nil {
		return fmt.Errorf("%s: %w", head.Kind, err)
	}
	if obj.Metadata.Name == "" {
		return fmt.Errorf("%s: metadata.name is empty", head.Kind)
	}
	if obj.Metadata.Namespace == "" {
		obj.Metadata.Namespace = metav1.NamespaceDefault
	}
	what := fmt.Sprintf("%s %s/%s", head.Kind, obj.Metadata.Namespace, obj.Metadata.Name)
	tm := metav1.TypeMeta{APIVersion: head.APIVersion, Kind: head.Kind}
	switch head.Kind {
	case KindVirtualService:
		vs := &networkingv1.VirtualService{TypeMeta: tm, ObjectMeta: obj.Metadata}
		if err := spec(obj.Spec, &vs.Spec); err != nil {
			return fmt.Errorf("%s: spec: %w", what, err)
		}
		d.vss = append(d.vss, vs)
	default:
		dr := &networkingv1.DestinationRule{TypeMeta: tm, ObjectMeta: obj.Metadata}
		if err := spec(obj.Spec, &dr.Spec); err != nil {
			return fmt.Errorf("%s: spec: %w", what, err)
		}
		d.drs = append(d.drs, dr)
	}
	return nil
}

// spec decodes a spec with protobuf's JSON mapping, which knows the Istio field names in
// both spellings (exportTo, export_to) and refuses unknown ones.
func spec(js json.RawMessage, m proto.Message) error {
	if len(js) == 0 || bytes.Equal(js, []byte("null")) {
		return nil
	}
	return protojson.Unmarshal(js, m)
}
