package modelserver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// CopyTree copies the directory src to dst (which must not exist yet): only regular files
// and directories; a symbolic link, which could lead out of the model's files, or any other
// special file fails the copy.
func CopyTree(src, dst string) error {
	// os.CopyFS copies a symlink as a link; behind noLinks it refuses one, as it refuses any
	// other special file.
	err := os.CopyFS(dst, noLinks{os.DirFS(src)})
	if errors.Is(err, fs.ErrInvalid) {
		err = fmt.Errorf("%w: only regular files are installed", err)
	}
	return err
}

// noLinks is a file system whose symbolic links cannot be read: os.CopyFS fails on one
// instead of copying it.
type noLinks struct{ fs.FS }
