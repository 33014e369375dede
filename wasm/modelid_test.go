package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/modelmesh/mesh/internal/placement"
)

func TestResolve(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		give    [][2]string
		want    placement.ModelVersion
		source  string
		body    string // method whose body must be read
		wantErr string // substring; "" means no error
	}{
		{name: "x-model-id wins over everything",
			give: [][2]string{{":path", "/v2/models/canonical/infer"}, {"mm-model-id", "mm"}, {"mm-vmodel-id", "vm"}, {"x-model-id", "canonical"}},
			want: placement.ModelVersion{Name: "canonical"}, source: "header x-model-id"},
		{name: "mm-vmodel-id before mm-model-id",
			give: [][2]string{{":path", "/inference.GRPCInferenceService/ModelInfer"}, {"mm-model-id", "mm"}, {"mm-vmodel-id", "vm"}},
			want: placement.ModelVersion{Name: "vm"}, source: "header mm-vmodel-id"},
		{name: "mm-model-id before the path",
			give: [][2]string{{":path", "/v2/models/mm/versions/4/infer"}, {"mm-model-id", "mm"}},
			want: placement.ModelVersion{Name: "mm", Version: "4"}, source: "header mm-model-id"},
		{name: "header and path name different models",
			give:    [][2]string{{":path", "/v2/models/frompath/infer"}, {"x-model-id", "iris"}},
			wantErr: `names model "iris" but the path names "frompath"`},
		{name: "header and path name different versions",
			give:    [][2]string{{":path", "/v2/models/iris/versions/2/infer"}, {"x-model-id", "iris"}, {"x-model-version", "3"}},
			wantErr: `names version "3" but the path names "2"`},
		{name: "path with version",
			give: [][2]string{{":path", "/v2/models/iris/versions/2/infer"}},
			want: placement.ModelVersion{Name: "iris", Version: "2"}, source: sourcePath},
		{name: "version header and the path's must agree",
			give:    [][2]string{{":path", "/v2/models/iris/versions/2/infer"}, {"x-model-version", "3"}},
			wantErr: `names version "3" but the path names "2"`},
		{name: "version header equal to the path's",
			give: [][2]string{{":path", "/v2/models/iris/versions/2/infer"}, {"x-model-version", "2"}},
			want: placement.ModelVersion{Name: "iris", Version: "2"}, source: sourcePath},
		{name: "version header with a header id",
			give: [][2]string{{"x-model-id", "iris"}, {"x-model-version", "v1.2"}},
			want: placement.ModelVersion{Name: "iris", Version: "v1.2"}, source: "header x-model-id"},
		{name: "empty version header is no version",
			give: [][2]string{{"x-model-id", "iris"}, {"x-model-version", ""}},
			want: placement.ModelVersion{Name: "iris"}, source: "header x-model-id"},
		{name: "empty version header leaves the path's",
			give: [][2]string{{":path", "/v2/models/iris/versions/7"}, {"x-model-version", ""}},
			want: placement.ModelVersion{Name: "iris", Version: "7"}, source: sourcePath},
		{name: "header id ignores a bad path",
			give: [][2]string{{":path", "/v2/models/a%2Fb/infer"}, {"x-model-id", "iris"}},
			want: placement.ModelVersion{Name: "iris"}, source: "header x-model-id"},
		{name: "health path names no model", give: [][2]string{{":path", "/v2/health/ready"}}},
		{name: "no path", give: [][2]string{{"host", "x"}}},
		{name: "gRPC ModelInfer without header reads the body",
			give: [][2]string{{":path", "/inference.GRPCInferenceService/ModelInfer"}, {"content-type", "application/grpc"}},
			body: "ModelInfer"},
		{name: "gRPC with +proto reads the body",
			give: [][2]string{{":path", "/inference.GRPCInferenceService/ModelReady"}, {"content-type", "application/grpc+proto; charset=x"}},
			body: "ModelReady"},
		{name: "gRPC with header does not read the body",
			give: [][2]string{{":path", "/inference.GRPCInferenceService/ModelInfer"}, {"content-type", "application/grpc"}, {"x-model-id", "iris"}},
			want: placement.ModelVersion{Name: "iris"}, source: "header x-model-id"},
		{name: "gRPC ServerLive names no model",
			give: [][2]string{{":path", "/inference.GRPCInferenceService/ServerLive"}, {"content-type", "application/grpc"}}},
		{name: "grpc-web text is not parsed",
			give: [][2]string{{":path", "/inference.GRPCInferenceService/ModelInfer"}, {"content-type", "application/grpc-web-text"}}},
		{name: "gRPC path without gRPC content type",
			give: [][2]string{{":path", "/inference.GRPCInferenceService/ModelInfer"}, {"content-type", "application/json"}}},
		{name: "invalid header id", give: [][2]string{{"x-model-id", "a/b"}}, wantErr: "model name from header x-model-id"},
		{name: "empty header id", give: [][2]string{{"x-model-id", ""}}, wantErr: "empty"},
		{name: "invalid mm-model-id", give: [][2]string{{"mm-model-id", "-x"}}, wantErr: "header mm-model-id"},
		{name: "invalid version header",
			give:    [][2]string{{"x-model-id", "iris"}, {"x-model-version", "1..2"}},
			wantErr: "model version from header x-model-version"},
		{name: "two different x-model-id values",
			give:    [][2]string{{"x-model-id", "a"}, {"x-model-id", "b"}},
			wantErr: "x-model-id has 2 different values"},
		{name: "repeated identical x-model-id values",
			give: [][2]string{{"x-model-id", "a"}, {"x-model-id", "a"}},
			want: placement.ModelVersion{Name: "a"}, source: "header x-model-id"},
		{name: "two different versions",
			give:    [][2]string{{"x-model-id", "a"}, {"x-model-version", "1"}, {"x-model-version", "2"}},
			wantErr: "x-model-version has 2 different values"},
		{name: "invalid path id", give: [][2]string{{":path", "/v2/models/a..b/infer"}}, wantErr: "model name from the KServe v2 path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := resolve(newRequest(tt.give))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, errInvalid) {
					t.Fatalf("error %v, want one containing %q wrapping errInvalid", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got.model); diff != "" {
				t.Errorf("model (-want +got):\n%s", diff)
			}
			if got.source != tt.source || got.bodyMethod != tt.body {
				t.Errorf("source %q body %q, want %q %q", got.source, got.bodyMethod, tt.source, tt.body)
			}
		})
	}
}

