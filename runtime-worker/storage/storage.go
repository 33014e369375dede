// Package storage brings model files to the worker's disk: from file:// roots (a PVC on
// every worker), S3-compatible stores, GCS and HTTP(S), with credentials from a mounted
// storage-config Secret or the environment. What it fetches stays in a node-local disk tier
// under a byte budget, least recently used first out, so a model evicted from memory
// reloads without a download. A runtime never sees a partial file: downloads land in a
// temporary directory, are checked, and only then renamed into the tier.
package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/modelmesh/mesh/internal/placement"
)

// Options configure a Store. Zero durations and counts take the defaults of the worker's
// flags (runtime-worker/cmd/mesh-worker/config.go).
type Options struct {
	// Roots are the directories file:// URIs may name; none refuses file:// URIs.
	Roots []string
	// CacheDir holds the disk tier; DiskBytes is its budget.
	CacheDir  string
	DiskBytes int64
	// ConfigDir is a mounted storage-config Secret (one file per key), re-read at every
	// fetch so a rotated Secret applies without a restart; "" is none.
	ConfigDir string
	// CAFile is a PEM bundle trusted for every store besides the system's CAs.
	CAFile string
	// S3Endpoint serves s3:// URIs that name no storage key; "" is AWS.
	S3Endpoint string
	// GCSEndpoint serves gs:// URIs that name no storage key; "" is Google's (or
	// STORAGE_EMULATOR_HOST).
	GCSEndpoint string
	// AllowHTTP lets http:// URIs and storage keys of type http through.
	AllowHTTP bool
	Timeouts  Timeouts
	// IdleTimeout fails a download that receives nothing for this long.
	IdleTimeout time.Duration
	// Retries is how many times a transient failure is tried again; Backoff is the first
	// wait, doubled each time.
	Retries int
	Backoff time.Duration
	// Concurrency bounds the downloads from one store (endpoint and bucket) at once, so a
	// store that hangs holds only its own.
	Concurrency int
	// MaxFiles bounds the files of one model (a prefix or an archive).
	MaxFiles int
	Log      *slog.Logger
	Metrics  *Metrics
}

// Store fetches models into the disk tier. Safe for concurrent use: fetches of one model
// share one download. Close stops downloads in progress.
type Store struct {
	opts Options
	tier *tier
	gcs  *gcsStore // closed with the Store
	// remotes by scheme: file, s3, gs, https, http.
	remotes map[string]remote

	flights singleflight.Group
	ctx     context.Context // downloads run under it, not under a caller's: others may wait
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu     sync.Mutex
	sems   map[string]chan struct{} // per store
	closed bool
}

// withDefaults fills the zero settings.
func (o Options) withDefaults() Options {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(nil)
	}
	setDuration := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	setDuration(&o.Timeouts.Connect, 10*time.Second)
	setDuration(&o.Timeouts.Response, 30*time.Second)
	setDuration(&o.IdleTimeout, 30*time.Second)
	setDuration(&o.Backoff, 200*time.Millisecond)
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.MaxFiles <= 0 {
		o.MaxFiles = 10000
	}
	return o
}

