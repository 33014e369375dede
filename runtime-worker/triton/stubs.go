package triton

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// stubMemory measures a Python-backend model on this host: Triton runs every instance of such
// a model as a triton_python_backend_stub process whose first argument is the model's
// model.py under dir. Triton reports no per-model memory for them on CPU, so the resident
// memory of those processes is the model's measured size. 0 when none is found (another
// backend, or Triton on another host).
func stubMemory(dir string) int64 {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	prefix := filepath.Clean(dir) + string(filepath.Separator)
	var total int64
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(raw), "\x00")
		if len(args) < 2 || filepath.Base(args[0]) != "triton_python_backend_stub" || !strings.HasPrefix(args[1], prefix) {
			continue
		}
		total += residentBytes(pid)
	}
	return total
}

func residentBytes(pid int) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "statm"))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}
