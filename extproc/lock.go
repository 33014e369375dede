package extproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
)

// Locks are the fleet-wide load locks, one per model version, shared by every ext_proc
// replica through Redis:
//
//	residency.Keys.Lock   <prefix>:lock:<name>:<version>   string "<token> <generation>", PX ttl
//	residency.Keys.Fence  <prefix>:fence:<name>:<version>  counter, INCR at every acquisition
//
// Acquisition is SET NX PX inside a script that first takes the next fencing generation,
// so a generation is spent only on success and is recorded in the lock's value. Release,
// extension and shortening act only while the value still carries the holder's token.
// Safe for concurrent use.
type Locks struct {
	rdb  redis.UniversalClient
	keys residency.Keys
	ttl  time.Duration
}

// NewLocks returns the locks named by keys; a lock lives ttl unless extended.
func NewLocks(rdb redis.UniversalClient, keys residency.Keys, ttl time.Duration) *Locks {
	return &Locks{rdb: rdb, keys: keys, ttl: ttl}
}

var acquireScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local gen = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. gen, 'NX', 'PX', ARGV[2])
return gen
`)

var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

var expireScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`)

// Lock is one held lock. Its methods are safe to call after it was lost: they do nothing.
type Lock struct {
	locks *Locks
	key   string
	value string
	// Generation is the fencing generation of this holding; it grows with every
	// acquisition of the model version's lock anywhere in the mesh.
	Generation int64
}

// Acquire takes m's lock. It returns nil and no error when another holder has it.
func (l *Locks) Acquire(ctx context.Context, m placement.ModelVersion) (*Lock, error) {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	token := hex.EncodeToString(b[:])
	gen, err := acquireScript.Run(ctx, l.rdb, []string{l.keys.Lock(m), l.keys.Fence(m)}, token, l.ttl.Milliseconds()).Int64()
	if err != nil {
		return nil, fmt.Errorf("acquire load lock for %s: %w", m, err)
	}
	if gen == 0 {
		return nil, nil
	}
	return &Lock{locks: l, key: l.keys.Lock(m), value: token + " " + strconv.FormatInt(gen, 10), Generation: gen}, nil
}

// Held reports whether anyone holds m's lock.
func (l *Locks) Held(ctx context.Context, m placement.ModelVersion) (bool, error) {
	n, err := l.rdb.Exists(ctx, l.keys.Lock(m)).Result()
	if err != nil {
		return false, fmt.Errorf("check load lock for %s: %w", m, err)
	}
	return n == 1, nil
}

// Release deletes the lock if this holding still owns it; it reports whether it did.
func (k *Lock) Release(ctx context.Context) (bool, error) {
	n, err := releaseScript.Run(ctx, k.locks.rdb, []string{k.key}, k.value).Int64()
	return n == 1, err
}

// Expire sets the lock's remaining life to d if this holding still owns it: a longer d
// extends a holding in use, a short one lets a finished holding lapse soon.
func (k *Lock) Expire(ctx context.Context, d time.Duration) (bool, error) {
	n, err := expireScript.Run(ctx, k.locks.rdb, []string{k.key}, k.value, d.Milliseconds()).Int64()
	return n == 1, err
}

// KeepAlive extends the lock to its full life every third of it until the returned stop is
// called; stop waits for the renewals to end. A renewal that finds the lock lost is logged.
func (k *Lock) KeepAlive(ctx context.Context, log *slog.Logger) (stop func()) {
	ttl := k.locks.ttl
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(ttl / 3)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if ok, err := k.Expire(ctx, ttl); err == nil && !ok {
					log.WarnContext(ctx, "lock lost while held", "fence", k.Generation)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}
