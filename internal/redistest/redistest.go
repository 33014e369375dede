// Package redistest runs a real redis-server for tests, on a loopback port of its own, with
// no persistence, so a restart starts empty as a Redis that lost its data would.
package redistest

import (
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// Server is one redis-server process. Not safe for concurrent Stop and Start.
type Server struct {
	Addr  string
	t     testing.TB
	cmd   *exec.Cmd
	port  int
	extra []string
}

// Start runs redis-server on a free port and stops it when the test ends. It fails the test
// when redis-server is not installed: `make test` installs it (scripts/setup.sh).
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t)
}

// StartWith is Start with extra redis-server arguments, e.g. "--requirepass", "secret".
func StartWith(t testing.TB, extra ...string) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redis-server not found; run `make setup` (scripts/setup.sh installs it)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	s := &Server{t: t, port: port, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), extra: extra}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start (re)starts the server on its port, empty, and waits until it accepts connections.
func (s *Server) Start() {
	s.t.Helper()
	s.cmd = exec.Command("redis-server", append([]string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"}, s.extra...)...)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("tcp", s.Addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("redis-server on %s did not accept connections within 10s", s.Addr)
}

// Stop kills the server at once, as a crash would; its data is lost.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// String is the address.
func (s *Server) String() string { return fmt.Sprintf("redis %s", s.Addr) }
