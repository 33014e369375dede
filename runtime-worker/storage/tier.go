package storage

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// The disk tier's layout under its directory:
//
//	<id>/meta.json   what the entry holds; written last, so an entry without it is partial
//	<id>/data/...    the model's files
//	.tmp/            downloads in progress and entries being deleted; emptied at start
const (
	metaFile = "meta.json"
	dataDir  = "data"
	tmpDir   = ".tmp"
)

// meta describes one entry of the tier; it is the whole index, re-read at start.
type meta struct {
	Source string `json:"source"`
	// Path is what the runtime is given, relative to data/ ("" is data/ itself).
	Path  string     `json:"path"`
	Files []fileMeta `json:"files"`
	// Stamp is a file source's listing when fetched (sourceStamp); "" for other stores.
	Stamp    string    `json:"stamp,omitempty"`
	Bytes    int64     `json:"bytes"`
	Fetched  time.Time `json:"fetched"`
	LastUsed time.Time `json:"lastUsed"`
}

type fileMeta struct {
	Rel  string `json:"rel"`
	Size int64  `json:"size"`
}

type entry struct {
	id   string
	meta meta
	pins int // loads using the files now; a pinned entry is not evicted
}

// tier is the node-local disk tier: fetched models kept under a byte budget, the least
// recently used unpinned ones removed to make room. Safe for concurrent use.
type tier struct {
	dir      string
	capacity int64
	metrics  *Metrics
	log      *slog.Logger
	now      func() time.Time

	mu       sync.Mutex
	entries  map[string]*entry
	used     int64 // committed entries plus reservations of downloads in progress
	reserved int64
}

