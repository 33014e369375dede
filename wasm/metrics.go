package main

import "fmt"

// Stat names, under Envoy's wasmcustom namespace. A model's counter is the prefix followed
// by the model name, which may itself contain dots; it is the last part of the name, so
// one tag extractor regex takes it whole (docs/wasm.md):
//
//	^wasmcustom\.modelmesh\.model_requests(\.(.+))$   tag model_id
const (
	statModelPrefix = "modelmesh.model_requests."
	statOverflow    = "modelmesh.model_requests_overflow"
	statInvalid     = "modelmesh.invalid_requests"
)

// counter is one host counter.
type counter interface{ Increment(offset uint64) }

// metricHost defines counters in the host.
type metricHost interface {
	DefineCounter(name string) (counter, error)
}

// stats counts requests per model in at most maxModels counters, so that clients cannot
// grow Envoy's stats without bound; further models are counted in the overflow counter.
// It belongs to one plugin context and is used from the host's single thread.
type stats struct {
	host      metricHost
	warnf     func(format string, args ...any)
	maxModels int
	models    map[string]counter
	invalid   counter
	overflow  counter
	// full records that the bound was reached, to warn once.
	full bool
}

func newStats(host metricHost, maxModels int, warnf func(string, ...any)) (*stats, error) {
	s := &stats{host: host, warnf: warnf, maxModels: maxModels, models: map[string]counter{}}
	var err error
	if s.invalid, err = host.DefineCounter(statInvalid); err != nil {
		return nil, fmt.Errorf("define %s: %w", statInvalid, err)
	}
	if s.overflow, err = host.DefineCounter(statOverflow); err != nil {
		return nil, fmt.Errorf("define %s: %w", statOverflow, err)
	}
	return s, nil
}

// countModel counts one request for the model name, which has passed the id grammar.
func (s *stats) countModel(name string) {
	c, ok := s.models[name]
	if !ok {
		if len(s.models) >= s.maxModels {
			if !s.full {
				s.full = true
				s.warnf("modelid: %d models counted, the max_models bound; further models count in %s", len(s.models), statOverflow)
			}
			s.overflow.Increment(1)
			return
		}
		var err error
		if c, err = s.host.DefineCounter(statModelPrefix + name); err != nil {
			s.warnf("modelid: define counter for model %s: %v", name, err)
			s.overflow.Increment(1)
			return
		}
		s.models[name] = c
	}
	c.Increment(1)
}

// countInvalid counts one refused request.
func (s *stats) countInvalid() { s.invalid.Increment(1) }
