package placement

import (
	"cmp"
	"hash/fnv"
	"slices"
	"strings"
)

// Node is a worker as placement sees it: its budget and use, what its runtime can do, and
// the state of every replica it holds. ext_proc builds nodes from the residency records in
// Redis (residency.Snapshot.Nodes).
type Node struct {
	ID       string
	Runtime  string
	Caps     Capabilities
	Capacity Memory
	Used     Memory
	Replicas map[ModelVersion]State
	// Serves says the worker has a data address (requests can go there); Loads that it also
	// has a management address (loads can be asked of it).
	Serves, Loads bool
	// Pending counts the loads the caller has asked of the node and not yet seen answered,
	// which the node's record may not show yet: during a burst of cold models the records
	// trail the loads, and a node whose loads finish fastest would look idle and take them
	// all.
	Pending int
}

// Capabilities are what a worker's runtime can do, advertised in its record so that
// placement reads them instead of knowing runtimes by name.
type Capabilities struct {
	// OneVersion: the runtime holds one version of a model at a time (Triton keeps a model's
	// versions under one name in its repository), so another version of a model it holds
	// cannot be placed there.
	OneVersion bool `json:"one_version,omitempty"`
	// Formats are the model formats the runtime reads, in KServe's names ("onnx", "triton",
	// "sklearn", "xgboost", "lightgbm").
	Formats []string `json:"formats,omitempty"`
}

// Reads reports whether the runtime reads models of format f.
func (c Capabilities) Reads(f string) bool { return slices.Contains(c.Formats, f) }

// GPUs reports whether the node budgets GPU memory.
func (n Node) GPUs() bool { return len(n.Capacity.GPU) > 0 }

// Loading counts the node's loads in progress: those its record shows and those pending.
func (n Node) Loading() int {
	c := n.Pending
	for _, s := range n.Replicas {
		if s == StateLoading {
			c++
		}
	}
	return c
}

// Load is a model version to make resident on some node.
type Load struct {
	Model ModelVersion
	// Runtime, when set, is the runtime a node must run; Format, when set, one it must read
	// (Capabilities.Formats).
	Runtime, Format string
	Size            Size
}

// Suits reports whether n runs l's runtime and reads l's format.
func (l Load) Suits(n Node) bool {
	return (l.Runtime == "" || n.Runtime == l.Runtime) && (l.Format == "" || n.Caps.Reads(l.Format))
}

// Footprint is what n would reserve for l (Size.On); zero when the size is unknown.
func (l Load) Footprint(n Node) Footprint {
	f, _ := l.Size.On(n.GPUs())
	return f
}

// Ready picks the node to route m to among those holding it ready and serving: the least
// full (used/capacity in its fullest dimension), then the fewest loads in progress, then a
// per-model hash of the node id (so equal nodes are shared out between models, the same way
// on every ext_proc replica), then the id.
func Ready(nodes []Node, m ModelVersion) (Node, bool) {
	var best Node
	found := false
	for _, n := range nodes {
		if !n.Serves || n.Replicas[m] != StateReady {
			continue
		}
		if !found || compareLoad(m, n, best) < 0 {
			best, found = n, true
		}
	}
	return best, found
}

func compareLoad(m ModelVersion, a, b Node) int {
	if c := cmp.Compare(fullness(a), fullness(b)); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Loading(), b.Loading()); c != 0 {
		return c
	}
	return spread(m, a, b)
}

// fullness is used/capacity in the node's fullest dimension; a node without capacity counts
// as full.
func fullness(n Node) float64 {
	if n.Capacity.Total() <= 0 {
		return 1
	}
	full := 0.0
	used := n.Used.Dimensions()
	for i, c := range n.Capacity.Dimensions() {
		if c.Bytes > 0 && i < len(used) {
			full = max(full, float64(used[i].Bytes)/float64(c.Bytes))
		}
	}
	return full
}

