// Package cli holds the command-line conventions every mesh binary shares: every flag can
// also be set by an environment variable (--some-flag of a binary with prefix MESH_WORKER_
// is MESH_WORKER_SOME_FLAG), and the groups of settings the binaries declare alike, each a
// struct with RegisterFlags and what it builds: Log (slog, JSON or text, at a chosen level),
// Tracing (the OTLP collector), Shutdown (its timeout) and Redis (credentials and TLS).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// EnvName is the environment variable for flag name under prefix.
func EnvName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ApplyEnv sets every flag of fs not given on the command line from its environment variable,
// if set. Call it after fs.Parse. It reports every variable that does not parse, by name.
func ApplyEnv(fs *flag.FlagSet, prefix string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		env := EnvName(prefix, f.Name)
		if v, ok := os.LookupEnv(env); ok && !given[f.Name] {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", env, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// Config is a binary's configuration: it declares its flags and checks them together.
type Config interface {
	RegisterFlags(*flag.FlagSet)
	Validate() error
}

// Parse declares cfg's flags, parses args (usage and errors to stderr), fills what the
// command line left from the environment (envPrefix) and validates the result.
func Parse(name, envPrefix string, cfg Config, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ApplyEnv(fs, envPrefix); err != nil {
		return err
	}
	return cfg.Validate()
}

// Main runs a binary: run gets a context that ends on SIGINT or SIGTERM, the arguments after
// the program name and stderr. An error is printed with the binary's name and exits 1; main
// exits in this one place.
func Main(name string, run func(ctx context.Context, args []string, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// Listen opens a TCP listener on each of addrs, in order; purposes[i] names what addrs[i]
// is for in the error. On an error it closes the listeners already open.
func Listen(purposes, addrs []string) ([]net.Listener, error) {
	lns := make([]net.Listener, 0, len(addrs))
	for i, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("listen for %s: %w", purposes[i], err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}
