package mlserver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/runtime-worker/modelserver"
)

// Measure loads the model, one load at a time, and returns the growth of the resident
// memory of MLServer's processes around it: the main process and its children (the
// parallel inference workers, each of which loads every model). Growth is at least one
// byte, so that a model loaded into memory MLServer had already mapped still counts as
// measured (the agent raises it to the model's file size). Zero, for the agent's estimate,
// when MLServer's processes are not visible from the worker (another host, or a pod without
// a shared process namespace).
func (s *Server) Measure(ctx context.Context, _ modelserver.Client, _ placement.ModelVersion, _ string, load func(context.Context) error) (placement.Memory, error) {
	if err := s.lock(ctx); err != nil {
		return placement.Memory{}, err
	}
	defer s.unlock()
	before, seen := s.resident()
	if err := load(ctx); err != nil {
		return placement.Memory{}, err
	}
	after, seenAfter := s.resident()
	if !seen || !seenAfter {
		return placement.Memory{}, nil
	}
	return placement.HostMemory(max(after-before, 1)), nil
}

// resident sums the resident memory of the MLServer serving the worker's repository and of
// its descendants; false when no such process is visible. MLServer is found by its command
// line, "mlserver start DIR" with DIR the repository, once: its process id is kept while it
// still runs that command.
func (s *Server) resident() (int64, bool) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, false
	}
	root, ok := s.mlserverProcess(fs)
	if !ok {
		return 0, false
	}
	var total int64
	for queue := []int{root}; len(queue) > 0; queue = queue[1:] {
		p, err := fs.Proc(queue[0])
		if err != nil {
			continue // exited meanwhile
		}
		if statm, err := p.Statm(); err == nil {
			total += int64(statm.ResidentBytes())
		}
		queue = append(queue, children(queue[0])...)
	}
	return total, true
}

// mlserverProcess is the process id of the MLServer serving the repository.
func (s *Server) mlserverProcess(fs procfs.FS) (int, bool) {
	repo := filepath.Clean(s.repository)
	s.mu.Lock()
	pid := s.pid
	s.mu.Unlock()
	if pid > 0 {
		if p, err := fs.Proc(pid); err == nil {
			if args, err := p.CmdLine(); err == nil && servesRepository(p, args, repo) {
				return pid, true
			}
		}
	}
	procs, err := fs.AllProcs()
	if err != nil {
		return 0, false
	}
	for _, p := range procs {
		if args, err := p.CmdLine(); err == nil && servesRepository(p, args, repo) {
			s.mu.Lock()
			s.pid = p.PID
			s.mu.Unlock()
			return p.PID, true
		}
	}
	return 0, false
}

// children lists the child processes of pid, from each of its threads' children file
// (/proc/PID/task/TID/children).
func children(pid int) []int {
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, f := range files {
		body, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, field := range strings.Fields(string(body)) {
			if n, err := strconv.Atoi(field); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// servesRepository reports whether args are MLServer's "mlserver start DIR" with DIR, read
// from the process's working directory when relative, the repository.
func servesRepository(p procfs.Proc, args []string, repo string) bool {
	i := slices.IndexFunc(args, func(a string) bool { return filepath.Base(a) == "mlserver" })
	if i < 0 || i+2 >= len(args) || args[i+1] != "start" {
		return false
	}
	dir := args[i+2]
	if !filepath.IsAbs(dir) {
		cwd, err := p.Cwd()
		if err != nil {
			return false
		}
		dir = filepath.Join(cwd, dir)
	}
	return filepath.Clean(dir) == repo
}
