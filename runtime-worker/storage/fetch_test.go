package storage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/modelmesh/mesh/internal/placement"
)

// fakeStore is an in-memory remote for the fetch logic's tests: objects by key, with
// failures and stalls injected per open. Real stores are tested end to end (e2e/storage_test.go).
type fakeStore struct {
	mu      sync.Mutex
	objects map[string][]byte
	badMD5  map[string]bool // the store announces a wrong MD5
	// crc32c, when set, gives every open a CRC32C of the body (as S3 does with checksum mode),
	// wrong for the keys in badCRC.
	crc32c bool
	badCRC map[string]bool
	opens  map[string]int
	// openErr, when set, answers the n-th open (from 1) of key; nil lets it through.
	openErr func(key string, n int) error
	// short cuts every body to half its length.
	short bool
	// stall holds every body's first read until ctx ends.
	stall bool
	// gate, when set, holds every open until it is closed.
	gate chan struct{}
}

func newFake(objects map[string]string) *fakeStore {
	f := &fakeStore{objects: map[string][]byte{}, badMD5: map[string]bool{}, badCRC: map[string]bool{}, opens: map[string]int{}}
	for k, v := range objects {
		f.objects[k] = []byte(v)
	}
	return f
}

func (f *fakeStore) list(_ context.Context, t target) ([]object, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b, ok := f.objects[t.key]; ok {
		return []object{f.object(t.key, baseName(t.key), b)}, true, nil
	}
	var objs []object
	for k, b := range f.objects {
		if rel, ok := strings.CutPrefix(k, t.key+"/"); ok {
			objs = append(objs, f.object(k, rel, b))
		}
	}
	if len(objs) == 0 {
		return nil, false, fmt.Errorf("%w: %s", ErrNotFound, t.key)
	}
	return objs, false, nil
}

func (f *fakeStore) object(key, rel string, b []byte) object {
	sum := md5.Sum(b)
	if f.badMD5[key] {
		sum = md5.Sum(append(b, 'x'))
	}
	return object{rel: rel, key: key, size: int64(len(b)), sum: checksum{name: "md5", want: sum[:], hash: md5.New}}
}

func (f *fakeStore) open(ctx context.Context, _ target, o object) (io.ReadCloser, checksum, error) {
	f.mu.Lock()
	f.opens[o.key]++
	n, gate, b := f.opens[o.key], f.gate, f.objects[o.key]
	var sum checksum
	if f.crc32c {
		table := crc32.MakeTable(crc32.Castagnoli)
		want := crc32.Checksum(b, table)
		if f.badCRC[o.key] {
			want++
		}
		sum = checksum{name: "crc32c", want: binary.BigEndian.AppendUint32(nil, want), hash: func() hash.Hash { return crc32.New(table) }}
	}
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, checksum{}, ctx.Err()
		}
	}
	if f.openErr != nil {
		if err := f.openErr(o.key, n); err != nil {
			return nil, checksum{}, err
		}
	}
	if f.short {
		b = b[:len(b)/2]
	}
	if f.stall {
		return io.NopCloser(stallReader{ctx}), sum, nil
	}
	return io.NopCloser(bytes.NewReader(b)), sum, nil
}

func (f *fakeStore) openCount(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opens[key]
}

type stallReader struct{ ctx context.Context }

func (r stallReader) Read([]byte) (int, error) { <-r.ctx.Done(); return 0, r.ctx.Err() }

