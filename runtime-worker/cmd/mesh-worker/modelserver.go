package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/modelmesh/mesh/runtime-worker/mlserver"
	"github.com/modelmesh/mesh/runtime-worker/modelserver"
	"github.com/modelmesh/mesh/runtime-worker/triton"
)

// serverConfig locates a model server beside the worker that serves inference on its own
// ports (Triton, MLServer): the flags --NAME-grpc, --NAME-http, --NAME-repository and
// --NAME-poll.
type serverConfig struct {
	name       string
	GRPC, HTTP string
	Repository string
	Poll       time.Duration
}

func (s *serverConfig) RegisterFlags(fs *flag.FlagSet, name, title, grpcPort, httpPort string) {
	s.name = name
	fs.StringVar(&s.GRPC, name+"-grpc", "", fmt.Sprintf("%s: %s's gRPC address, as the gateway reaches it; %q means %s beside the worker (dialled on loopback, advertised on --advertise-host)", name, title, grpcPort, title))
	fs.StringVar(&s.HTTP, name+"-http", "", fmt.Sprintf("%s: %s's HTTP address, as the gateway reaches it; %q means beside the worker, as for --%s-grpc", name, title, httpPort, name))
	fs.StringVar(&s.Repository, name+"-repository", "", fmt.Sprintf("%s: %s's model repository directory, owned by the worker", name, title))
	fs.DurationVar(&s.Poll, name+"-poll", 2*time.Second, fmt.Sprintf("%s: interval of polls of %s (last use, liveness)", name, title))
}

func (s *serverConfig) Validate() error {
	var errs []error
	if s.GRPC == "" || s.HTTP == "" || s.Repository == "" {
		errs = append(errs, fmt.Errorf("--runtime %s needs --%s-grpc, --%s-http and --%s-repository", s.name, s.name, s.name, s.name))
	}
	if s.Poll <= 0 {
		errs = append(errs, fmt.Errorf("--%s-poll must be positive", s.name))
	}
	return errors.Join(errs...)
}

// backend connects to the server: gRPC dialled on loopback when the address names no host.
func (s *serverConfig) backend(log *slog.Logger, metrics string) (*modelserver.Backend, error) {
	cfg := modelserver.Config{Repository: s.Repository, GRPCAddr: advertised("", "127.0.0.1", s.GRPC)}
	if s.name == "mlserver" {
		return mlserver.New(mlserver.Config{Config: cfg, MetricsURL: metrics}, log)
	}
	return triton.New(cfg, log)
}
