package istio

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDecode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		give    string
		wantVS  []string // namespace/name
		wantDR  []string
		wantErr string // substring; "" means no error
	}{
		{name: "empty", give: ""},
		{name: "comments and empty documents", give: "# nothing\n---\n---\n"},
		{name: "other kinds are skipped", give: "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n---\nkind: Kustomization\nresources: [a.yaml]\n"},
		{
			name:    "a misspelt spec field",
			give:    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hots: [iris]}\n",
			wantErr: `document 1: VirtualService default/v: spec: `,
		},
		{
			name:    "a misspelt metadata field",
			give:    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, labeles: {a: b}}\nspec: {host: iris}\n",
			wantErr: `unknown field "labeles"`,
		},
		{
			name:    "a misspelt top-level field",
			give:    "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspecs: {host: iris}\n",
			wantErr: `unknown field "specs"`,
		},
		{
			name:    "a wrong type",
			give:    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: iris}\n",
			wantErr: "document 1: VirtualService default/v: spec:",
		},
		{
			name:    "a duplicate key",
			give:    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: [a], hosts: [b]}\n",
			wantErr: "document 1:",
		},
		{
			name:    "no name",
			give:    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {namespace: models}\nspec: {hosts: [iris]}\n",
			wantErr: "metadata.name is empty",
		},
		{
			name:    "an unknown version of the group",
			give:    "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: v}\n",
			wantErr: `apiVersion "networking.istio.io/v2"`,
		},
		{name: "not an object", give: "- a\n- b\n", wantErr: "document 1: not a Kubernetes object"},
		{name: "not YAML", give: "a: [b\n", wantErr: "document 1:"},
		{
			name:    "the error names its document",
			give:    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ok}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad}\nspec: {http: [{rout: []}]}\n",
			wantErr: "document 2: VirtualService default/bad",
		},
		{
			name:   "every served version, snake_case field names too",
			give:   "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: a, namespace: m}\nspec: {hosts: [iris], export_to: [\"*\"]}\n---\napiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: b, namespace: m}\nspec: {host: iris}\n---\n{\"apiVersion\": \"networking.istio.io/v1\", \"kind\": \"VirtualService\", \"metadata\": {\"name\": \"c\"}}\n",
			wantVS: []string{"m/a", "default/c"},
			wantDR: []string{"m/b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			vss, drs, err := Decode([]byte(tt.give))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var gotVS, gotDR []string
			for _, vs := range vss {
				gotVS = append(gotVS, vs.Namespace+"/"+vs.Name)
			}
			for _, dr := range drs {
				gotDR = append(gotDR, dr.Namespace+"/"+dr.Name)
			}
			if strings.Join(gotVS, ",") != strings.Join(tt.wantVS, ",") || strings.Join(gotDR, ",") != strings.Join(tt.wantDR, ",") {
				t.Fatalf("decoded VirtualServices %v and DestinationRules %v, want %v and %v", gotVS, gotDR, tt.wantVS, tt.wantDR)
			}
		})
	}
}

func TestDecodeTestdata(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file    string
		wantVS  int
		wantDR  int
		wantErr string
	}{
		{file: "iris-canary.yaml", wantVS: 1, wantDR: 1},
		{file: "exported-list.yaml", wantVS: 1},
		{file: "misspelt.yaml", wantErr: "subst"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			vss, drs, err := Decode(data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(vss) != tt.wantVS || len(drs) != tt.wantDR {
				t.Fatalf("%d VirtualServices, %d DestinationRules, err %v; want %d, %d", len(vss), len(drs), err, tt.wantVS, tt.wantDR)
			}
		})
	}
	// The example converts as its comment says.
	data, err := os.ReadFile("testdata/iris-canary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	res := convert(t, string(data))
	if len(res.Rules["iris"]) != 2 || res.Rules["iris"][1].Split[1].Weight != 10 || res.Rules["iris"][1].Mirror.Percent != 5 {
		t.Fatalf("iris rules %+v", res.Rules["iris"])
	}
}

// FuzzDecode feeds Decode arbitrary files: it must never panic, and whatever it accepts must
// convert without panicking either.
func FuzzDecode(f *testing.F) {
	for _, name := range []string{"iris-canary.yaml", "exported-list.yaml", "misspelt.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {name: a}, spec: {host: iris, subsets: [{name: x}]}}]\n"))
	f.Add([]byte("---\n---\n{}\n"))
	reg := testReg(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		vss, drs, err := Decode(data)
		if err != nil {
			return
		}
		Convert(vss, drs, reg)
	})
}
