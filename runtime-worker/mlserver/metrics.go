package mlserver

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/modelserver"
)

// answered are MLServer's counters of requests answered per model, with a label model and
// a label version ("None" for a request that named no version).
var answered = []string{"model_infer_request_success_total", "model_infer_request_failure_total"}

// requestCounts reads, for each model name, the requests MLServer has answered.
func (s *Server) requestCounts(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.metricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", s.metricsURL, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s.metricsURL, err)
	}
	counts := map[string]float64{}
	for _, name := range answered {
		for _, m := range families[name].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "model" {
					counts[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return counts, nil
}

// used turns the counts into uses: now for each model whose count grew since the last poll
// (MLServer keeps a model's counters after it is unloaded, so a count that fell means a
// restarted MLServer, which answered that many since).
func (s *Server) used(counts map[string]float64) []modelserver.Use {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	var uses []modelserver.Use
	for name, n := range counts {
		if before, ok := s.served[name]; !ok && n > 0 || ok && n != before {
			uses = append(uses, modelserver.Use{Model: placement.ModelVersion{Name: name}, Last: now})
		}
	}
	s.served = counts
	return uses
}
