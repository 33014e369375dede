package storage

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"cmp"
	"compress/flate"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const (
	testMaxBytes = 1 << 20
	testMaxFiles = 64
)

// archiveEntry is one member of a test archive. typ is a tar type flag (0 for a regular
// file); zipBytes maps it to the matching zip mode. Names may hold "{outside}", replaced by
// the sentinel directory of the site the archive is unpacked in.
type archiveEntry struct {
	name, body string
	typ        byte
	link       string
	mode       int64 // 0 for 0o644 (files) or 0o755 (directories)
}

func tarGzBytes(tb testing.TB, entries []archiveEntry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, ModTime: time.Unix(1e9, 0)}
		switch e.typ {
		case 0:
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(e.body))
		case tar.TypeChar, tar.TypeBlock:
			hdr.Devmajor, hdr.Devminor = 1, 3
		case tar.TypeXGlobalHeader: // the writer wants nothing else set
			hdr = &tar.Header{Name: e.name, Typeflag: e.typ, PAXRecords: map[string]string{"comment": "0123abcd"}}
		}
		if hdr.Mode == 0 && e.typ != tar.TypeXGlobalHeader {
			hdr.Mode = 0o644
		}
		if err := tw.WriteHeader(hdr); err != nil {
			tb.Fatalf("tar header %q: %v", e.name, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func zipBytes(tb testing.TB, entries []archiveEntry) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		fh := &zip.FileHeader{Name: e.name, Method: zip.Deflate, Modified: time.Unix(1e9, 0)}
		perm := fs.FileMode(e.mode)
		if perm == 0 {
			perm = 0o644
		}
		body := e.body
		switch e.typ {
		case 0:
			fh.SetMode(perm)
		case tar.TypeDir:
			if !strings.HasSuffix(fh.Name, "/") {
				fh.Name += "/"
			}
			fh.SetMode(fs.ModeDir | 0o755)
		case tar.TypeSymlink:
			fh.SetMode(fs.ModeSymlink | 0o777)
			body = e.link
		case tar.TypeChar:
			fh.SetMode(fs.ModeDevice | fs.ModeCharDevice | perm)
		case tar.TypeBlock:
			fh.SetMode(fs.ModeDevice | perm)
		case tar.TypeFifo:
			fh.SetMode(fs.ModeNamedPipe | perm)
		default:
			tb.Fatalf("zip has no entry of tar type %q", e.typ)
		}
		w, err := zw.CreateHeader(fh)
		if err != nil {
			tb.Fatalf("zip header %q: %v", e.name, err)
		}
		if e.typ != tar.TypeDir {
			if _, err := w.Write([]byte(body)); err != nil {
				tb.Fatal(err)
			}
		}
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func archiveBytes(tb testing.TB, kind string, entries []archiveEntry) []byte {
	tb.Helper()
	if kind == "zip" {
		return zipBytes(tb, entries)
	}
	return tarGzBytes(tb, entries)
}

func gzipBytes(tb testing.TB, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// unpackSite is base/{dst,outside} with the archive at base/in. outside is the sentinel no
// archive may write into.
type unpackSite struct{ base, src, dst, outside string }

func newUnpackSite(tb testing.TB) unpackSite {
	tb.Helper()
	base := tb.TempDir()
	s := unpackSite{base: base, src: filepath.Join(base, "in"), dst: filepath.Join(base, "dst"), outside: filepath.Join(base, "outside")}
	for _, d := range []string{s.dst, s.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	return s
}

func (s unpackSite) write(tb testing.TB, data []byte) {
	tb.Helper()
	if err := os.WriteFile(s.src, data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// entries returns es with "{outside}" in names and link targets replaced by the sentinel.
func (s unpackSite) entries(es []archiveEntry) []archiveEntry {
	out := slices.Clone(es)
	for i := range out {
		out[i].name = strings.ReplaceAll(out[i].name, "{outside}", s.outside)
		out[i].link = strings.ReplaceAll(out[i].link, "{outside}", s.outside)
	}
	return out
}

// assertContained fails tb if anything appeared beside dst or in the sentinel, or if dst
// holds anything but regular files and directories.
func (s unpackSite) assertContained(tb testing.TB) {
	tb.Helper()
	names, err := os.ReadDir(s.base)
	if err != nil {
		tb.Fatal(err)
	}
	for _, d := range names {
		if n := d.Name(); n != "dst" && n != "outside" && n != "in" {
			tb.Errorf("%s was written beside dst", filepath.Join(s.base, n))
		}
	}
	if out, err := os.ReadDir(s.outside); err != nil || len(out) != 0 {
		tb.Errorf("sentinel %s: %v, %d entries; want it empty", s.outside, err, len(out))
	}
	err = filepath.WalkDir(s.dst, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			tb.Errorf("%s has type %v; want only regular files and directories", p, d.Type())
		}
		return nil
	})
	if err != nil {
		tb.Error(err)
	}
}

// readTree maps each path under dir to its mode and, for files, its contents.
func readTree(tb testing.TB, dir string) map[string]string {
	tb.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		got[filepath.ToSlash(rel)] = fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			got[filepath.ToSlash(rel)] += " " + string(b)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return got
}

func TestArchiveKind(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		want string
	}{
		{"model.tar.gz", "tar.gz"},
		{"s3/bucket/model.TGZ", "tar.gz"},
		{"model.tgz", "tar.gz"},
		{"model.zip", "zip"},
		{"MODEL.ZIP", "zip"},
		{"model.onnx", ""},
		{"model.tar", ""},
		{"model.gz", ""},
		{"zip", ""},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			t.Parallel()
			if got := ArchiveKind(tt.give); got != tt.want {
				t.Errorf("ArchiveKind(%q) = %q, want %q", tt.give, got, tt.want)
			}
		})
	}
}

func TestUnpack(t *testing.T) {
	t.Parallel()
	const dir, file = "drwxr-xr-x", "-rw-r--r-- "
	big := strings.Repeat("x", testMaxBytes)
	tests := []struct {
		name    string
		kinds   []string
		give    []archiveEntry
		want    map[string]string
		wantLen int64
	}{
		{
			name: "single top-level directory kept",
			give: []archiveEntry{
				{name: "resnet/", typ: tar.TypeDir},
				{name: "resnet/config.pbtxt", body: "name: \"resnet\""},
				{name: "resnet/1/", typ: tar.TypeDir},
				{name: "resnet/1/model.onnx", body: "onnx bytes"},
			},
			want: map[string]string{
				"resnet":              dir,
				"resnet/config.pbtxt": file + "name: \"resnet\"",
				"resnet/1":            dir,
				"resnet/1/model.onnx": file + "onnx bytes",
			},
			wantLen: 24,
		},
		{
			name:    "parents made without directory entries",
			give:    []archiveEntry{{name: "a/b/c.txt", body: "c"}, {name: "a/d.txt", body: "dd"}},
			want:    map[string]string{"a": dir, "a/b": dir, "a/b/c.txt": file + "c", "a/d.txt": file + "dd"},
			wantLen: 3,
		},
		{
			name:    "dot entries as tar -C dir . writes them",
			give:    []archiveEntry{{name: "./", typ: tar.TypeDir}, {name: "./model.onnx", body: "m"}, {name: "./x/./y", body: "y"}},
			want:    map[string]string{"model.onnx": file + "m", "x": dir, "x/y": file + "y"},
			wantLen: 2,
		},
		{
			name:    "backslashes are separators",
			give:    []archiveEntry{{name: `win\1\model.onnx`, body: "m"}},
			want:    map[string]string{"win": dir, "win/1": dir, "win/1/model.onnx": file + "m"},
			wantLen: 1,
		},
		{
			name:    "modes in the archive are ignored",
			give:    []archiveEntry{{name: "run.sh", body: "#!", mode: 0o4777}, {name: "d", typ: tar.TypeDir, mode: 0o777}},
			want:    map[string]string{"run.sh": file + "#!", "d": dir},
			wantLen: 2,
		},
		{
			name:    "repeated directory entries",
			give:    []archiveEntry{{name: "d/", typ: tar.TypeDir}, {name: "d/f", body: "f"}, {name: "d/", typ: tar.TypeDir}},
			want:    map[string]string{"d": dir, "d/f": file + "f"},
			wantLen: 1,
		},
		{
			name:    "exactly at both caps",
			give:    append(slices.Repeat([]archiveEntry{{name: "d", typ: tar.TypeDir}}, testMaxFiles-1), archiveEntry{name: "d/big", body: big}),
			want:    map[string]string{"d": dir, "d/big": file + big},
			wantLen: testMaxBytes,
		},
		{
			name:    "pax global header as git archive writes it",
			kinds:   []string{"tar.gz"},
			give:    []archiveEntry{{name: "pax_global_header", typ: tar.TypeXGlobalHeader}, {name: "m/model.onnx", body: "m"}},
			want:    map[string]string{"m": dir, "m/model.onnx": file + "m"},
			wantLen: 1,
		},
		{name: "empty file", give: []archiveEntry{{name: "empty"}}, want: map[string]string{"empty": file}},
		{name: "empty archive", want: map[string]string{}},
	}
	for _, tt := range tests {
		for _, kind := range kindsOr(tt.kinds) {
			t.Run(kind+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				s := newUnpackSite(t)
				s.write(t, archiveBytes(t, kind, tt.give))
				n, err := Unpack(context.Background(), kind, s.src, s.dst, testMaxBytes, testMaxFiles)
				if err != nil {
					t.Fatalf("Unpack: %v", err)
				}
				if n != tt.wantLen {
					t.Errorf("Unpack wrote %d bytes, want %d", n, tt.wantLen)
				}
				if got := readTree(t, s.dst); !maps.Equal(got, tt.want) {
					t.Errorf("unpacked tree:\n got %q\nwant %q", got, tt.want)
				}
				s.assertContained(t)
			})
		}
	}
}

func TestUnpackRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		kinds    []string
		give     []archiveEntry
		maxBytes int64
		maxFiles int
	}{
		{name: "parent", give: []archiveEntry{{name: "../evil", body: "x"}}},
		{name: "parent into sentinel", give: []archiveEntry{{name: "../outside/evil", body: "x"}}},
		{name: "absolute", give: []archiveEntry{{name: "/abs/evil", body: "x"}}},
		{name: "absolute into sentinel", give: []archiveEntry{{name: "{outside}/evil", body: "x"}}},
		{name: "absolute directory", give: []archiveEntry{{name: "{outside}/d", typ: tar.TypeDir}}},
		{name: "escape after a directory", give: []archiveEntry{{name: "a/../../evil", body: "x"}}},
		{name: "backslash escape", give: []archiveEntry{{name: `a\..\..\evil`, body: "x"}}},
		{name: "backslash absolute", give: []archiveEntry{{name: `\abs\evil`, body: "x"}}},
		{name: "dotdot that stays inside", give: []archiveEntry{{name: "a/../b", body: "x"}}},
		{name: "dotdot directory", give: []archiveEntry{{name: "../outside/d/", typ: tar.TypeDir}}},
		{
			name: "symlink then write through it",
			give: []archiveEntry{{name: "link", typ: tar.TypeSymlink, link: "{outside}"}, {name: "link/evil", body: "x"}},
		},
		{name: "relative symlink", give: []archiveEntry{{name: "m.onnx", typ: tar.TypeSymlink, link: "../outside/m.onnx"}}},
		{
			name:  "hard link",
			kinds: []string{"tar.gz"},
			give:  []archiveEntry{{name: "a", body: "a"}, {name: "b", typ: tar.TypeLink, link: "a"}},
		},
		{name: "hard link outside", kinds: []string{"tar.gz"}, give: []archiveEntry{{name: "b", typ: tar.TypeLink, link: "{outside}/x"}}},
		{name: "char device", give: []archiveEntry{{name: "null", typ: tar.TypeChar}}},
		{name: "block device", give: []archiveEntry{{name: "sda", typ: tar.TypeBlock}}},
		{name: "fifo", give: []archiveEntry{{name: "pipe", typ: tar.TypeFifo}}},
		{name: "contiguous file type", kinds: []string{"tar.gz"}, give: []archiveEntry{{name: "s", typ: tar.TypeCont}}},
		{name: "duplicate file", give: []archiveEntry{{name: "a.txt", body: "1"}, {name: "a.txt", body: "2"}}},
		{name: "duplicate after cleaning", give: []archiveEntry{{name: "./a.txt", body: "1"}, {name: "a.txt", body: "2"}}},
		{name: "duplicate spelled differently", give: []archiveEntry{{name: "d/a.txt", body: "1"}, {name: "d//./a.txt", body: "2"}}},
		{name: "directory over a file", give: []archiveEntry{{name: "a", body: "1"}, {name: "a", typ: tar.TypeDir}}},
		{name: "file over a directory", give: []archiveEntry{{name: "a", typ: tar.TypeDir}, {name: "a", body: "1"}}},
		{name: "file under a file", give: []archiveEntry{{name: "a", body: "1"}, {name: "a/b", body: "2"}}},
		{name: "file as the target itself", give: []archiveEntry{{name: ".", body: "1"}}},
		{name: "empty name", kinds: []string{"zip"}, give: []archiveEntry{{name: "", body: "1"}}},
		{name: "path element too long", give: []archiveEntry{{name: strings.Repeat("a", 256), body: "1"}}},
		{name: "name too long", give: []archiveEntry{{name: strings.Repeat("a/", 600) + "f", body: "1"}}},
		{name: "file over the byte cap", give: []archiveEntry{{name: "big", body: strings.Repeat("x", testMaxBytes+1)}}},
		{
			name: "files together over the byte cap",
			give: []archiveEntry{{name: "a", body: strings.Repeat("x", 600<<10)}, {name: "b", body: strings.Repeat("y", 600<<10)}},
		},
		{name: "bomb of zeros", give: []archiveEntry{{name: "bomb", body: strings.Repeat("\x00", 16<<20)}}},
		{name: "small cap", give: []archiveEntry{{name: "a", body: "12345"}}, maxBytes: 4},
		{name: "too many files", give: []archiveEntry{{name: "a"}, {name: "b"}, {name: "c"}}, maxFiles: 2},
		{name: "directories count as entries", give: []archiveEntry{{name: "d", typ: tar.TypeDir}, {name: "d/a"}}, maxFiles: 1},
	}
	for _, tt := range tests {
		for _, kind := range kindsOr(tt.kinds) {
			t.Run(kind+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				s := newUnpackSite(t)
				s.write(t, archiveBytes(t, kind, s.entries(tt.give)))
				maxBytes, maxFiles := cmp.Or(tt.maxBytes, testMaxBytes), cmp.Or(tt.maxFiles, testMaxFiles)
				n, err := Unpack(context.Background(), kind, s.src, s.dst, maxBytes, maxFiles)
				if !errors.Is(err, ErrArchive) {
					t.Errorf("Unpack = %d, %v; want an error wrapping ErrArchive", n, err)
				}
				if n > maxBytes {
					t.Errorf("Unpack wrote %d bytes, over the cap of %d", n, maxBytes)
				}
				s.assertContained(t)
			})
		}
	}
}

