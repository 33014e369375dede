package placement

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestValidateID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		ok   bool
	}{
		{"iris", true},
		{"Iris-v2.onnx_1", true},
		{"a", true},
		{"7", true},
		{strings.Repeat("a", 253), true},
		{strings.Repeat("a", 254), false},
		{"", false},
		{"-iris", false},
		{"iris-", false},
		{".hidden", false},
		{"a..b", false},
		{"a/b", false},
		{"a%2fb", false},
		{"a b", false},
		{"a:b", false},
		{"ünï", false},
		{"a\x00b", false},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Parallel()
			err := ValidateID(tt.give)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateID(%q) = %v, want ok=%v", tt.give, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidID) {
				t.Fatalf("error %v does not wrap ErrInvalidID", err)
			}
		})
	}
}

func TestParseModelVersionRoundTrip(t *testing.T) {
	t.Parallel()
	m := ModelVersion{Name: "digits", Version: "12"}
	got, err := ParseModelVersion(m.String())
	if err != nil || got != m {
		t.Fatalf("ParseModelVersion(%q) = %v, %v", m.String(), got, err)
	}
	if _, err := ParseModelVersion("digits"); err == nil {
		t.Fatal("a string without a version parsed")
	}
}

func TestNewerVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want bool
	}{
		{"10", "9", true},
		{"9", "10", false},
		{"2", "2", false},
		{"b", "a", true},
		{"1", "canary", true},
		{"canary", "1", false},
	}
	for _, tt := range tests {
		if got := NewerVersion(tt.a, tt.b); got != tt.want {
			t.Errorf("NewerVersion(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestChooseEvictions(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1000, 0)
	mv := func(n string) ModelVersion { return ModelVersion{Name: n, Version: "1"} }
	idle := func(n string, bytes int64, age int) Candidate {
		return Candidate{Model: mv(n), State: StateReady, Bytes: bytes, LastUsed: t0.Add(-time.Duration(age) * time.Second)}
	}
	tests := []struct {
		name   string
		give   []Candidate
		need   int64
		want   []string
		wantOK bool
	}{
		{"nothing needed", []Candidate{idle("a", 10, 1)}, 0, nil, true},
		{"least recently used first", []Candidate{idle("new", 10, 1), idle("old", 10, 100), idle("mid", 10, 50)}, 15, []string{"old", "mid"}, true},
		{"stops once enough is freed", []Candidate{idle("a", 100, 3), idle("b", 100, 2)}, 50, []string{"a"}, true},
		{"skips busy, pinned, recent, loading and draining", []Candidate{
			{Model: mv("busy"), State: StateReady, Bytes: 50, InFlight: 1},
			{Model: mv("pinned"), State: StateReady, Bytes: 50, Pinned: true},
			{Model: mv("loading"), State: StateLoading, Bytes: 50},
			{Model: mv("draining"), State: StateDraining, Bytes: 50},
			{Model: mv("recent"), State: StateReady, Bytes: 50, Recent: true},
			idle("free", 50, 1),
		}, 40, []string{"free"}, true},
		{"not enough evictable memory changes nothing", []Candidate{
			{Model: mv("pinned"), State: StateReady, Bytes: 100, Pinned: true}, idle("small", 10, 9),
		}, 50, nil, false},
		{"ties broken by id", []Candidate{idle("b", 10, 5), idle("a", 10, 5)}, 5, []string{"a"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := ChooseEvictions(tt.give, tt.need)
			var names []string
			for _, c := range got {
				names = append(names, c.Model.Name)
			}
			if ok != tt.wantOK {
				t.Fatalf("ok = %v, want %v", ok, tt.wantOK)
			}
			if diff := cmp.Diff(tt.want, names); diff != "" {
				t.Fatalf("evictions (-want +got):\n%s", diff)
			}
		})
	}
}
