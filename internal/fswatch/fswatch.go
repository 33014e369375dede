// Package fswatch follows files that operators and Kubernetes replace rather than edit in
// place: it watches directories, not files, so that an editor's rename-over, a ConfigMap
// volume's ..data link swap and a directory removed and created again are all seen.
package fswatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Settle is how long the watched entries must be quiet before changed is called: writers
// touch a file several times.
const Settle = 100 * time.Millisecond

// Watch calls changed, from the calling goroutine, once as soon as dirs are watched (so that
// the caller reads its files with no change missed since), then each time an entry of one of
// dirs for which relevant(path) holds was created, written, renamed or removed, once Settle
// has passed without another such event. Before each call the directories are watched again,
// so one that was removed and created anew (a new inode) is followed; one that is missing
// at the start is an error. Returns nil when ctx ends.
func Watch(ctx context.Context, dirs []string, relevant func(path string) bool, log *slog.Logger, changed func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			return fmt.Errorf("watch %s: %w", d, err)
		}
	}
	changed()
	var pending <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("file watcher closed")
			}
			if relevant(filepath.Clean(ev.Name)) {
				pending = time.After(Settle)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("file watcher closed")
			}
			log.WarnContext(ctx, "file watcher", "dirs", dirs, "error", err)
		case <-pending:
			pending = nil
			for _, d := range dirs {
				_ = w.Add(d) // gone for now: watched again when its parent sees it return
			}
			changed()
		}
	}
}