// openTier indexes dir: entries whose meta is missing or unreadable, or whose files differ
// in size from it, are dropped, and downloads a crash left in .tmp are removed.
func openTier(dir string, capacity int64, metrics *Metrics, log *slog.Logger) (*tier, error) {
	t := &tier{dir: dir, capacity: capacity, metrics: metrics, log: log, now: time.Now, entries: map[string]*entry{}}
	if err := os.RemoveAll(filepath.Join(dir, tmpDir)); err != nil {
		return nil, fmt.Errorf("disk tier: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, tmpDir), 0o755); err != nil {
		return nil, fmt.Errorf("disk tier: %w", err)
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("disk tier: %w", err)
	}
	for _, de := range des {
		if de.Name() == tmpDir {
			continue
		}
		p := filepath.Join(dir, de.Name())
		m, err := readEntry(p)
		if err != nil {
			log.Warn("disk tier: dropping an entry", "entry", de.Name(), "reason", err.Error())
			os.RemoveAll(p)
			metrics.dropped.Inc()
			continue
		}
		t.entries[de.Name()] = &entry{id: de.Name(), meta: m}
		t.used += m.Bytes
	}
	// A smaller budget than before: make it true now.
	t.mu.Lock()
	doomed := t.evictLocked(0)
	t.mu.Unlock()
	t.remove(doomed)
	t.gauges()
	return t, nil
}

// readEntry reads an entry's meta and checks its files against it.
func readEntry(p string) (meta, error) {
	var m meta
	b, err := os.ReadFile(filepath.Join(p, metaFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("meta: %v", err)
	}
	var sum int64
	for _, f := range m.Files {
		fp, err := dataPath(p, f.Rel)
		if err != nil {
			return m, err
		}
		fi, err := os.Lstat(fp)
		if err != nil {
			return m, err
		}
		if !fi.Mode().IsRegular() || fi.Size() != f.Size {
			return m, fmt.Errorf("%s: %d bytes, %d recorded", f.Rel, fi.Size(), f.Size)
		}
		sum += f.Size
	}
	if sum != m.Bytes || len(m.Files) == 0 {
		return m, fmt.Errorf("files add up to %d bytes, %d recorded", sum, m.Bytes)
	}
	return m, nil
}

// dataPath joins rel under an entry's data directory, refusing anything that leaves it.
func dataPath(entryDir, rel string) (string, error) {
	p := filepath.Join(entryDir, dataDir, filepath.FromSlash(rel))
	if !strings.HasPrefix(p, filepath.Join(entryDir, dataDir)+string(filepath.Separator)) {
		return "", fmt.Errorf("file %q leaves the entry", rel)
	}
	return p, nil
}

// acquire pins the entry id and returns its meta, or false when the tier does not hold it.
// The caller unpins with release.
func (t *tier) acquire(id string) (meta, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[id]
	if !ok {
		return meta{}, false
	}
	e.pins++
	e.meta.LastUsed = t.now()
	if err := writeMeta(filepath.Join(t.dir, id), e.meta); err != nil {
		// The order survives a restart only as well as the meta is written; serving goes on.
		t.log.Warn("disk tier: record last use", "entry", id, "error", err)
	}
	return e.meta, true
}

func (t *tier) release(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.entries[id]; ok && e.pins > 0 {
		e.pins--
	}
}

// drop removes the entry id now unless it is pinned (a file source that changed).
func (t *tier) drop(id string) {
	t.mu.Lock()
	e, ok := t.entries[id]
	if !ok || e.pins > 0 {
		t.mu.Unlock()
		return
	}
	delete(t.entries, id)
	t.used -= e.meta.Bytes
	t.mu.Unlock()
	t.remove([]*entry{e})
	t.gauges()
}

// reserve counts n bytes for a download, evicting least recently used unpinned entries to
// make room. It fails with ErrDiskFull when n cannot fit even with every unpinned entry gone.
func (t *tier) reserve(n int64, what string) error {
	t.mu.Lock()
	var pinned int64
	for _, e := range t.entries {
		if e.pins > 0 {
			pinned += e.meta.Bytes
		}
	}
	if n > t.capacity-pinned-t.reserved {
		t.mu.Unlock()
		return fmt.Errorf("%w: %s needs %s; the tier holds %s, of which %s in use by loads and %s by downloads in progress (--disk-cache-size)",
			ErrDiskFull, what, bytesText(n), bytesText(t.capacity), bytesText(pinned), bytesText(t.reserved))
	}
	doomed := t.evictLocked(n)
	t.used += n
	t.reserved += n
	t.mu.Unlock()
	t.remove(doomed)
	t.gauges()
	return nil
}

// unreserve gives back a reservation.
func (t *tier) unreserve(n int64) {
	t.mu.Lock()
	t.used -= n
	t.reserved -= n
	t.mu.Unlock()
	t.gauges()
}

// evictLocked takes unpinned entries out, least recently used first, until n more bytes
// fit; it returns them for remove, outside the lock.
func (t *tier) evictLocked(n int64) []*entry {
	if t.used+n <= t.capacity {
		return nil
	}
	var idle []*entry
	for _, e := range t.entries {
		if e.pins == 0 {
			idle = append(idle, e)
		}
	}
	slices.SortFunc(idle, func(a, b *entry) int { return a.meta.LastUsed.Compare(b.meta.LastUsed) })
	var doomed []*entry
	for _, e := range idle {
		if t.used+n <= t.capacity {
			break
		}
		delete(t.entries, e.id)
		t.used -= e.meta.Bytes
		doomed = append(doomed, e)
	}
	return doomed
}

// remove deletes evicted entries' files: renamed into .tmp first, so a crash mid-delete
// leaves no partial entry behind.
func (t *tier) remove(doomed []*entry) {
	for _, e := range doomed {
		p := filepath.Join(t.dir, e.id)
		trash := filepath.Join(t.dir, tmpDir, "evicted-"+e.id)
		if err := os.Rename(p, trash); err == nil {
			p = trash
		}
		if err := os.RemoveAll(p); err != nil {
			t.log.Warn("disk tier: remove an evicted entry", "entry", e.id, "error", err)
		}
		t.metrics.evictions.Inc()
		t.log.Info("disk tier: evicted", "source", e.meta.Source, "bytes", e.meta.Bytes, "last_used", e.meta.LastUsed)
	}
}

// commit moves a finished download from tmp into the tier as entry id, in place of a
// reservation of reservedN bytes.
func (t *tier) commit(id, tmp string, m meta, reservedN int64) error {
	m.Fetched, m.LastUsed = t.now(), t.now()
	if err := writeMeta(tmp, m); err != nil {
		return fmt.Errorf("disk tier: %w", transport(err))
	}
	dst := filepath.Join(t.dir, id)
	t.mu.Lock()
	defer t.gauges()
	defer t.mu.Unlock()
	if old, ok := t.entries[id]; ok { // a file source that changed while pinned
		delete(t.entries, id)
		t.used -= old.meta.Bytes
		trash := filepath.Join(t.dir, tmpDir, "replaced-"+id)
		os.Rename(dst, trash)
		defer os.RemoveAll(trash)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.used -= reservedN
		t.reserved -= reservedN
		return fmt.Errorf("disk tier: %w", err)
	}
	t.entries[id] = &entry{id: id, meta: m}
	t.used += m.Bytes - reservedN
	t.reserved -= reservedN
	return nil
}

// writeMeta writes dir's meta.json beside and renames it into place.
func writeMeta(dir string, m meta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, metaFile+".new")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, metaFile))
}

// Usage is the tier's state, for the management API and meshctl.
type Usage struct {
	Capacity int64
	Used     int64
	Entries  []EntryUsage
}

// EntryUsage is one model's files on disk.
type EntryUsage struct {
	Source   string
	Bytes    int64
	LastUsed time.Time
	InUse    bool
}

func (t *tier) usage() Usage {
	t.mu.Lock()
	defer t.mu.Unlock()
	u := Usage{Capacity: t.capacity, Used: t.used - t.reserved}
	for _, e := range t.entries {
		u.Entries = append(u.Entries, EntryUsage{Source: e.meta.Source, Bytes: e.meta.Bytes, LastUsed: e.meta.LastUsed, InUse: e.pins > 0})
	}
	slices.SortFunc(u.Entries, func(a, b EntryUsage) int { return b.LastUsed.Compare(a.LastUsed) })
	return u
}

func (t *tier) gauges() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.metrics.bytes.Set(float64(t.used - t.reserved))
	t.metrics.entries.Set(float64(len(t.entries)))
	t.metrics.capacity.Set(float64(t.capacity))
}

// bytesText is n in the largest binary unit that keeps a digit before the point.
func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
