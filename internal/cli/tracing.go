package cli

import (
	"flag"

	"github.com/modelmesh/mesh/internal/tracing"
)

// Tracing holds where a binary sends its spans: the OTLP/gRPC collector, empty for none.
type Tracing struct {
	Endpoint string
}

// RegisterFlags declares the setting on fs; spans says, for the help text, what the binary's
// spans are of.
func (t *Tracing) RegisterFlags(fs *flag.FlagSet, spans string) {
	fs.StringVar(&t.Endpoint, "otlp-endpoint", "", "OTLP/gRPC collector, host:port, for spans of "+spans+" whose trace is sampled (empty: no tracing)")
}

// Validate checks the endpoint's form.
func (t Tracing) Validate() error { return t.Config("", "").Validate("otlp-endpoint") }

// Config is the tracing of the binary named service; instance, when set, is its
// service.instance.id (a worker's id).
func (t Tracing) Config(service, instance string) tracing.Config {
	return tracing.Config{Endpoint: t.Endpoint, Service: service, Instance: instance}
}
