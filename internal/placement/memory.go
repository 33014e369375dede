package placement

import (
	"strconv"
	"strings"
)

// Memory is an amount of memory in each dimension a worker budgets: host RAM and the memory
// of each GPU device, indexed by device. A worker's capacity, what it has in use, what one
// replica holds and a shortfall to evict for are all Memory values. A GPU index missing from
// GPU counts as 0.
type Memory struct {
	Host int64   `json:"host"`
	GPU  []int64 `json:"gpu,omitempty"`
}

// HostMemory is m bytes of host memory and nothing else.
func HostMemory(bytes int64) Memory { return Memory{Host: bytes} }

// Device is the memory of GPU device d (0 when m has no such device).
func (m Memory) Device(d int) int64 {
	if d < 0 || d >= len(m.GPU) {
		return 0
	}
	return m.GPU[d]
}

// Plus adds o to m, dimension by dimension.
func (m Memory) Plus(o Memory) Memory {
	out := Memory{Host: m.Host + o.Host, GPU: make([]int64, max(len(m.GPU), len(o.GPU)))}
	for d := range out.GPU {
		out.GPU[d] = m.Device(d) + o.Device(d)
	}
	return out.trim()
}

// Minus subtracts o from m, dimension by dimension.
func (m Memory) Minus(o Memory) Memory {
	neg := Memory{Host: -o.Host, GPU: make([]int64, len(o.GPU))}
	for d, b := range o.GPU {
		neg.GPU[d] = -b
	}
	return m.Plus(neg)
}

// Positive keeps the dimensions of m above 0 and zeroes the others: of a difference between
// need and room, the shortfall.
func (m Memory) Positive() Memory {
	out := Memory{Host: max(m.Host, 0), GPU: make([]int64, len(m.GPU))}
	for d, b := range m.GPU {
		out.GPU[d] = max(b, 0)
	}
	return out.trim()
}

// IsZero reports whether every dimension is 0.
func (m Memory) IsZero() bool {
	for _, b := range m.GPU {
		if b != 0 {
			return false
		}
	}
	return m.Host == 0
}

// Within reports whether every dimension of m is at most the same dimension of limit.
func (m Memory) Within(limit Memory) bool {
	if m.Host > limit.Host {
		return false
	}
	for d, b := range m.GPU {
		if b > limit.Device(d) {
			return false
		}
	}
	return true
}

// Covers reports whether freeing m pays off every positive dimension of need.
func (m Memory) Covers(need Memory) bool { return need.Positive().Within(m) }

// Helps reports whether m frees memory in a dimension where need is still positive.
func (m Memory) Helps(need Memory) bool {
	if need.Host > 0 && m.Host > 0 {
		return true
	}
	for d, b := range need.GPU {
		if b > 0 && m.Device(d) > 0 {
			return true
		}
	}
	return false
}

// GPUTotal is the memory of all GPU devices together.
func (m Memory) GPUTotal() int64 {
	var n int64
	for _, b := range m.GPU {
		n += b
	}
	return n
}

// Total is the memory of every dimension together.
func (m Memory) Total() int64 { return m.Host + m.GPUTotal() }

// Footprint is how much m takes wherever it is placed: its host memory, and the most it
// holds on one GPU. A model spread over several GPUs (a config of its own asking for it) is
// placed by its largest share; the rest is counted on its devices after the load. Summing
// the shares would ask one device for the memory of all and could never be placed again.
func (m Memory) Footprint() Footprint {
	f := Footprint{Host: m.Host}
	for _, b := range m.GPU {
		f.GPU = max(f.GPU, b)
	}
	return f
}

// Dimensions names m's dimensions, "host" then "gpu0", "gpu1"..., with their bytes, for
// metrics and logs.
func (m Memory) Dimensions() []Dimension {
	out := []Dimension{{Name: "host", Bytes: m.Host}}
	for d, b := range m.GPU {
		out = append(out, Dimension{Name: "gpu" + strconv.Itoa(d), Bytes: b})
	}
	return out
}

// Dimension is one named dimension of a Memory.
type Dimension struct {
	Name  string
	Bytes int64
}

// String renders m as "host=N gpu0=N ..." for errors and logs.
func (m Memory) String() string {
	var b strings.Builder
	for i, d := range m.Dimensions() {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(d.Name + "=" + strconv.FormatInt(d.Bytes, 10))
	}
	return b.String()
}

// trim drops trailing zero GPU entries, so equal amounts compare and encode equal.
func (m Memory) trim() Memory {
	n := len(m.GPU)
	for n > 0 && m.GPU[n-1] == 0 {
		n--
	}
	if n == 0 {
		m.GPU = nil
	} else {
		m.GPU = m.GPU[:n]
	}
	return m
}

// Footprint is a model version's memory independent of where it runs: host bytes, and GPU
// bytes that sit on one device. It is what the mesh learns at a load and uses to place the
// model next time, on any worker.
type Footprint struct {
	Host int64 `json:"host"`
	GPU  int64 `json:"gpu,omitempty"`
}

// Total is host and GPU bytes together.
func (f Footprint) Total() int64 { return f.Host + f.GPU }

// On is the memory f takes on GPU device d; with d < 0 (a worker without GPUs, or a model
// kept on the CPU) everything is host memory.
func (f Footprint) On(d int) Memory {
	if d < 0 {
		return Memory{Host: f.Host + f.GPU}
	}
	m := Memory{Host: f.Host, GPU: make([]int64, d+1)}
	m.GPU[d] = f.GPU
	return m.trim()
}

// Place picks where f goes on a worker with the given capacity and use: the GPU device with
// the most free memory (lowest index on ties), or -1 when the worker has no GPUs. fits says
// whether f fits there in free memory now, evicting nothing; possible whether it would fit
// in an empty worker at all.
func Place(f Footprint, capacity, used Memory) (device int, fits, possible bool) {
	device = -1
	for d := range capacity.GPU {
		if device < 0 || capacity.Device(d)-used.Device(d) > capacity.Device(device)-used.Device(device) {
			device = d
		}
		possible = possible || f.On(d).Within(capacity)
	}
	if device < 0 {
		possible = f.On(-1).Within(capacity)
	}
	return device, used.Plus(f.On(device)).Within(capacity), possible
}