func TestUnpackCorrupt(t *testing.T) {
	t.Parallel()
	entries := []archiveEntry{{name: "m/model.onnx", body: "0123456789abcdef0123456789abcdef"}}
	tgz, zipped := tarGzBytes(t, entries), zipBytes(t, entries)
	var stored bytes.Buffer // a zip whose data is stored, so a flipped byte reaches the CRC
	zw := zip.NewWriter(&stored)
	w, err := zw.CreateHeader(&zip.FileHeader{Name: "m.onnx", Method: zip.Store})
	archiveMust(t, err)
	_, err = w.Write([]byte("0123456789abcdef"))
	archiveMust(t, err)
	archiveMust(t, zw.Close())

	var plainTar bytes.Buffer
	tw := tar.NewWriter(&plainTar)
	archiveMust(t, tw.WriteHeader(&tar.Header{Name: "m.onnx", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg}))
	_, err = tw.Write([]byte("m"))
	archiveMust(t, err)
	archiveMust(t, tw.Close())
	tarBytes := plainTar.Bytes()

	tests := []struct {
		name     string
		kind     string
		give     []byte
		maxBytes int64
		wantErr  error
	}{
		{name: "tar padded to a record", kind: "tar.gz", give: gzipBytes(t, append(slices.Clone(tarBytes), make([]byte, 10240)...))},
		{name: "empty file", kind: "tar.gz", give: []byte{}, wantErr: ErrArchive},
		{name: "not gzip", kind: "tar.gz", give: []byte("a model, honest"), wantErr: ErrArchive},
		{name: "truncated gzip", kind: "tar.gz", give: tgz[:len(tgz)/2], wantErr: ErrArchive},
		{name: "gzip trailer cut", kind: "tar.gz", give: tgz[:len(tgz)-4], wantErr: ErrArchive},
		{name: "gzip crc wrong", kind: "tar.gz", give: flipByte(tgz, len(tgz)-8), wantErr: ErrArchive},
		{name: "garbage after gzip", kind: "tar.gz", give: append(slices.Clone(tgz), "garbage garbage"...), wantErr: ErrArchive},
		{name: "zeros after gzip", kind: "tar.gz", give: append(slices.Clone(tgz), make([]byte, 512)...), wantErr: ErrArchive},
		{name: "second gzip member", kind: "tar.gz", give: append(slices.Clone(tgz), gzipBytes(t, []byte("smuggled"))...), wantErr: ErrArchive},
		{name: "data after the tar end", kind: "tar.gz", give: gzipBytes(t, append(slices.Clone(tarBytes), "smuggled"...)), wantErr: ErrArchive},
		{name: "gzip of no tar", kind: "tar.gz", give: gzipBytes(t, bytes.Repeat([]byte("not a tar "), 100)), wantErr: ErrArchive},
		{name: "tar not gzipped", kind: "tar.gz", give: tarBytes, wantErr: ErrArchive},
		{name: "zip given as tar.gz", kind: "tar.gz", give: zipped, wantErr: ErrArchive},
		{name: "empty file", kind: "zip", give: []byte{}, wantErr: ErrArchive},
		{name: "not zip", kind: "zip", give: bytes.Repeat([]byte("PK\x03\x04 junk "), 50), wantErr: ErrArchive},
		{name: "truncated zip", kind: "zip", give: zipped[:len(zipped)-10], wantErr: ErrArchive},
		{name: "zip data flipped", kind: "zip", give: flipByte(stored.Bytes(), bytes.Index(stored.Bytes(), []byte("0123"))), wantErr: ErrArchive},
		{name: "zip header understates size", kind: "zip", give: zipLyingSize(t, make([]byte, 4<<20), 100), wantErr: ErrArchive},
		{name: "zip header understates size past the cap", kind: "zip", give: zipLyingSize(t, make([]byte, 4<<20), 100), maxBytes: 200, wantErr: ErrArchive},
		{name: "tar.gz given as zip", kind: "zip", give: tgz, wantErr: ErrArchive},
		{name: "zip directory offset too far", kind: "zip", give: zipShiftDirectory(zipped, 40), wantErr: ErrArchive},
		{name: "zip directory ends early", kind: "zip", give: zipDirectoryEndsEarly(t, zipped), wantErr: ErrArchive},
	}
	for _, tt := range tests {
		t.Run(tt.kind+"/"+tt.name, func(t *testing.T) {
			t.Parallel()
			s := newUnpackSite(t)
			s.write(t, tt.give)
			maxBytes := cmp.Or(tt.maxBytes, testMaxBytes)
			n, err := Unpack(context.Background(), tt.kind, s.src, s.dst, maxBytes, testMaxFiles)
			if (tt.wantErr == nil && err != nil) || !errors.Is(err, tt.wantErr) {
				t.Errorf("Unpack = %d, %v; want error %v", n, err, tt.wantErr)
			}
			if n > maxBytes {
				t.Errorf("Unpack wrote %d bytes, over the cap of %d", n, maxBytes)
			}
			s.assertContained(t)
		})
	}
}

