package storage

import (
	"archive/tar"
	"archive/zip"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
)

// ErrArchive wraps every reason an archive is refused (path outside the target, a link, a
// device file, over the size cap, corrupt data). The worker maps it to INVALID_ARGUMENT.
var ErrArchive = errors.New("unsafe or corrupt archive")

const (
	maxNameLen    = 1024    // bytes in one entry's path; keeps dst+name under PATH_MAX
	maxSegmentLen = 255     // bytes in one path element: NAME_MAX on Linux file systems
	maxTarTrailer = 1 << 20 // zero padding tolerated after the tar end marker (tar pads records)
)

// ArchiveKind names an archive format by its file name: "tar.gz" for .tar.gz/.tgz, "zip" for .zip, "" otherwise.
// Only the suffix matters, compared without regard to case.
func ArchiveKind(name string) string {
	n := strings.ToLower(name)
	switch {
	case strings.HasSuffix(n, ".tar.gz"), strings.HasSuffix(n, ".tgz"):
		return "tar.gz"
	case strings.HasSuffix(n, ".zip"):
		return "zip"
	}
	return ""
}

// Unpack extracts the archive file at src (kind as ArchiveKind returns) into the directory dst,
// which must exist and be empty. It refuses: entries whose cleaned path is absolute or escapes dst
// (".." anywhere, leading "/", backslashes treated as separators too), symlinks and hard links,
// device/fifo/other non-regular entries (directories are fine), duplicate file paths, more than
// maxFiles entries, and a total of uncompressed bytes over maxBytes (counted while writing, so a
// header lying about its size cannot get past the cap; zip bombs are stopped). Files are written
// 0o644, directories 0o755. ctx cancels it between and during file copies. It returns the number
// of bytes written. On error dst may hold partial output; the caller removes it.
//
// Every refusal wraps ErrArchive; cancellation returns ctx's error; an unknown kind, a dst that
// is missing or not empty, and I/O errors on src or dst are returned as they are. Modes are set
// exactly, whatever the umask. Writes go through an os.Root on dst, so even a path rule missed
// here could not reach outside it. Unpack is safe to call concurrently for different dsts.
func Unpack(ctx context.Context, kind, src, dst string, maxBytes int64, maxFiles int) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	root, err := openEmpty(dst)
	if err != nil {
		return 0, fmt.Errorf("unpack into %s: %w", dst, err)
	}
	defer root.Close()
	x := &extractor{root: root, maxBytes: maxBytes, maxFiles: maxFiles, seen: map[string]bool{}}
	switch kind {
	case "tar.gz":
		err = x.tarGz(ctx, src)
	case "zip":
		err = x.zip(ctx, src)
	default:
		err = fmt.Errorf("archive kind %q not supported", kind)
	}
	if err != nil {
		return x.written, fmt.Errorf("unpack %s: %w", src, err)
	}
	return x.written, nil
}

// openEmpty opens dst as the root to extract into. It must be empty so that nothing already
// there (a planted symlink, a file to overwrite) can take part in the extraction.
func openEmpty(dst string) (*os.Root, error) {
	root, err := os.OpenRoot(dst)
	if err != nil {
		return nil, err
	}
	d, err := root.Open(".")
	if err == nil {
		_, err = d.Readdirnames(1)
		d.Close()
		if err == io.EOF {
			return root, nil
		}
		if err == nil {
			err = errors.New("directory not empty")
		}
	}
	root.Close()
	return nil, err
}

// extractor holds one Unpack's caps and what it has written so far. Not safe for concurrent use.
type extractor struct {
	root     *os.Root
	maxBytes int64
	written  int64
	maxFiles int
	entries  int
	seen     map[string]bool // clean slash path -> whether it is a directory
}

