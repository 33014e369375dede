package translate

import (
	"fmt"
	"strings"
	"testing"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
)

// BenchmarkTranslate10kModels2kResident: one full translation of 10,000 registered models,
// 2,000 of them ready on 20 workers.
func BenchmarkTranslate10kModels2kResident(b *testing.B) {
	var y strings.Builder
	y.WriteString("models:\n")
	for i := range 10000 {
		fmt.Fprintf(&y, "  - {name: m%05d, versions: [{version: \"1\", storageUri: \"file:///m/%d\"}]}\n", i, i)
	}
	reg, err := registry.Parse([]byte(y.String()))
	if err != nil {
		b.Fatal(err)
	}
	st := State{Registry: reg, Ready: map[placement.ModelVersion][]string{}}
	for w := range 20 {
		st.Workers = append(st.Workers, fmt.Sprintf("10.0.0.%d:8000", w+1))
	}
	for i := range 2000 {
		st.Ready[placement.ModelVersion{Name: fmt.Sprintf("m%05d", i*5), Version: "1"}] = []string{st.Workers[i%20]}
	}
	b.ResetTimer()
	for range b.N {
		res, err := Translate(cfg, st)
		if err != nil || len(res.Clusters) != 2002 {
			b.Fatalf("%d clusters, %v", len(res.Clusters), err)
		}
	}
}