// New opens the disk tier in opts.CacheDir (indexing what an earlier run left there).
func New(opts Options) (*Store, error) {
	opts = opts.withDefaults()
	files, err := newFileStore(opts.Roots)
	if err != nil {
		return nil, err
	}
	if opts.CacheDir == "" || opts.DiskBytes <= 0 {
		return nil, errors.New("storage: a cache directory and a positive disk budget are needed")
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("disk tier: %w", err)
	}
	t, err := openTier(opts.CacheDir, opts.DiskBytes, opts.Metrics, opts.Log)
	if err != nil {
		return nil, err
	}
	configs, err := ReadConfigs(opts.ConfigDir)
	if err != nil {
		return nil, err
	}
	for _, err := range configs.Broken() {
		opts.Log.Warn("storage-config entry refused; models naming it fail to load", "error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g, h := newGCSStore(opts.CAFile, opts.GCSEndpoint, opts.Timeouts), newHTTPStore(opts.CAFile, opts.Timeouts)
	return &Store{
		opts: opts, tier: t, gcs: g,
		remotes: map[string]remote{"file": files, "s3": newS3Store(opts.CAFile, opts.S3Endpoint, opts.Timeouts), "gs": g, "https": h, "http": h},
		ctx:     ctx, cancel: cancel, sems: map[string]chan struct{}{},
	}, nil
}

// Close stops downloads in progress and waits for them; their partial files are removed.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.gcs.close()
	return nil
}

// Fetched is a model's files in the disk tier, kept there until Release.
type Fetched struct {
	Path  string
	Bytes int64
	// Cached is true when the tier had the files: nothing was downloaded.
	Cached bool
	id     string
	tier   *tier
}

// Release lets the tier evict the files again; the runtime has read them. Safe to call on
// the zero Fetched.
func (f Fetched) Release() {
	if f.tier != nil {
		f.tier.release(f.id)
	}
}

// Usage reports the disk tier's budget, use and entries.
func (s *Store) Usage() Usage { return s.tier.usage() }

// Fetch brings the files loc names into the disk tier and pins them there until the
// caller's Release: a tier hit asks the store nothing (a file:// source is checked for
// changes), a miss downloads once for every caller of the same source. It blocks until the
// files are in place or ctx ends; a download other callers wait on goes on after this
// caller gives up. The error wraps one of the package's sentinels.
func (s *Store) Fetch(ctx context.Context, loc Location, m placement.ModelVersion) (Fetched, error) {
	configs, err := ReadConfigs(s.opts.ConfigDir)
	var t target
	if err == nil {
		t, err = resolve(loc, configs, s.opts.AllowHTTP)
	}
	if err != nil {
		s.opts.Metrics.errors.WithLabelValues(schemeOf(loc), Reason(err)).Inc()
		return Fetched{}, fmt.Errorf("fetch %s: %w", m, err)
	}
	rem := s.remotes[t.scheme]
	id := t.id()
	for range 3 { // a hit can be evicted between a download's end and the pin; try again
		if err := ctx.Err(); err != nil {
			return Fetched{}, err
		}
		if f, ok, err := s.hit(ctx, t, rem, id); err != nil {
			s.opts.Metrics.errors.WithLabelValues(t.scheme, Reason(err)).Inc()
			return Fetched{}, fmt.Errorf("fetch %s from %s: %w", m, t.name(), err)
		} else if ok {
			s.opts.Metrics.hits.Inc()
			return f, nil
		}
		ch := s.flights.DoChan(id, func() (any, error) {
			s.mu.Lock()
			if s.closed {
				s.mu.Unlock()
				return nil, fmt.Errorf("%w: the worker is shutting down", context.Canceled)
			}
			s.wg.Add(1)
			s.mu.Unlock()
			defer s.wg.Done()
			return nil, s.download(s.ctx, t, rem, id)
		})
		select {
		case r := <-ch:
			if r.Shared {
				s.opts.Metrics.coalesced.Inc()
			}
			if r.Err != nil {
				return Fetched{}, fmt.Errorf("fetch %s from %s: %w", m, t.name(), r.Err)
			}
		case <-ctx.Done():
			return Fetched{}, fmt.Errorf("fetch %s from %s: %w", m, t.name(), ctx.Err())
		}
		if f, _, ok := s.pin(id); ok {
			f.Cached = false
			return f, nil
		}
	}
	return Fetched{}, fmt.Errorf("fetch %s from %s: %w: evicted from the disk tier as soon as fetched; the tier is too small for the models in use", m, t.name(), ErrDiskFull)
}

// hit pins id when the tier holds it and, for a file source, its files are unchanged.
func (s *Store) hit(ctx context.Context, t target, rem remote, id string) (Fetched, bool, error) {
	f, m, ok := s.pin(id)
	if !ok || t.scheme != "file" {
		return f, ok, nil
	}
	objs, _, err := rem.list(ctx, t)
	if err != nil {
		f.Release()
		return Fetched{}, false, err
	}
	if sourceStamp(objs) != m.Stamp {
		f.Release()
		s.tier.drop(id)
		return Fetched{}, false, nil
	}
	return f, true, nil
}

func (s *Store) pin(id string) (Fetched, meta, bool) {
	m, ok := s.tier.acquire(id)
	if !ok {
		return Fetched{}, m, false
	}
	return Fetched{Path: filepath.Join(s.tier.dir, id, dataDir, filepath.FromSlash(m.Path)), Bytes: m.Bytes, Cached: true, id: id, tier: s.tier}, m, true
}

// sourceStamp sums up a file source's listing: it changes when any file is replaced.
// Other stores' objects are immutable per model version and stamp nothing.
func sourceStamp(objs []object) string {
	parts := make([]string, 0, len(objs))
	for _, o := range objs {
		if o.stamp != "" {
			parts = append(parts, o.key+"="+o.stamp)
		}
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// download fetches t into the tier as id: list, reserve room, stream every file into a
// temporary directory with its checks, unpack an archive, then rename into place.
func (s *Store) download(ctx context.Context, t target, rem remote, id string) (err error) {
	start := time.Now()
	s.opts.Metrics.misses.Inc()
	defer func() {
		s.opts.Metrics.downloadSeconds.WithLabelValues(t.scheme, Reason(err)).Observe(time.Since(start).Seconds())
		if err != nil {
			s.opts.Metrics.errors.WithLabelValues(t.scheme, Reason(err)).Inc()
			s.opts.Log.Warn("model download failed", "source", t.name(), "reason", Reason(err), "error", err.Error())
		}
	}()
	release, err := s.acquireStore(ctx, t)
	if err != nil {
		return err
	}
	defer release()

	var objs []object
	var single bool
	err = s.retry(ctx, t, func() (err error) {
		objs, single, err = rem.list(ctx, t)
		return err
	})
	if err != nil {
		return err
	}
	if len(objs) > s.opts.MaxFiles {
		return fmt.Errorf("%w: %d files, over the limit of %d", ErrBadURI, len(objs), s.opts.MaxFiles)
	}
	archive := single && ArchiveKind(objs[0].rel) != ""
	if single && !archive {
		objs[0].rel = ModelFile
	}
	var reserved int64
	for _, o := range objs {
		reserved += max(o.size, 0)
	}
	if err := s.tier.reserve(reserved, t.name()); err != nil {
		return err
	}
	defer func() { s.tier.unreserve(reserved) }() // commit takes it over on success

	tmp, err := os.MkdirTemp(filepath.Join(s.tier.dir, tmpDir), id+"-")
	if err != nil {
		return fmt.Errorf("disk tier: %w", transport(err))
	}
	defer os.RemoveAll(tmp) // nothing left once renamed into the tier

	digests := make(map[string][]byte, len(objs))
	var total int64
	for _, o := range objs {
		dst, err := dataPath(tmp, o.rel)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrBadURI, err)
		}
		if archive { // beside data/, which the archive's files go into
			dst = filepath.Join(tmp, o.rel)
		}
		var n int64
		var sum []byte
		err = s.retry(ctx, t, func() (err error) {
			n, sum, err = s.copyObject(ctx, t, rem, o, dst)
			return err
		})
		if err != nil {
			return err
		}
		if o.size < 0 { // the size was unknown until read: count it now
			if err := s.tier.reserve(n, t.name()); err != nil {
				return err
			}
			reserved += n
		}
		digests[o.rel] = sum
		total += n
	}
	if err := checkSHA256(t, objs, digests); err != nil {
		return err
	}
	m := meta{Source: t.name(), Stamp: sourceStamp(objs)}
	if archive {
		packed := filepath.Join(tmp, objs[0].rel)
		unpacked, err := s.unpack(ctx, t, packed, filepath.Join(tmp, dataDir))
		if err != nil {
			return err
		}
		os.Remove(packed)
		if err := s.tier.reserve(unpacked, t.name()+" unpacked"); err != nil {
			return err
		}
		s.tier.unreserve(reserved)
		reserved = unpacked
	}
	if m.Files, m.Bytes, err = listData(filepath.Join(tmp, dataDir)); err != nil {
		return err
	}
	switch {
	case single && !archive:
		m.Path = ModelFile
	case archive:
		m.Path = soleDir(filepath.Join(tmp, dataDir))
	}
	if err := s.tier.commit(id, tmp, m, reserved); err != nil {
		return err
	}
	reserved = 0
	s.opts.Log.Info("model downloaded", "source", t.name(), "bytes", total, "files", len(m.Files),
		"duration_ms", time.Since(start).Milliseconds())
	return nil
}

// copyObject streams one object to dst with bounded memory, checking its size and the
// store's MD5; it returns the bytes written and, when the registry declared a digest, the
// file's SHA-256.
func (s *Store) copyObject(ctx context.Context, t target, rem remote, o object, dst string) (int64, []byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rc, opened, err := rem.open(ctx, t, o)
	if err != nil {
		return 0, nil, err
	}
	defer rc.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return 0, nil, fmt.Errorf("disk tier: %w", transport(err))
	}
	f, err := os.Create(dst)
	if err != nil {
		return 0, nil, fmt.Errorf("disk tier: %w", transport(err))
	}
	defer f.Close()
	ws := []io.Writer{f}
	sum := pickChecksum(o.sum, opened, t.sha256 != "")
	var sumh, shah hash.Hash
	if !sum.none() {
		sumh = sum.hash()
		ws = append(ws, sumh)
	}
	if t.sha256 != "" {
		shah = sha256.New()
		ws = append(ws, shah)
	}
	idle := newIdleReader(readerWithContext{ctx, rc}, s.opts.IdleTimeout, cancel)
	defer idle.stop()
	n, err := fanOut(idle, ws)
	s.opts.Metrics.downloadBytes.WithLabelValues(t.scheme).Add(float64(n)) // also what a failed try moved
	if err == nil {
		err = f.Close()
	}
	switch {
	case idle.fired.Load():
		return n, nil, fmt.Errorf("%w: %s: no data for %s", ErrUnavailable, o.key, s.opts.IdleTimeout)
	case err != nil && ctx.Err() == nil:
		if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrDenied) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrTLS) {
			return n, nil, err
		}
		return n, nil, fmt.Errorf("%s: %w", o.key, transport(err))
	case err != nil:
		return n, nil, err
	case o.size >= 0 && n != o.size:
		return n, nil, fmt.Errorf("%w: %s: received %d of %d bytes", ErrUnavailable, o.key, n, o.size)
	case sumh != nil && !slices.Equal(sumh.Sum(nil), sum.want):
		return n, nil, fmt.Errorf("%w: %s: %s %x, the store says %x", ErrChecksum, o.key, sum.name, sumh.Sum(nil), sum.want)
	}
	if shah != nil {
		return n, shah.Sum(nil), nil
	}
	return n, nil, nil
}

