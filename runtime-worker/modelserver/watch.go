package modelserver

import (
	"context"
	"slices"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
)

// downAfter is how many polls in a row must fail before the server counts as gone.
const downAfter = 3

// Watch polls the server every interval until ctx ends, calling up each time it finds the
// server answering after it did not (at the first answer too), once reconciled. While it answers, each model's last
// use it reports goes to touch, so the least-recently-used order comes from the server
// (inference does not pass through the worker). When it stops answering (downAfter polls in
// a row), Watch forgets what the server held and calls lost once; when it answers again,
// Watch reconciles (removing what a restarted server or a dead worker left behind) and
// prepares it before reporting again. While the server is down it is polled every
// downPoll at most, so that it is back in the mesh soon after it answers. The backend reads
// its formats only while the server is up (Capabilities). Returns nil when ctx ends.
func (b *Backend) Watch(ctx context.Context, interval time.Duration, touch func(placement.ModelVersion, time.Time), lost, up func()) error {
	// Start as if the server had just come back: the first answer reconciles, so models a
	// previous worker left loaded are unloaded before anything is reported.
	down := true
	failures := 0
	for {
		pctx, cancel := context.WithTimeout(ctx, interval)
		uses, err := b.server.Poll(pctx, b.client)
		cancel()
		if err != nil {
			failures++
		} else {
			failures = 0
		}
		switch {
		case err != nil && failures < downAfter:
			// One slow or failed poll (a busy server, a blip) is not a dead server.
		case err != nil && ctx.Err() == nil && !down: // up → down
			down = true
			b.forget()
			b.log.ErrorContext(ctx, b.Runtime()+" stopped answering; its models are gone from this worker", "error", err)
			lost()
		case err == nil && !down && b.restarted(ctx):
			// Back before three polls failed, with nothing loaded: a restart the polls did not
			// see. Down and up again at once: forget, then reconcile at the next poll.
			down = true
			b.forget()
			b.log.ErrorContext(ctx, b.Runtime()+" restarted: none of the models this worker holds is loaded there any more")
			lost()
		case err == nil && down:
			orphans, err := b.Reconcile(ctx)
			if err == nil {
				err = b.server.Prepare(ctx, b.client, b.cfg.Repository)
			}
			if err != nil {
				b.log.WarnContext(ctx, "reconcile "+b.Runtime()+" after it came back", "error", err)
				break // still down for the mesh; try again at the next tick
			}
			b.log.InfoContext(ctx, b.Runtime()+" answers", "orphans_unloaded", len(orphans))
			down = false
			b.up.Store(true)
			up()
		case err == nil:
			b.report(uses, touch)
		}
		wait := interval
		if down {
			wait = min(interval, downPoll)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// downPoll bounds the interval of polls of a server that is down.
const downPoll = 250 * time.Millisecond

// forget drops every model the server held but those whose load is under way, and reads
// no format until the server is up again.
func (b *Backend) forget() {
	b.up.Store(false)
	b.mu.Lock()
	defer b.mu.Unlock()
	kept := map[string]string{}
	for n := range b.loading {
		kept[n] = b.held[n] // a load under way keeps its claim; it ends on its own
	}
	b.held = kept
}

// restarted reports whether the server holds none of the models the worker loaded there
// (loads under way aside), as after a restart between two polls; false when the worker
// holds none, or the index cannot be read.
func (b *Backend) restarted(ctx context.Context) bool {
	b.mu.Lock()
	var held []string
	for n := range b.held {
		if !b.loading[n] {
			held = append(held, n)
		}
	}
	b.mu.Unlock()
	if len(held) == 0 {
		return false
	}
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	idx, err := b.client.RepositoryIndex(ictx, &inference.RepositoryIndexRequest{Ready: true})
	if err != nil {
		return false
	}
	for _, mi := range idx.GetModels() {
		if slices.Contains(held, mi.GetName()) {
			return false
		}
	}
	return true
}

// report passes each use of a model the worker holds to touch, with the version it holds
// when the server named none.
func (b *Backend) report(uses []Use, touch func(placement.ModelVersion, time.Time)) {
	for _, u := range uses {
		b.mu.Lock()
		held, ok := b.held[u.Model.Name]
		b.mu.Unlock()
		if !ok || u.Last.IsZero() || u.Model.Version != "" && u.Model.Version != held {
			continue
		}
		touch(placement.ModelVersion{Name: u.Model.Name, Version: held}, u.Last)
	}
}