// zipShiftDirectory moves the central directory offset recorded in the end record of a zip
// with no comment; archive/zip then computes a negative offset for the first local header,
// which os.File.ReadAt refuses with a *fs.PathError.
func zipShiftDirectory(b []byte, by uint32) []byte {
	b = slices.Clone(b)
	off := b[len(b)-6 : len(b)-2]
	binary.LittleEndian.PutUint32(off, binary.LittleEndian.Uint32(off)+by)
	return b
}

// zipDirectoryEndsEarly makes the first central directory record's comment swallow the end
// record and claims one record more, so archive/zip reads the next record at the very end of
// the file and gets a bare io.EOF.
func zipDirectoryEndsEarly(tb testing.TB, b []byte) []byte {
	tb.Helper()
	b = slices.Clone(b)
	end := b[len(b)-22:]
	records := binary.LittleEndian.Uint16(end[8:]) + 1
	binary.LittleEndian.PutUint16(end[8:], records)
	binary.LittleEndian.PutUint16(end[10:], records)
	dir := bytes.Index(b, []byte("PK\x01\x02"))
	if dir < 0 {
		tb.Fatal("no central directory record")
	}
	binary.LittleEndian.PutUint16(b[dir+32:], 22) // comment length
	return b
}

func flipByte(b []byte, i int) []byte {
	b = slices.Clone(b)
	b[i] ^= 0xff
	return b
}

