package storage

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func testConfigs() Configs {
	return ParseConfigs(map[string][]byte{
		"default": []byte(`{"type":"s3","access_key_id":"AK","secret_access_key":"SK","endpoint_url":"http://minio:9000","default_bucket":"models","region":"us-south"}`),
		"other":   []byte(`{"type":"s3","access_key_id":"AK2","secret_access_key":"SK2","endpoint_url":"http://minio:9000","bucket":"models"}`),
		"gcs":     []byte(`{"type":"gcs","bucket":"g"}`),
		"web":     []byte(`{"type":"https","endpoint_url":"https://files.example/models/"}`),
		"plain":   []byte(`{"type":"http","endpoint_url":"http://files.example/"}`),
		"nobkt":   []byte(`{"type":"s3"}`),
		"broken":  []byte(`{"type":"s3","secret_access_key":"only-the-secret"}`),
		"notjson": []byte(`{"type": "s3", "secret_access_key": "SK3"`),
	})
}

func TestResolveLocations(t *testing.T) {
	t.Parallel()
	cfgs := testConfigs()
	tests := []struct {
		name      string
		give      Location
		allowHTTP bool
		want      string // target.name()
		wantErr   string
	}{
		{"s3 uri", Location{URI: "s3://bucket/iris/1/model.onnx"}, false, "s3://bucket/iris/1/model.onnx", ""},
		{"s3 prefix", Location{URI: "s3://bucket/iris/1/"}, false, "s3://bucket/iris/1/", ""},
		{"gs uri", Location{URI: "gs://b/m"}, false, "gs://b/m", ""},
		{"https uri", Location{URI: "https://host/m.onnx"}, false, "https://host/m.onnx", ""},
		{"http refused", Location{URI: "http://host/m.onnx"}, false, "", "--allow-http"},
		{"http allowed", Location{URI: "http://host/m.onnx"}, true, "http://host/m.onnx", ""},
		{"user info hidden or refused", Location{URI: "https://u:p@host/m"}, false, "", "user info"},
		{"unknown scheme", Location{URI: "ftp://host/m"}, false, "", "not supported"},
		{"no scheme", Location{URI: "/models/m"}, false, "", "no scheme"},
		{"s3 without bucket", Location{URI: "s3:///m"}, false, "", "no bucket"},
		{"s3 traversal", Location{URI: "s3://b/a/../../m"}, false, "", `".."`},
		{"default key", Location{Path: "iris/1"}, false, "s3://models/iris/1", ""},
		{"key with bucket", Location{Key: "other", Bucket: "x", Path: "/iris/1"}, false, "s3://x/iris/1", ""},
		{"gcs key", Location{Key: "gcs", Path: "m"}, false, "gs://g/m", ""},
		{"https key", Location{Key: "web", Path: "iris.onnx"}, false, "https://files.example/models/iris.onnx", ""},
		{"http key refused", Location{Key: "plain", Path: "iris.onnx"}, false, "", "--allow-http"},
		{"key without bucket", Location{Key: "nobkt", Path: "m"}, false, "", "names no bucket"},
		{"unknown key", Location{Key: "nope", Path: "m"}, false, "", "keys: default, gcs"},
		{"broken key", Location{Key: "broken", Path: "m"}, false, "", "go together"},
		{"key path traversal", Location{Path: "a/../b"}, false, "", `".."`},
		{"uri and key", Location{URI: "s3://b/m", Key: "default"}, false, "", "exclusive"},
		{"bad sha256", Location{URI: "s3://b/m", SHA256: "ABC"}, false, "", "64 lower-case hex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := resolve(tt.give, cfgs, tt.allowHTTP)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrBadURI) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("resolve(%+v) = %v, want ErrBadURI with %q", tt.give, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got.name()); diff != "" {
				t.Fatal(diff)
			}
		})
	}
}