// spread orders two otherwise equal nodes by rendezvous hashing of (model, node): the order
// is deterministic, the same on every ext_proc replica, and differs between models.
func spread(m ModelVersion, a, b Node) int {
	if c := cmp.Compare(rendezvous(m, b.ID), rendezvous(m, a.ID)); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

func rendezvous(m ModelVersion, node string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(m.String()))
	h.Write([]byte{0})
	h.Write([]byte(node))
	return h.Sum64()
}

// Candidates lists the nodes that can take l, best first:
//
//  1. nodes where l is already loading (a load there joins the one in progress);
//  2. nodes with free room (capacity - used) for l's size; when the size is unknown, any
//     free byte counts as room;
//  3. fewest loads in progress (Node.Loading);
//  4. the least full (used/capacity in the fullest dimension);
//  5. spread: rendezvous hash of (model, node), then id.
//
// Left out: nodes of another runtime or that do not read l's format, nodes whose whole capacity is below l's known size,
// nodes that cannot serve and load, nodes that hold one version of a model at a time and
// hold another version of l's. Nodes where l is draining come last.
func Candidates(nodes []Node, l Load) []Node {
	type cand struct {
		n                       Node
		joining, draining, room bool
		loads                   int
	}
	var cs []cand
	for _, n := range nodes {
		if !l.Suits(n) || !n.Serves || !n.Loads {
			continue
		}
		_, fits, possible := Place(l.Footprint(n), n.Capacity, n.Used)
		if l.Size.Known() && !possible {
			continue // too big for this node even empty, in some dimension
		}
		if n.Caps.OneVersion && holdsOtherVersion(n, l.Model) {
			continue
		}
		state, has := n.Replicas[l.Model]
		cs = append(cs, cand{
			n:        n,
			joining:  has && state == StateLoading,
			draining: has && state == StateDraining,
			room:     (l.Size.Known() && fits) || (!l.Size.Known() && !n.Capacity.Minus(n.Used).Positive().IsZero()),
			loads:    n.Loading(),
		})
	}
	slices.SortFunc(cs, func(a, b cand) int {
		switch {
		case a.draining != b.draining:
			return boolFirst(b.draining)
		case a.joining != b.joining:
			return boolFirst(a.joining)
		case a.room != b.room:
			return boolFirst(a.room)
		case a.loads != b.loads:
			return cmp.Compare(a.loads, b.loads)
		}
		if c := cmp.Compare(fullness(a.n), fullness(b.n)); c != 0 {
			return c
		}
		return spread(l.Model, a.n, b.n)
	})
	out := make([]Node, len(cs))
	for i, c := range cs {
		out[i] = c.n
	}
	return out
}

// holdsOtherVersion reports whether n holds another version of m's model.
func holdsOtherVersion(n Node, m ModelVersion) bool {
	for k := range n.Replicas {
		if k.Name == m.Name && k.Version != m.Version {
			return true
		}
	}
	return false
}

// boolFirst orders a before b when first is true (a's flag set, b's not).
func boolFirst(first bool) int {
	if first {
		return -1
	}
	return 1
}

// Want asks for at least Min replicas of a model version, ready or loading (minReplicas).
type Want struct {
	Load Load
	Min  int
}

// Placed is one load of a warm plan: Load on Node.
type Placed struct {
	Node Node
	Load Load
}

// WarmPlan lists the loads that bring every want up to its minimum, counting replicas ready
// or loading; each goes to the best candidate (Candidates) holding no replica of that
// version yet. Pure: the caller runs the loads (ext_proc's warm loop, under each version's
// fleet-wide lock).
func WarmPlan(wants []Want, nodes []Node) []Placed {
	var plan []Placed
	for _, w := range wants {
		holders := map[string]bool{}
		for _, n := range nodes {
			if s := n.Replicas[w.Load.Model]; s == StateReady || s == StateLoading {
				holders[n.ID] = true
			}
		}
		need := w.Min - len(holders)
		for _, n := range Candidates(nodes, w.Load) {
			if need <= 0 {
				break
			}
			if holders[n.ID] {
				continue
			}
			plan = append(plan, Placed{Node: n, Load: w.Load})
			need--
		}
	}
	return plan
}
