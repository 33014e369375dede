package fswatch

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWatchSeesReplacementsAndIgnoresTheRest(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "conf")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	relevant := func(p string) bool { return p == dir || filepath.Dir(p) == dir && filepath.Ext(p) == ".yaml" }
	changed := make(chan struct{}, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Watch(ctx, []string{parent, dir}, relevant, slog.New(slog.NewTextHandler(io.Discard, nil)), func() { changed <- struct{}{} })
	}()
	write := func(path string) {
		t.Helper()
		if err := os.WriteFile(path+".tmp", []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, want bool) {
		t.Helper()
		select {
		case <-changed:
			if !want {
				t.Fatalf("%s: changed called", what)
			}
		case <-time.After(5 * Settle):
			if want {
				t.Fatalf("%s: changed not called", what)
			}
		}
	}
	expect("the watches in place", true)
	write(filepath.Join(dir, "a.yaml"))
	expect("a file renamed over", true)
	write(filepath.Join(dir, "notes.txt"))
	expect("an irrelevant file", false)
	// The directory replaced by a new one: the new one is followed.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	expect("the directory removed", true)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	expect("the directory created again", true)
	write(filepath.Join(dir, "b.yaml"))
	expect("a file in the new directory", true)

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Watch returned %v when its context ended, want nil", err)
	}
	if err := Watch(context.Background(), []string{filepath.Join(parent, "missing")}, relevant, nil, func() {}); err == nil {
		t.Fatal("watching a missing directory at the start must fail")
	}
}
