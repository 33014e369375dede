package extproc

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelmesh/mesh/internal/residency"
)

// View holds the latest residency snapshot and tells waiters when it changes. Safe for
// concurrent use; the zero value is not usable, use NewView.
type View struct {
	snap atomic.Pointer[residency.Snapshot]
	mu   sync.Mutex
	// changed is closed and replaced at every Set.
	changed chan struct{}
	// onSet is called after every Set; may be nil.
	onSet func(time.Time)
}

// NewView returns a view with no snapshot: until the first Set, Snapshot returns nil. onSet,
// when not nil, is called after every Set with its time (Metrics.SnapshotRead records it).
func NewView(onSet func(time.Time)) *View { return &View{changed: make(chan struct{}), onSet: onSet} }

// Snapshot is the latest snapshot, or nil before the first. Callers must not modify it.
func (v *View) Snapshot() *residency.Snapshot { return v.snap.Load() }

// Changed returns a channel closed at the next Set.
func (v *View) Changed() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

// Set replaces the snapshot and wakes everyone waiting on Changed.
func (v *View) Set(s residency.Snapshot) {
	v.snap.Store(&s)
	v.mu.Lock()
	close(v.changed)
	v.changed = make(chan struct{})
	v.mu.Unlock()
	if v.onSet != nil {
		v.onSet(time.Now())
	}
}

// Run keeps the view equal to Redis through r.Watch until ctx ends: a full read at start,
// after each burst of events (batch) and every resync. When Redis is unreachable the last
// good snapshot stays. Returns nil when ctx ends.
func (v *View) Run(ctx context.Context, r *residency.Reader, batch, resync time.Duration) error {
	return r.Watch(ctx, residency.WatchConfig{Batch: batch, Resync: resync}, v.Set)
}
