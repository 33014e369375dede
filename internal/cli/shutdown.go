package cli

import (
	"context"
	"flag"
	"time"
)

// Shutdown holds how long a binary's graceful shutdown may take.
type Shutdown struct {
	Timeout time.Duration
}

// RegisterFlags declares the setting on fs with the binary's default and help text (what
// the timeout bounds there).
func (s *Shutdown) RegisterFlags(fs *flag.FlagSet, timeout time.Duration, usage string) {
	fs.DurationVar(&s.Timeout, "shutdown-timeout", timeout, usage)
}

// Context is what a shutdown runs under once ctx, the binary's, has ended: ctx's values
// without its cancellation, done after Timeout. Call cancel when the shutdown is over.
func (s Shutdown) Context(ctx context.Context) (_ context.Context, cancel context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.Timeout)
}