func TestTierEntriesArePerStorageKey(t *testing.T) {
	t.Parallel()
	cfgs := testConfigs()
	a, err := resolve(Location{Key: "default", Path: "iris/1"}, cfgs, false)
	must(t, err)
	b, err := resolve(Location{Key: "other", Path: "iris/1"}, cfgs, false)
	must(t, err)
	if a.name() != b.name() || a.id() == b.id() {
		t.Fatalf("the same object through two keys: %s %s, ids %s %s", a.name(), b.name(), a.id(), b.id())
	}
}

func TestConfigsNeverShowSecrets(t *testing.T) {
	t.Parallel()
	cfgs := testConfigs()
	e, err := cfgs.Get("default")
	must(t, err)
	var all []string
	all = append(all, e.String(), e.LogValue().String())
	for _, err := range cfgs.Broken() {
		all = append(all, err.Error())
	}
	for _, k := range []string{"broken", "notjson"} {
		_, err := cfgs.Get(k)
		all = append(all, err.Error())
	}
	for _, s := range all {
		for _, secret := range []string{"SK", "only-the-secret", "AK"} {
			if strings.Contains(s, secret) {
				t.Fatalf("%q shows a secret", s)
			}
		}
	}
	if diff := cmp.Diff([]string{"default", "gcs", "nobkt", "other", "plain", "web"}, cfgs.Keys()); diff != "" {
		t.Fatal(diff)
	}
}

func FuzzResolveLocation(f *testing.F) {
	cfgs := testConfigs()
	for _, s := range []string{"s3://bucket/iris/1/model.onnx", "https://host/m.tar.gz", "gs://b/../x", "s3://b/a%2F..%2Fb", "file:///etc/passwd", "iris/1"} {
		f.Add(s, "", "", "")
		f.Add("", "default", "", s)
	}
	f.Fuzz(func(t *testing.T, uri, key, bucket, path string) {
		got, err := resolve(Location{URI: uri, Key: key, Bucket: bucket, Path: path}, cfgs, true)
		if err != nil {
			if !errors.Is(err, ErrBadURI) {
				t.Fatalf("error %v is not ErrBadURI", err)
			}
			return
		}
		if got.scheme == "s3" || got.scheme == "gs" {
			if checkKey(got.key) != nil || strings.HasPrefix(got.key, "/") {
				t.Fatalf("resolved key %q escapes its bucket", got.key)
			}
		}
		for _, secret := range []string{"SK", "AK2"} {
			if strings.Contains(got.name(), secret) && !strings.Contains(uri+key+bucket+path, secret) {
				t.Fatalf("name %q shows a secret", got.name())
			}
		}
	})
}

func FuzzParseConfigs(f *testing.F) {
	f.Add(`{"type":"s3","access_key_id":"a","secret_access_key":"0123456789abcdef","endpoint_url":"http://h:9000","bucket":"m"}`)
	f.Add(`{"type":"gcs","private_key":"{}"}`)
	f.Add(`{"type":"s3","certificate":"x"}`)
	f.Add(`[1,2`)
	f.Fuzz(func(t *testing.T, entry string) {
		cfgs := ParseConfigs(map[string][]byte{"k": []byte(entry)})
		c, err := cfgs.Get("k")
		if err != nil {
			if !errors.Is(err, ErrBadURI) || len(cfgs.Keys()) != 0 {
				t.Fatalf("a refused entry: %v, keys %v", err, cfgs.Keys())
			}
			return
		}
		if c.validate() != nil {
			t.Fatal("an invalid entry was kept")
		}
		// A secret of a few characters may occur in any text by chance; a real one does not.
		if len(c.SecretAccessKey) >= 8 && strings.Contains(c.String(), c.SecretAccessKey) && !strings.Contains(c.Type+c.EndpointURL+c.bucket()+c.Region, c.SecretAccessKey) {
			t.Fatalf("String shows the secret: %s", c)
		}
	})
}