// fakeTier is a Store whose s3:// scheme is served by fake.
func fakeTier(t *testing.T, fake *fakeStore, diskBytes int64, opts ...func(*Options)) *Store {
	t.Helper()
	o := Options{CacheDir: filepath.Join(t.TempDir(), "tier"), DiskBytes: diskBytes, Backoff: time.Millisecond, Retries: 2}
	for _, f := range opts {
		f(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	s.remotes["s3"] = fake
	t.Cleanup(func() { s.Close() })
	return s
}

var mv = placement.ModelVersion{Name: "m", Version: "1"}

func s3(key string) Location { return Location{URI: "s3://bucket/" + key} }

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tmpEmpty fails when a download left anything in the tier's temporary directory.
func tmpEmpty(t *testing.T, s *Store) {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(s.opts.CacheDir, tmpDir))
	if err != nil || len(des) != 0 {
		t.Fatalf("tier's .tmp holds %v (%v)", des, err)
	}
}

func TestFetchKeepsFilesForTheNextLoad(t *testing.T) {
	t.Parallel()
	fake := newFake(map[string]string{"iris/model.onnx": "onnx bytes"})
	s := fakeTier(t, fake, 1<<20)
	first, err := s.Fetch(context.Background(), s3("iris/model.onnx"), mv)
	must(t, err)
	first.Release()
	second, err := s.Fetch(context.Background(), s3("iris/model.onnx"), mv)
	must(t, err)
	defer second.Release()
	if first.Cached || !second.Cached || read(t, second.Path) != "onnx bytes" || second.Bytes != 10 {
		t.Fatalf("first cached=%v, second cached=%v at %s (%d bytes)", first.Cached, second.Cached, second.Path, second.Bytes)
	}
	if n := fake.openCount("iris/model.onnx"); n != 1 {
		t.Fatalf("the store was read %d times, want once", n)
	}
	if filepath.Base(second.Path) != ModelFile {
		t.Fatalf("a single object is kept as %s, want %s", second.Path, ModelFile)
	}
	if hits := testutil.ToFloat64(s.opts.Metrics.hits); hits != 1 {
		t.Fatalf("hits = %v", hits)
	}
}

func TestConcurrentFetchesShareOneDownload(t *testing.T) {
	t.Parallel()
	fake := newFake(map[string]string{"tri/config.pbtxt": "cfg", "tri/1/model.onnx": "weights"})
	fake.gate = make(chan struct{})
	s := fakeTier(t, fake, 1<<20)
	var wg sync.WaitGroup
	paths := make([]string, 8)
	errs := make([]error, 8)
	for i := range paths {
		wg.Go(func() {
			f, err := s.Fetch(context.Background(), s3("tri"), mv)
			paths[i], errs[i] = f.Path, err
			f.Release()
		})
	}
	time.Sleep(20 * time.Millisecond) // let them all join before the store answers
	close(fake.gate)
	wg.Wait()
	for i := range paths {
		must(t, errs[i])
		if paths[i] != paths[0] || read(t, filepath.Join(paths[i], "1", "model.onnx")) != "weights" {
			t.Fatalf("fetch %d got %s", i, paths[i])
		}
	}
	if a, b := fake.openCount("tri/config.pbtxt"), fake.openCount("tri/1/model.onnx"); a != 1 || b != 1 {
		t.Fatalf("each file was read %d and %d times, want once", a, b)
	}
}

func TestRetriesAreBoundedAndPermanentErrorsNotRetried(t *testing.T) {
	t.Parallel()
	transient := fmt.Errorf("%w: HTTP 503", ErrUnavailable)
	tests := []struct {
		name      string
		fail      func(n int) error
		wantErr   error
		wantOpens int
	}{
		{"transient then fine", func(n int) error {
			if n < 3 {
				return transient
			}
			return nil
		}, nil, 3},
		{"always transient", func(int) error { return transient }, ErrUnavailable, 3}, // Retries: 2
		{"denied", func(int) error { return fmt.Errorf("%w: 403", ErrDenied) }, ErrDenied, 1},
		{"missing", func(int) error { return fmt.Errorf("%w: 404", ErrNotFound) }, ErrNotFound, 1},
		{"tls", func(int) error { return fmt.Errorf("%w: unknown authority", ErrTLS) }, ErrTLS, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake := newFake(map[string]string{"a.onnx": "bytes"})
			fake.openErr = func(_ string, n int) error { return tt.fail(n) }
			s := fakeTier(t, fake, 1<<20)
			f, err := s.Fetch(context.Background(), s3("a.onnx"), mv)
			f.Release()
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Fetch = %v, want %v", err, tt.wantErr)
			}
			if n := fake.openCount("a.onnx"); n != tt.wantOpens {
				t.Fatalf("opened %d times, want %d", n, tt.wantOpens)
			}
			tmpEmpty(t, s)
		})
	}
}

