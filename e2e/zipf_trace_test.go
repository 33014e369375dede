//go:build e2e

package e2e

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
)

// zipfTrace is a seeded request trace over models of seeded sizes: what BenchmarkMeshZipf
// sends through the gateway, and what the offline policies replay.
type zipfTrace struct {
	// sizes[i] is model i's declared memory in bytes.
	sizes []int64
	// picks are the models requested, in order.
	picks []int
}

// newZipfTrace draws the sizes of models from minBytes to maxBytes, spread evenly on a log
// scale (as a model zoo's are: many small models, a few large ones), and requests picks
// Zipf-distributed with exponent s over the models in a random order (popularity has
// nothing to do with size). The same seed gives the same trace.
func newZipfTrace(seed uint64, models, requests int, minBytes, maxBytes int64, s float64) zipfTrace {
	r := rand.New(rand.NewPCG(seed, 0x2f1))
	tr := zipfTrace{sizes: make([]int64, models), picks: make([]int, requests)}
	lo, hi := math.Log(float64(minBytes)), math.Log(float64(maxBytes))
	for i := range tr.sizes {
		tr.sizes[i] = int64(math.Exp(lo + r.Float64()*(hi-lo)))
	}
	rank := r.Perm(models) // rank k (0: the most popular) is model rank[k]
	z := rand.NewZipf(r, s, 1, uint64(models-1))
	for i := range tr.picks {
		tr.picks[i] = rank[z.Uint64()]
	}
	return tr
}

// lruHits replays the trace through a cache of capacity bytes that evicts the least recently
// used models until the requested one fits, and counts the requests that found their model.
func (tr zipfTrace) lruHits(capacity int64) int {
	lastUse := map[int]int{}
	var used int64
	hits := 0
	for i, m := range tr.picks {
		if _, ok := lastUse[m]; ok {
			hits++
			lastUse[m] = i
			continue
		}
		for used+tr.sizes[m] > capacity {
			victim := -1
			for k, t := range lastUse {
				if victim < 0 || t < lastUse[victim] {
					victim = k
				}
			}
			used -= tr.sizes[victim]
			delete(lastUse, victim)
		}
		lastUse[m] = i
		used += tr.sizes[m]
	}
	return hits
}

// beladyHits is lruHits with Belady's choice: evict the resident model whose next request is
// furthest away (never requested again: furthest of all), the optimum for models of one size
// and a close bound for sizes that differ.
func (tr zipfTrace) beladyHits(capacity int64) int {
	next := make([]int, len(tr.picks)) // next[i]: the index of the next request for picks[i]
	seen := map[int]int{}
	for i := len(tr.picks) - 1; i >= 0; i-- {
		next[i] = math.MaxInt
		if j, ok := seen[tr.picks[i]]; ok {
			next[i] = j
		}
		seen[tr.picks[i]] = i
	}
	nextUse := map[int]int{}
	var used int64
	hits := 0
	for i, m := range tr.picks {
		if _, ok := nextUse[m]; ok {
			hits++
			nextUse[m] = next[i]
			continue
		}
		for used+tr.sizes[m] > capacity {
			victim := -1
			for _, k := range sortedKeys(nextUse) { // in id order: ties go to the lowest id
				if victim < 0 || nextUse[k] > nextUse[victim] {
					victim = k
				}
			}
			used -= tr.sizes[victim]
			delete(nextUse, victim)
		}
		nextUse[m] = next[i]
		used += tr.sizes[m]
	}
	return hits
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// policyHits replays the trace through the workers' own eviction choice,
// placement.ChooseEvictions, in one cache of capacity bytes, fed as a worker feeds it: each
// resident model's requests since it was loaded, its load time (one for all here: every model
// is the same file) and the policy clock at its last use, raised by each eviction. Offline
// nothing is in flight or recent, and requests do not age.
func (tr zipfTrace) policyHits(capacity int64) int {
	epoch := time.Unix(0, 0)
	resident := map[int]*placement.Candidate{}
	var used int64
	var clock float64
	hits := 0
	for i, m := range tr.picks {
		at := epoch.Add(time.Duration(i) * time.Millisecond)
		if c, ok := resident[m]; ok {
			hits++
			c.LastUsed, c.Clock = at, clock
			c.Requests++
			continue
		}
		if need := used + tr.sizes[m] - capacity; need > 0 {
			cands := make([]placement.Candidate, 0, len(resident))
			for _, k := range sortedKeys(resident) {
				cands = append(cands, *resident[k])
			}
			victims, ok := placement.ChooseEvictions(cands, placement.HostMemory(need))
			if !ok {
				panic("every model together is smaller than the cache")
			}
			clock = placement.RaiseClock(clock, victims)
			for _, v := range victims {
				k := modelIndex(v.Model.Name)
				used -= tr.sizes[k]
				delete(resident, k)
			}
		}
		// Loaded for this request, which is its first.
		resident[m] = &placement.Candidate{Model: placement.ModelVersion{Name: zipfName(m), Version: "1"}, State: placement.StateReady,
			Memory: placement.HostMemory(tr.sizes[m]), LastUsed: at, Requests: 1, LoadTime: 5 * time.Millisecond, Clock: clock}
		used += tr.sizes[m]
	}
	return hits
}

func modelIndex(name string) int {
	i, err := strconv.Atoi(strings.TrimPrefix(name, "z"))
	if err != nil {
		panic(err)
	}
	return i
}