// pickChecksum chooses the store's digest a download is checked by: the one given when the
// object was opened (a CRC, checked at memory speed) over the listed one (an MD5, slower than
// a fast network); none for an MD5 when the registry declared a sha256, which is stronger
// and checked anyway.
func pickChecksum(listed, opened checksum, declared bool) checksum {
	switch {
	case !opened.none():
		return opened
	case declared && listed.name == "md5":
		return checksum{}
	}
	return listed
}

// checkSHA256 compares the declared digest with the file's (one object) or with the
// digest of the manifest of every file's digest and path (a prefix: the text
// `sha256sum` prints for the sorted files, "<hex>  <path>\n" each).
func checkSHA256(t target, objs []object, digests map[string][]byte) error {
	if t.sha256 == "" {
		return nil
	}
	var got string
	if len(objs) == 1 && len(digests) == 1 {
		for _, d := range digests {
			got = hex.EncodeToString(d)
		}
	} else {
		rels := make([]string, 0, len(digests))
		for rel := range digests {
			rels = append(rels, rel)
		}
		slices.Sort(rels)
		h := sha256.New()
		for _, rel := range rels {
			fmt.Fprintf(h, "%x  %s\n", digests[rel], rel)
		}
		got = hex.EncodeToString(h.Sum(nil))
	}
	if got != t.sha256 {
		return fmt.Errorf("%w: %s: sha256 %s, the registry declares %s", ErrChecksum, t.name(), got, t.sha256)
	}
	return nil
}