func TestBadDownloadsLeaveNothingServed(t *testing.T) {
	t.Parallel()
	body := "the real weights"
	sum := sha256.Sum256([]byte(body))
	tests := []struct {
		name    string
		setup   func(*fakeStore)
		loc     Location
		wantErr error
	}{
		{"store's MD5 differs", func(f *fakeStore) { f.badMD5["a.onnx"] = true }, s3("a.onnx"), ErrChecksum},
		{"store's CRC32C differs", func(f *fakeStore) { f.crc32c, f.badCRC["a.onnx"] = true, true }, s3("a.onnx"), ErrChecksum},
		{"store's CRC32C is checked instead of its MD5", func(f *fakeStore) { f.crc32c, f.badMD5["a.onnx"] = true, true }, s3("a.onnx"), nil},
		{"a declared sha256 replaces the store's MD5", func(f *fakeStore) { f.badMD5["a.onnx"] = true },
			Location{URI: "s3://bucket/a.onnx", SHA256: hex.EncodeToString(sum[:])}, nil},
		{"declared sha256 differs", nil, Location{URI: "s3://bucket/a.onnx", SHA256: strings.Repeat("0", 64)}, ErrChecksum},
		{"body cut short", func(f *fakeStore) { f.short = true }, s3("a.onnx"), ErrUnavailable},
		{"store stalls", func(f *fakeStore) { f.stall = true }, s3("a.onnx"), ErrUnavailable},
		{"declared sha256 matches", nil, Location{URI: "s3://bucket/a.onnx", SHA256: hex.EncodeToString(sum[:])}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fake := newFake(map[string]string{"a.onnx": body})
			if tt.setup != nil {
				tt.setup(fake)
			}
			s := fakeTier(t, fake, 1<<20, func(o *Options) { o.IdleTimeout = 50 * time.Millisecond })
			f, err := s.Fetch(context.Background(), tt.loc, mv)
			defer f.Release()
			if tt.wantErr == nil {
				must(t, err)
				if read(t, f.Path) != body {
					t.Fatal("wrong bytes served")
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Fetch = %v, want %v", err, tt.wantErr)
			}
			if u := s.Usage(); len(u.Entries) != 0 || u.Used != 0 {
				t.Fatalf("a failed download left %+v in the tier", u)
			}
			tmpEmpty(t, s)
		})
	}
}

func TestPrefixDigestIsTheManifestOfItsFiles(t *testing.T) {
	t.Parallel()
	fake := newFake(map[string]string{"tri/config.pbtxt": "cfg", "tri/1/model.onnx": "weights"})
	s := fakeTier(t, fake, 1<<20)
	h := sha256.New()
	for _, f := range []struct{ rel, body string }{{"1/model.onnx", "weights"}, {"config.pbtxt", "cfg"}} {
		fmt.Fprintf(h, "%x  %s\n", sha256.Sum256([]byte(f.body)), f.rel)
	}
	f, err := s.Fetch(context.Background(), Location{URI: "s3://bucket/tri", SHA256: hex.EncodeToString(h.Sum(nil))}, mv)
	must(t, err)
	f.Release()
}