// zipLyingSize is a zip of one deflated entry holding data whose header claims only claimed bytes.
func zipLyingSize(tb testing.TB, data []byte, claimed uint64) []byte {
	tb.Helper()
	var comp bytes.Buffer
	fw, err := flate.NewWriter(&comp, flate.BestCompression)
	archiveMust(tb, err)
	_, err = fw.Write(data)
	archiveMust(tb, err)
	archiveMust(tb, fw.Close())
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.CreateRaw(&zip.FileHeader{
		Name: "m.onnx", Method: zip.Deflate, CRC32: crc32.ChecksumIEEE(data),
		CompressedSize64: uint64(comp.Len()), UncompressedSize64: claimed,
	})
	archiveMust(tb, err)
	_, err = w.Write(comp.Bytes())
	archiveMust(tb, err)
	archiveMust(tb, zw.Close())
	return buf.Bytes()
}

// archiveMust fails tb on err; the archive tests keep their own so they depend on nothing else.
func archiveMust(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

// cancelAfter is a context whose Err reports Canceled once it has been asked n times, so a
// test can cancel in the middle of a copy without racing a timer.
type cancelAfter struct {
	context.Context
	n atomic.Int64
}

func (c *cancelAfter) Err() error {
	if c.n.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func TestUnpackCancel(t *testing.T) {
	t.Parallel()
	const size = 4 << 20
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  func() context.Context
	}{
		{"before it starts", func() context.Context { return cancelled }},
		{"during a copy", func() context.Context {
			c := &cancelAfter{Context: context.Background()}
			c.n.Store(10) // a few checks before, then some 32 KiB reads of the 4 MiB
			return c
		}},
	}
	for _, tt := range tests {
		for _, kind := range kindsOr(nil) {
			t.Run(kind+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				s := newUnpackSite(t)
				s.write(t, archiveBytes(t, kind, []archiveEntry{{name: "big", body: strings.Repeat("x", size)}}))
				n, err := Unpack(tt.ctx(), kind, s.src, s.dst, 2*size, testMaxFiles)
				if !errors.Is(err, context.Canceled) || errors.Is(err, ErrArchive) {
					t.Errorf("Unpack = %d, %v; want context.Canceled and not ErrArchive", n, err)
				}
				if n >= size || (tt.name == "during a copy") != (n > 0) {
					t.Errorf("Unpack wrote %d of %d bytes; want none before it starts, some during a copy", n, size)
				}
				s.assertContained(t)
			})
		}
	}
}

func TestUnpackCallerErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		kind  string
		setup func(t *testing.T, s unpackSite) (src, dst string)
	}{
		{"dst not empty", "zip", func(t *testing.T, s unpackSite) (string, string) {
			archiveMust(t, os.WriteFile(filepath.Join(s.dst, "keep"), []byte("mine"), 0o644))
			return s.src, s.dst
		}},
		{"dst missing", "tar.gz", func(t *testing.T, s unpackSite) (string, string) {
			return s.src, filepath.Join(s.dst, "missing")
		}},
		{"dst a file", "tar.gz", func(t *testing.T, s unpackSite) (string, string) { return s.src, s.src }},
		{"src missing tar.gz", "tar.gz", func(t *testing.T, s unpackSite) (string, string) {
			return filepath.Join(s.base, "nope"), s.dst
		}},
		{"src missing zip", "zip", func(t *testing.T, s unpackSite) (string, string) {
			return filepath.Join(s.base, "nope"), s.dst
		}},
		{"unknown kind", "rar", func(t *testing.T, s unpackSite) (string, string) { return s.src, s.dst }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newUnpackSite(t)
			s.write(t, archiveBytes(t, cmp.Or(tt.kind, "zip"), []archiveEntry{{name: "m.onnx", body: "m"}}))
			src, dst := tt.setup(t, s)
			n, err := Unpack(context.Background(), tt.kind, src, dst, testMaxBytes, testMaxFiles)
			if err == nil || errors.Is(err, ErrArchive) {
				t.Errorf("Unpack = %d, %v; want an error that is not ErrArchive", n, err)
			}
			if b, _ := os.ReadFile(filepath.Join(s.dst, "keep")); tt.name == "dst not empty" && string(b) != "mine" {
				t.Errorf("existing file in dst now holds %q", b)
			}
		})
	}
}

