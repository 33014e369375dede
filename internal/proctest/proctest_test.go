package proctest

import (
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// TestLogAndKill: both streams land in the log, line by line, and Kill ends the process's
// children too.
func TestLogAndKill(t *testing.T) {
	p := Start(t, "shell", "/bin/sh", "-c", "echo out; echo err >&2; sleep 600 & echo $!; wait")
	p.Await(t, 10*time.Second, func() bool { return strings.Count(p.Logs(), "\n") == 2 })
	lines := strings.Split(p.Logs(), "\n")
	if lines[0] != "out" || lines[1] != "err" {
		t.Fatalf("log %q", lines)
	}
	child, err := strconv.Atoi(lines[2])
	if err != nil {
		t.Fatal(err)
	}
	p.Kill()
	p.Kill() // twice is safe
	alive := func() bool {
		proc, err := procfs.NewProc(child)
		if err != nil {
			return false
		}
		st, err := proc.Stat()
		return err == nil && st.State != "Z" // a zombie has ended, not yet reaped
	}
	for deadline := time.Now().Add(10 * time.Second); alive(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the child %d outlived Kill", child)
		}
	}
}

func TestStopAndExit(t *testing.T) {
	p := Start(t, "shell", "/bin/sh", "-c", `trap "exit 0" TERM; echo up; while :; do sleep 0.01; done`)
	p.Await(t, 10*time.Second, func() bool { return p.Logs() == "up" })
	p.Stop(t)
	if err := p.Err(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}

	p = Start(t, "shell", "/bin/sh", "-c", "exit 3")
	<-p.Done()
	var exit *exec.ExitError
	if err := p.Err(); !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("Err() = %v, want exit status 3", err)
	}
}

// fatals is a test that fails by panicking with its message, which awaitFailure recovers.
type fatals struct{ testing.TB }

type failure string

func (fatals) Helper() {}

func (fatals) Fatalf(format string, args ...any) { panic(failure(fmt.Sprintf(format, args...))) }

// awaitFailure is how p.Await(timeout, never ready) fails the test; "" if it returns.
func awaitFailure(t *testing.T, p *Process, timeout time.Duration) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = string(r.(failure))
		}
	}()
	p.Await(fatals{t}, timeout, func() bool { return false })
	return ""
}

// TestAwaitFails: a process that exits before it is ready, or one that is not ready in
// time, fails the test with its log.
func TestAwaitFails(t *testing.T) {
	p := Start(t, "shell", "/bin/sh", "-c", "echo broken config; exit 2")
	if got, want := awaitFailure(t, p, time.Minute), "shell exited at start: exit status 2\nbroken config"; got != want {
		t.Errorf("exited: Await failed with %q, want %q", got, want)
	}
	p = Start(t, "shell", "/bin/sh", "-c", "echo starting; sleep 600")
	p.Await(t, 10*time.Second, func() bool { return p.Logs() == "starting" })
	if got, want := awaitFailure(t, p, time.Millisecond), "shell not ready after 1ms:\nstarting"; got != want {
		t.Errorf("not ready: Await failed with %q, want %q", got, want)
	}
}