func TestDiskTierEvictsLeastRecentlyUsedAndNeverWhatIsInUse(t *testing.T) {
	t.Parallel()
	hundred := strings.Repeat("x", 100)
	fake := newFake(map[string]string{"a": hundred, "b": hundred, "c": hundred, "big": strings.Repeat("x", 400)})
	s := fakeTier(t, fake, 250)
	fetch := func(key string) (Fetched, error) { return s.Fetch(context.Background(), s3(key), mv) }
	for _, k := range []string{"a", "b", "a"} { // a used last
		f, err := fetch(k)
		must(t, err)
		f.Release()
	}
	c, err := fetch("c") // evicts b, the least recently used
	must(t, err)
	var sources []string
	for _, e := range s.Usage().Entries {
		sources = append(sources, e.Source)
	}
	if want := "s3://bucket/c s3://bucket/a"; strings.Join(sources, " ") != want {
		t.Fatalf("tier holds %v, want %s", sources, want)
	}
	if got := testutil.ToFloat64(s.opts.Metrics.evictions); got != 1 {
		t.Fatalf("evictions = %v", got)
	}
	a, err := fetch("a")
	must(t, err)
	// Both a and c in use: b cannot fit, and a model larger than the tier never does.
	if _, err := fetch("b"); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("fetch while the tier is in use = %v, want ErrDiskFull", err)
	}
	if _, err := fetch("big"); !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), "--disk-cache-size") {
		t.Fatalf("fetch of a model larger than the tier = %v", err)
	}
	a.Release()
	c.Release()
	b, err := fetch("b")
	must(t, err)
	b.Release()
	if fake.openCount("a") != 1 || fake.openCount("b") != 2 {
		t.Fatalf("downloads: a %d, b %d", fake.openCount("a"), fake.openCount("b"))
	}
	tmpEmpty(t, s)
}

func TestTierSurvivesARestartAndDropsWhatIsBroken(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "tier")
	fake := newFake(map[string]string{"a": "aaaa", "b": "bbbb"})
	open := func() *Store {
		s, err := New(Options{CacheDir: dir, DiskBytes: 1 << 20})
		must(t, err)
		s.remotes["s3"] = fake
		return s
	}
	s := open()
	for _, k := range []string{"a", "b"} {
		f, err := s.Fetch(context.Background(), s3(k), mv)
		must(t, err)
		f.Release()
	}
	b, _ := s.Fetch(context.Background(), s3("b"), mv)
	b.Release()
	s.Close()
	// A crash: b's file half written over, a download left in .tmp.
	must(t, os.WriteFile(b.Path, []byte("bb"), 0o644))
	must(t, os.MkdirAll(filepath.Join(dir, tmpDir, "partial", dataDir), 0o755))
	must(t, os.WriteFile(filepath.Join(dir, tmpDir, "partial", dataDir, ModelFile), []byte("half"), 0o644))

	s = open()
	defer s.Close()
	if got := testutil.ToFloat64(s.opts.Metrics.dropped); got != 1 {
		t.Fatalf("dropped = %v, want b", got)
	}
	tmpEmpty(t, s)
	for _, k := range []string{"a", "b"} {
		f, err := s.Fetch(context.Background(), s3(k), mv)
		must(t, err)
		if want := strings.Repeat(k, 4); read(t, f.Path) != want {
			t.Fatalf("%s serves %q", k, read(t, f.Path))
		}
		f.Release()
	}
	if fake.openCount("a") != 1 || fake.openCount("b") != 2 {
		t.Fatalf("after the restart a was read %d times in all, b %d", fake.openCount("a"), fake.openCount("b"))
	}
}

func TestAnArchiveIsUnpackedIntoTheTier(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, f := range []struct{ name, body string }{{"tri/config.pbtxt", "cfg"}, {"tri/1/model.onnx", "weights"}} {
		must(t, tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg}))
		_, err := tw.Write([]byte(f.body))
		must(t, err)
	}
	must(t, tw.Close())
	must(t, gz.Close())
	fake := newFake(map[string]string{"tri.tar.gz": buf.String()})
	s := fakeTier(t, fake, 1<<20)
	f, err := s.Fetch(context.Background(), s3("tri.tar.gz"), mv)
	must(t, err)
	defer f.Release()
	if filepath.Base(f.Path) != "tri" || read(t, filepath.Join(f.Path, "1", "model.onnx")) != "weights" || f.Bytes != 10 {
		t.Fatalf("unpacked at %s, %d bytes", f.Path, f.Bytes)
	}
}

