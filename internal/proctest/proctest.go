// Package proctest runs the programs end-to-end tests drive (the mesh's binaries, Envoy,
// Triton, storage servers) as real processes: each in a process group of its own, its
// output kept line by line for assertions and logged when the test fails, and killed with
// its children when the test ends.
package proctest

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a program started by Start. Its methods are safe for concurrent use.
type Process struct {
	// Name says what the process is in failure messages.
	Name string
	// Cmd is the running command (its Path and Process.Pid); the Process owns it.
	Cmd *exec.Cmd

	done chan struct{} // closed once the process exited and its output was read
	err  error         // how it exited; set before done is closed

	mu    sync.Mutex
	lines []string
}

// Start runs path with args, its stdout and stderr kept as its log. When the test ends the
// process and its children are killed (Kill), and its log is printed if the test failed.
// Start returns once the process runs; Await waits until it is ready.
func Start(t testing.TB, name, path string, args ...string) *Process {
	t.Helper()
	p := &Process{Name: name, Cmd: exec.Command(path, args...), done: make(chan struct{})}
	// A process group of its own: Kill ends its children too (Triton's model stubs), which
	// would otherwise hold its output open.
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := p.Cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.Cmd.Stdout = p.Cmd.Stderr
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("start %s (build it with `make build`): %v", name, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		io.Copy(io.Discard, out) // past a line too long to keep, so the process never blocks
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("%s log:\n%s", name, p.Logs())
		}
	})
	return p
}

// Await polls ready until it returns true. It fails the test, with the log, if the process
// exits first or ready does not hold within timeout.
func (p *Process) Await(t testing.TB, timeout time.Duration, ready func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ready() {
		select {
		case <-p.done:
			t.Fatalf("%s exited at start: %v\n%s", p.Name, p.err, p.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %s:\n%s", p.Name, timeout, p.Logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Logs is what the process wrote so far, stdout and stderr, one line per line.
func (p *Process) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines, "\n")
}

// Done is closed once the process has exited; Err then says how.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the process's exit error (nil for status 0). Call it once Done is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Kill ends the process and its children at once (SIGKILL) and waits; safe to call twice.
func (p *Process) Kill() {
	syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Pause stops the process and its children (SIGSTOP): they hold their sockets and answer
// nothing, as a wedged process does. Resume undoes it.
func (p *Process) Pause() { syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGSTOP) }

// Resume lets a paused process run again (SIGCONT).
func (p *Process) Resume() { syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGCONT) }

// Stop sends SIGTERM to the process and waits for it to exit, failing the test if it exits
// with an error or runs on for 30 s.
func (p *Process) Stop(t testing.TB) {
	t.Helper()
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("%s exited with %v after SIGTERM:\n%s", p.Name, p.err, p.Logs())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s still running 30s after SIGTERM", p.Name)
	}
}

// HTTPOK is a readiness check for Await: a GET of url answers 200.
func HTTPOK(url string) func() bool { return HTTPOKWith(http.DefaultClient, url) }

// HTTPOKWith is HTTPOK through c (one with a timeout, or that skips TLS verification).
func HTTPOKWith(c *http.Client, url string) func() bool {
	return func() bool {
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
}

// FreePorts returns n distinct loopback ports that are free now, for a server the test
// starts: each is held until all are chosen, so none is offered twice.
func FreePorts(t testing.TB, n int) []string {
	t.Helper()
	var ports []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		ports = append(ports, port)
	}
	return ports
}