func FuzzUnpack(f *testing.F) {
	valid := []archiveEntry{
		{name: "m/", typ: tar.TypeDir},
		{name: "m/config.pbtxt", body: "name: \"m\""},
		{name: "m/1/model.onnx", body: "onnx"},
	}
	hostile := []archiveEntry{
		{name: "../evil", body: "x"},
		{name: `a\..\..\evil`, body: "x"},
		{name: "link", typ: tar.TypeSymlink, link: "../outside"},
		{name: "link/evil", body: "x"},
		{name: "dev", typ: tar.TypeChar},
	}
	for _, es := range [][]archiveEntry{valid, hostile} {
		f.Add(tarGzBytes(f, es))
		f.Add(zipBytes(f, es))
	}
	f.Add(tarGzBytes(f, []archiveEntry{{name: "b", typ: tar.TypeLink, link: "/etc/passwd"}}))
	f.Add(zipBytes(f, []archiveEntry{{name: "bomb", body: strings.Repeat("\x00", 2<<20)}}))
	f.Add(zipShiftDirectory(zipBytes(f, valid), 40))
	f.Add(zipDirectoryEndsEarly(f, zipBytes(f, valid)))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, kind := range kindsOr(nil) {
			s := newUnpackSite(t)
			s.write(t, data)
			n, err := Unpack(context.Background(), kind, s.src, s.dst, 1<<20, 64)
			if err != nil && !errors.Is(err, ErrArchive) {
				t.Errorf("%s: Unpack error %v does not wrap ErrArchive", kind, err)
			}
			if n < 0 || n > 1<<20 {
				t.Errorf("%s: Unpack wrote %d bytes, cap 1 MiB", kind, n)
			}
			s.assertContained(t)
		}
	})
}

// kindsOr returns kinds, or both archive kinds where a test names none.
func kindsOr(kinds []string) []string {
	if len(kinds) == 0 {
		return []string{"tar.gz", "zip"}
	}
	return kinds
}
