package modellabel

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLabelsAreBounded(t *testing.T) {
	s := New(2)
	got := []string{s.Label("iris"), s.Label("digits"), s.Label("fraud"), s.Label("iris"), s.Label("bad..id")}
	if diff := cmp.Diff([]string{"iris", "digits", Other, "iris", Other}, got); diff != "" {
		t.Fatalf("labels (-want +got):\n%s", diff)
	}
}