func (s *Store) unpack(ctx context.Context, t target, archive, dst string) (int64, error) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return 0, fmt.Errorf("disk tier: %w", transport(err))
	}
	n, err := Unpack(ctx, ArchiveKind(archive), archive, dst, s.tier.capacity, s.opts.MaxFiles)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", t.name(), transport(err))
	}
	return n, nil
}

// listData records the files of a finished download for the tier's index.
func listData(dir string) ([]fileMeta, int64, error) {
	var files []fileMeta
	var total int64
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files = append(files, fileMeta{Rel: filepath.ToSlash(rel), Size: fi.Size()})
		total += fi.Size()
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("disk tier: %w", err)
	}
	if len(files) == 0 {
		return nil, 0, fmt.Errorf("%w: no files", ErrNotFound)
	}
	return files, total, nil
}

// soleDir is the relative path of the one directory an unpacked archive holds, when it holds
// nothing else (a Triton model packed with its directory), or "".
func soleDir(dir string) string {
	des, err := os.ReadDir(dir)
	if err != nil || len(des) != 1 || !des[0].IsDir() {
		return ""
	}
	return des[0].Name()
}

// retry runs op until it succeeds, fails permanently, or has been tried Retries more times,
// waiting Backoff, then twice that, and so on.
func (s *Store) retry(ctx context.Context, t target, op func() error) error {
	wait := s.opts.Backoff
	for attempt := 0; ; attempt++ {
		err := op()
		if err == nil || permanent(err) || attempt >= s.opts.Retries || ctx.Err() != nil {
			return err
		}
		s.opts.Metrics.retries.WithLabelValues(t.scheme).Inc()
		s.opts.Log.Info("store request failed; trying again", "source", t.name(), "attempt", attempt+1, "wait_ms", wait.Milliseconds(), "error", err.Error())
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return err
		}
		wait *= 2
	}
}