func (x *extractor) tarGz(ctx context.Context, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return corrupt(err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return corrupt(err)
		}
		if err := x.count(); err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			err = x.dir(hdr.Name)
		case tar.TypeReg: // the reader turns the old TypeRegA into TypeReg or TypeDir
			err = x.file(ctx, hdr.Name, uint64(hdr.Size), tr)
		case tar.TypeXGlobalHeader:
			// pax metadata for the whole archive (git archive writes one); nothing to extract
		case tar.TypeSymlink, tar.TypeLink:
			err = refuse(hdr.Name, "a link")
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			err = refuse(hdr.Name, "a device or fifo")
		default:
			err = refuse(hdr.Name, fmt.Sprintf("not a regular file or directory (type %q)", hdr.Typeflag))
		}
		if err != nil {
			return err
		}
	}
	return tarTrailer(ctx, zr)
}

// tarTrailer reads the gzip stream past the tar end marker. Zero padding is allowed; anything
// else refuses the archive, and so does a corrupt or concatenated gzip member. Reading to the
// end is also what checks the gzip CRC.
func tarTrailer(ctx context.Context, zr io.Reader) error {
	in := readerWithContext{ctx, archiveReader{io.LimitReader(zr, maxTarTrailer+1)}}
	buf := make([]byte, 32<<10)
	var total int
	for {
		n, err := in.Read(buf)
		total += n
		for _, b := range buf[:n] {
			if b != 0 {
				return fmt.Errorf("%w: data after the end of the tar stream", ErrArchive)
			}
		}
		if total > maxTarTrailer {
			return fmt.Errorf("%w: over %d bytes of padding after the tar stream", ErrArchive, maxTarTrailer)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (x *extractor) zip(ctx context.Context, src string) error {
	zr, err := zip.OpenReader(src)
	if err != nil {
		if zr != nil { // ErrInsecurePath (GODEBUG zipinsecurepath=0) comes with an open reader
			zr.Close()
		}
		return corrupt(err)
	}
	defer zr.Close()
	if len(zr.File) > x.maxFiles {
		return fmt.Errorf("%w: %d entries, over the cap of %d", ErrArchive, len(zr.File), x.maxFiles)
	}
	for _, f := range zr.File {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := x.count(); err != nil {
			return err
		}
		mode := f.Mode()
		switch {
		case mode&fs.ModeSymlink != 0:
			err = refuse(f.Name, "a link")
		case mode&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0:
			err = refuse(f.Name, "a device, fifo or socket")
		case mode.Type()&^fs.ModeDir != 0:
			err = refuse(f.Name, fmt.Sprintf("not a regular file or directory (mode %v)", mode))
		case mode.IsDir(): // any data a directory entry carries is ignored
			err = x.dir(f.Name)
		default:
			err = x.zipFile(ctx, f)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (x *extractor) zipFile(ctx context.Context, f *zip.File) error {
	// Checked before opening so a bomb is refused without inflating any of it.
	if x.over(f.UncompressedSize64) {
		return x.overCap(f.Name)
	}
	rc, err := f.Open()
	if err != nil {
		return corrupt(fmt.Errorf("%s: %w", f.Name, err))
	}
	defer rc.Close()
	return x.file(ctx, f.Name, f.UncompressedSize64, rc)
}

// count admits one more entry, or refuses the archive once it has more than maxFiles.
func (x *extractor) count() error {
	x.entries++
	if x.entries > x.maxFiles {
		return fmt.Errorf("%w: more than %d entries", ErrArchive, x.maxFiles)
	}
	return nil
}

// over reports whether size more bytes would take the total past maxBytes.
func (x *extractor) over(size uint64) bool {
	left := x.maxBytes - x.written
	return left < 0 || size > uint64(left)
}

func (x *extractor) overCap(name string) error {
	return fmt.Errorf("%w: %q: over the cap of %d uncompressed bytes", ErrArchive, name, x.maxBytes)
}

// dir creates the directory entry name; repeating a directory is harmless.
func (x *extractor) dir(name string) error {
	p, err := entryPath(name)
	if err != nil {
		return err
	}
	return x.mkdirs(name, p)
}

// file writes r, which the archive says holds size bytes, to the entry name. The size is only
// used to refuse early: the cap is enforced on the bytes that actually arrive.
func (x *extractor) file(ctx context.Context, name string, size uint64, r io.Reader) error {
	p, err := entryPath(name)
	if err != nil {
		return err
	}
	if p == "." {
		return refuse(name, "a file in place of the target directory")
	}
	if _, ok := x.seen[p]; ok {
		return refuse(name, "a second entry for the same path")
	}
	if x.over(size) {
		return x.overCap(name)
	}
	if err := x.mkdirs(name, path.Dir(p)); err != nil {
		return err
	}
	x.seen[p] = false
	// O_EXCL: never write through anything already at p.
	out, err := x.root.OpenFile(filepath.FromSlash(p), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	in := readerWithContext{ctx, archiveReader{r}}
	n, err := io.Copy(out, io.LimitReader(in, x.maxBytes-x.written))
	x.written += n
	if err == nil {
		// The cap is used up or the entry ended; one byte more means it lied about its size.
		var b [1]byte
		switch m, rerr := io.ReadFull(in, b[:]); {
		case m > 0:
			err = x.overCap(name)
		case rerr != io.EOF:
			err = rerr
		}
	}
	if cerr := out.Chmod(0o644); err == nil {
		err = cerr
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

// mkdirs creates directory p (a clean slash path from entry name) and its missing parents,
// refusing to make a directory where the archive already put a file.
func (x *extractor) mkdirs(name, p string) error {
	if p == "." {
		return nil
	}
	if isDir, ok := x.seen[p]; ok {
		if !isDir {
			return refuse(name, fmt.Sprintf("in conflict with the file %q", p))
		}
		return nil
	}
	if err := x.mkdirs(name, path.Dir(p)); err != nil {
		return err
	}
	fp := filepath.FromSlash(p)
	if err := x.root.Mkdir(fp, 0o755); err != nil {
		return err
	}
	if err := x.root.Chmod(fp, 0o755); err != nil {
		return err
	}
	x.seen[p] = true
	return nil
}

// entryPath turns an entry's name into a clean slash path inside the target ("." for the
// target itself), or refuses it. Backslashes count as separators, so a name written for
// Windows cannot hide a "..".
func entryPath(name string) (string, error) {
	p := strings.ReplaceAll(name, `\`, "/")
	switch {
	case p == "":
		return "", refuse(name, "an empty name")
	case len(p) > maxNameLen:
		return "", refuse(name, "a name too long")
	case strings.ContainsRune(p, 0):
		return "", refuse(name, "a name holding NUL")
	case strings.HasPrefix(p, "/"):
		return "", refuse(name, "an absolute path")
	}
	for _, seg := range strings.Split(p, "/") {
		switch {
		case seg == "..":
			return "", refuse(name, `a path with ".."`)
		case len(seg) > maxSegmentLen:
			return "", refuse(name, "a path element too long")
		}
	}
	return path.Clean(p), nil
}

func refuse(name, why string) error {
	return fmt.Errorf("%w: %q is %s", ErrArchive, name, why)
}

// archiveReader marks what goes wrong reading an archive's contents as ErrArchive, but for
// io.EOF, which ends a Read normally; see corrupt.
type archiveReader struct{ r io.Reader }

func (a archiveReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if err == io.EOF {
		return n, err
	}
	return n, corrupt(err)
}

// corrupt wraps a decoder's error with ErrArchive; outside a Read, io.EOF too means the
// archive ended early (an empty gzip file, a zip header past the end). It leaves alone errors
// the OS gave opening or reading the archive file (a *fs.PathError holding a syscall.Errno):
// those are the disk's fault, not the archive's. A PathError without an Errno is the
// archive's: a zip whose offsets make os.File.ReadAt refuse a negative offset.
func corrupt(err error) error {
	var pe *fs.PathError
	var errno syscall.Errno
	if err == nil || errors.Is(err, ErrArchive) ||
		(errors.As(err, &pe) && errors.As(pe.Err, &errno)) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrArchive, err)
}