func TestAHungStoreHoldsOnlyItsOwnDownloads(t *testing.T) {
	t.Parallel()
	hung := newFake(map[string]string{"a": "aaaa"})
	hung.gate = make(chan struct{})
	defer close(hung.gate)
	s := fakeTier(t, hung, 1<<20, func(o *Options) { o.Concurrency = 1 })
	root := t.TempDir()
	must(t, os.WriteFile(filepath.Join(root, "m.onnx"), []byte("local"), 0o644))
	files, err := newFileStore([]string{root})
	must(t, err)
	s.remotes["file"] = files
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	for range 2 { // the hung store's one slot is taken; the second waits for it
		go s.Fetch(ctx, s3("a"), mv)
	}
	f, err := s.Fetch(context.Background(), Location{URI: "file://" + filepath.Join(files.roots[0], "m.onnx")}, mv)
	must(t, err)
	f.Release()
	if read(t, f.Path) != "local" {
		t.Fatal("wrong bytes")
	}
}

func TestAFileSourceReplacedInPlaceIsFetchedAgain(t *testing.T) {
	t.Parallel()
	root, _, s := tree(t)
	uri := "file://" + filepath.Join(root, "iris", "1", "model.onnx")
	f, err := s.Fetch(context.Background(), Location{URI: uri}, mv)
	must(t, err)
	f.Release()
	f, err = s.Fetch(context.Background(), Location{URI: uri}, mv)
	must(t, err)
	f.Release()
	if !f.Cached {
		t.Fatal("an unchanged file was copied again")
	}
	must(t, os.WriteFile(filepath.Join(root, "iris", "1", "model.onnx"), []byte("new onnx bytes"), 0o644))
	f, err = s.Fetch(context.Background(), Location{URI: uri}, mv)
	must(t, err)
	defer f.Release()
	if f.Cached || read(t, f.Path) != "new onnx bytes" {
		t.Fatalf("cached=%v, serves %q", f.Cached, read(t, f.Path))
	}
}

func TestFetchCopiesADirectoryTreeAndRefusesLinks(t *testing.T) {
	t.Parallel()
	root, _, s := tree(t)
	must(t, os.MkdirAll(filepath.Join(root, "tri", "1"), 0o755))
	must(t, os.WriteFile(filepath.Join(root, "tri", "config.pbtxt"), []byte("backend: \"python\""), 0o644))
	must(t, os.WriteFile(filepath.Join(root, "tri", "1", "model.py"), []byte("import numpy"), 0o644))
	f, err := s.Fetch(context.Background(), Location{URI: "file://" + filepath.Join(root, "tri")}, mv)
	must(t, err)
	f.Release()
	if read(t, filepath.Join(f.Path, "1", "model.py")) != "import numpy" || f.Bytes != int64(len("backend: \"python\"")+len("import numpy")) {
		t.Fatalf("copied %d bytes", f.Bytes)
	}
	must(t, os.Symlink("/etc/passwd", filepath.Join(root, "tri", "1", "leak")))
	if _, err := s.Fetch(context.Background(), Location{URI: "file://" + filepath.Join(root, "tri")}, mv); !errors.Is(err, ErrBadURI) {
		t.Fatalf("tree with a symlink: %v", err)
	}
}

func TestFetchHonoursCancellation(t *testing.T) {
	t.Parallel()
	root, _, s := tree(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Fetch(ctx, Location{URI: "file://" + filepath.Join(root, "iris", "1", "model.onnx")}, mv)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch with a cancelled context = %v", err)
	}
}
