package registry

import (
	"errors"
	"strings"
	"testing"
)

func TestWithTraffic(t *testing.T) {
	t.Parallel()
	base, err := Parse([]byte(`
models:
  - name: iris
    versions: [{version: "1", storageUri: "file:///i/1"}, {version: "2", storageUri: "file:///i/2"}]
    traffic: [{split: [{version: "1", weight: 1}]}]
  - name: digits
    versions: [{version: "1", storageUri: "file:///d/1"}]
`))
	if err != nil {
		t.Fatal(err)
	}
	canary := []Rule{{Source: "VirtualService models/iris http[0]", Split: []Weighted{{Version: "1", Weight: 90}, {Version: "2", Weight: 10}}}}
	tests := []struct {
		name    string
		give    map[string][]Rule
		wantErr []string // substrings of the error; none means valid
	}{
		{name: "replaces the rules", give: map[string][]Rule{"iris": canary}},
		{name: "no rules clears them", give: map[string][]Rule{"iris": nil}},
		{name: "unknown model", give: map[string][]Rule{"fraud": canary}, wantErr: []string{`model "fraud": not registered`}},
		{
			name:    "invalid rule names its model",
			give:    map[string][]Rule{"digits": canary},
			wantErr: []string{`model "digits"`, `version "2" is not registered`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := base.WithTraffic(tt.give)
			if len(tt.wantErr) > 0 {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("err = %v, want ErrInvalid", err)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not mention %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for name, rules := range tt.give {
				if m, _ := got.Model(name); len(m.Traffic) != len(rules) {
					t.Errorf("%s has %d rules, want %d", name, len(m.Traffic), len(rules))
				}
			}
			if m, _ := base.Model("iris"); len(m.Traffic) != 1 || m.Traffic[0].Split[0].Weight != 1 {
				t.Errorf("the original registry changed: %+v", m.Traffic)
			}
			if _, named := tt.give["digits"]; !named {
				if m, ok := got.Model("digits"); !ok || len(m.Traffic) != 0 {
					t.Errorf("a model not named was changed: %+v", m)
				}
			}
		})
	}
}