// acquireStore takes one of the store's download slots.
func (s *Store) acquireStore(ctx context.Context, t target) (func(), error) {
	if t.scheme == "file" {
		return func() {}, nil
	}
	key := strings.Join([]string{t.scheme, t.cfg.EndpointURL, t.bucket, hostOf(t)}, "|")
	s.mu.Lock()
	sem, ok := s.sems[key]
	if !ok {
		sem = make(chan struct{}, s.opts.Concurrency)
		s.sems[key] = sem
	}
	s.mu.Unlock()
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func hostOf(t target) string {
	if t.url != nil {
		return t.url.Host
	}
	return ""
}

func schemeOf(loc Location) string {
	if i := strings.Index(loc.URI, "://"); i > 0 {
		switch s := loc.URI[:i]; s {
		case "file", "s3", "gs", "https", "http":
			return s
		}
		return "other"
	}
	return "key"
}

// fanOut copies src to every writer in ws, in order, each writer on a goroutine of its own,
// with bounded memory (fanOutChunks buffers of fanOutChunkSize bytes): reading the network,
// writing the file and hashing overlap instead of taking turns. MD5 cannot be split (about
// 770 MB/s on one core of the benchmark machine); taking turns with the read and the write,
// it held a download from a store on loopback to about 0.55x of a plain GET into a file,
// now 0.75x (BenchmarkMeshStorage, docs/benchmarks.md). It returns the bytes read from src
// and the first writer's error, else src's (io.EOF is none).
func fanOut(src io.Reader, ws []io.Writer) (int64, error) {
	type chunk struct {
		b       []byte
		pending atomic.Int32 // writers yet to take it; the last hands it back
	}
	free := make(chan *chunk, fanOutChunks)
	for range fanOutChunks {
		free <- &chunk{b: make([]byte, fanOutChunkSize)}
	}
	queues := make([]chan *chunk, len(ws))
	errs := make([]error, len(ws))
	var failed atomic.Bool
	var wg sync.WaitGroup
	for i, w := range ws {
		queues[i] = make(chan *chunk, fanOutChunks)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range queues[i] {
				if errs[i] == nil {
					if _, err := w.Write(c.b); err != nil {
						errs[i] = err
						failed.Store(true)
					}
				}
				if c.pending.Add(-1) == 0 {
					free <- c
				}
			}
		}()
	}
	var total int64
	var rerr error
	for rerr == nil && !failed.Load() {
		c := <-free
		c.b = c.b[:cap(c.b)]
		n := 0
		for n < len(c.b) && rerr == nil {
			var m int
			m, rerr = src.Read(c.b[n:])
			n += m
		}
		if n == 0 {
			free <- c
			continue
		}
		c.b = c.b[:n]
		c.pending.Store(int32(len(ws)))
		for _, q := range queues {
			q <- c
		}
		total += int64(n)
	}
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return total, err
		}
	}
	if rerr == io.EOF {
		rerr = nil
	}
	return total, rerr
}

// The buffers of one download's fanOut: 1 MiB in all, in chunks, so that the file and the
// hashes can each lag the network by a few of them.
const (
	fanOutChunks    = 4
	fanOutChunkSize = 256 << 10
)

// idleReader fails a read that waits longer than d for data, by cancelling the request.
type idleReader struct {
	r     io.Reader
	d     time.Duration
	timer *time.Timer
	fired atomic.Bool
}

func newIdleReader(r io.Reader, d time.Duration, cancel context.CancelFunc) *idleReader {
	ir := &idleReader{r: r, d: d}
	ir.timer = time.AfterFunc(d, func() { ir.fired.Store(true); cancel() })
	return ir
}

func (r *idleReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if n > 0 {
		r.timer.Reset(r.d)
	}
	return n, err
}

func (r *idleReader) stop() { r.timer.Stop() }

// readerWithContext stops a copy once ctx ends.
type readerWithContext struct {
	ctx context.Context
	r   io.Reader
}

func (r readerWithContext) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