func TestParsePath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		path          string
		name, version string
		ok            bool
		wantErr       bool
	}{
		{path: "/v2/models/iris/infer", name: "iris", ok: true},
		{path: "/v2/models/iris", name: "iris", ok: true},
		{path: "/v2/models/iris/", name: "iris", ok: true},
		{path: "/v2/models/iris/ready", name: "iris", ok: true},
		{path: "/v2/models/iris?x=/v2/models/other", name: "iris", ok: true},
		{path: "/v2/models/iris/infer?version=9", name: "iris", ok: true},
		{path: "/v2/models/iris/versions/1/infer", name: "iris", version: "1", ok: true},
		{path: "/v2/models/iris/versions/1", name: "iris", version: "1", ok: true},
		{path: "/v2/models/iris/versions/1?q", name: "iris", version: "1", ok: true},
		{path: "/v2/models/my_model.v2-b/versions/2024.01-rc_1/infer", name: "my_model.v2-b", version: "2024.01-rc_1", ok: true},
		{path: "/v2/models/iris/versionsX/infer", name: "iris", ok: true},
		{path: "/v2/models/" + strings.Repeat("a", 253) + "/infer", name: strings.Repeat("a", 253), ok: true},
		{path: "/v2/health/ready"},
		{path: "/v2"},
		{path: "/v2/models"},
		{path: "/"},
		{path: ""},
		{path: "/V2/models/iris/infer"},
		{path: "/v1/models/iris:predict"},
		{path: "/prefix/v2/models/iris/infer"},
		{path: "/v2/models/", wantErr: true},
		{path: "/v2/models//infer", wantErr: true},
		{path: "/v2/models/?q=1", wantErr: true},
		{path: "/v2/models/../infer", wantErr: true},
		{path: "/v2/models/./infer", wantErr: true},
		{path: "/v2/models/a..b/infer", wantErr: true},
		{path: "/v2/models/a%2Fb/infer", wantErr: true},
		{path: "/v2/models/a%2fb", wantErr: true},
		{path: "/v2/models/%2E%2E/infer", wantErr: true},
		{path: "/v2/models/iris%00/infer", wantErr: true},
		{path: "/v2/models/iris;x/infer", wantErr: true},
		{path: "/v2/models/-iris/infer", wantErr: true},
		{path: "/v2/models/iris./infer", wantErr: true},
		{path: "/v2/models/ir is/infer", wantErr: true},
		{path: "/v2/models/iris:predict", wantErr: true},
		{path: "/v2/models/irís/infer", wantErr: true},
		{path: "/v2/models/" + strings.Repeat("a", 254) + "/infer", wantErr: true},
		{path: "/v2/models/iris/versions", wantErr: true},
		{path: "/v2/models/iris/versions/", wantErr: true},
		{path: "/v2/models/iris/versions//infer", wantErr: true},
		{path: "/v2/models/iris/versions/../infer", wantErr: true},
		{path: "/v2/models/iris/versions/1%2F2/infer", wantErr: true},
		{path: "/v2/models/iris/versions/_1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			t.Parallel()
			name, version, ok, err := parsePath(tt.path)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parsePath(%q) error %v, want error %v", tt.path, err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, errInvalid) {
				t.Errorf("error %v does not wrap errInvalid", err)
			}
			if name != tt.name || version != tt.version || ok != tt.ok {
				t.Errorf("parsePath(%q) = %q, %q, %v; want %q, %q, %v", tt.path, name, version, ok, tt.name, tt.version, tt.ok)
			}
		})
	}
}

// FuzzParsePath checks that the path parser never panics and that whatever it accepts
// passes the id grammar and came from the path.
func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/v2/models/iris/infer", "/v2/models/iris/versions/1/infer", "/v2/models/a%2Fb",
		"/v2/models/../x", "/v2/health/ready", "/v2/models/iris?x", "/v2/models/iris/versions/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, path string) {
		name, version, ok, err := parsePath(path)
		if err != nil {
			if ok || !errors.Is(err, errInvalid) {
				t.Fatalf("parsePath(%q): ok %v with error %v", path, ok, err)
			}
			return
		}
		if !ok {
			if name != "" || version != "" {
				t.Fatalf("parsePath(%q): not ok but %q %q", path, name, version)
			}
			return
		}
		if err := (placement.ModelVersion{Name: name, Version: version}).Validate(); err != nil {
			t.Fatalf("parsePath(%q) accepted %q %q: %v", path, name, version, err)
		}
		p, _, _ := strings.Cut(path, "?")
		if !strings.HasPrefix(p, "/v2/models/"+name) {
			t.Fatalf("parsePath(%q) = %q, not the path's segment", path, name)
		}
		if version != "" && !strings.Contains(p, "/versions/"+version) {
			t.Fatalf("parsePath(%q) version %q not in the path", path, version)
		}
	})
}
