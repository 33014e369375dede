package triton

import (
	"path/filepath"
	"strings"

	"github.com/prometheus/procfs"
)

// stubMemory measures a Python-backend model on this host: Triton runs every instance of such
// a model as a triton_python_backend_stub process whose first argument is the model's
// model.py under dir. Triton reports no per-model memory for them on CPU, so the resident
// memory of those processes (their /proc/PID/statm) is the model's measured size. 0 when
// none is found (another backend, or Triton on another host).
func stubMemory(dir string) int64 {
	procs, err := procfs.AllProcs()
	if err != nil {
		return 0
	}
	prefix := filepath.Clean(dir) + string(filepath.Separator)
	var total int64
	for _, p := range procs {
		args, err := p.CmdLine()
		if err != nil || len(args) < 2 || filepath.Base(args[0]) != "triton_python_backend_stub" || !strings.HasPrefix(args[1], prefix) {
			continue
		}
		if statm, err := p.Statm(); err == nil {
			total += int64(statm.ResidentBytes())
		}
	}
	return total
}
