package controlplane

import (
	"time"

	"github.com/modelmesh/mesh/controlplane/translate"
	"github.com/modelmesh/mesh/internal/placement"
)

// retention remembers the model versions whose last ready replica went, for keep (the route
// timeout: the longest a request may still be in flight on their cluster), so that their
// clusters stay with the fallback alone (translate.State.Retained). Only the loop uses it.
type retention struct {
	keep time.Duration
	// routed is the previous state's ready versions, with whether they had a gRPC twin.
	routed map[placement.ModelVersion]bool
	gone   map[placement.ModelVersion]goneAt
}

type goneAt struct {
	at   time.Time
	grpc bool
}

func newRetention(keep time.Duration) *retention {
	return &retention{keep: keep, routed: map[placement.ModelVersion]bool{}, gone: map[placement.ModelVersion]goneAt{}}
}

// update takes the state about to be translated at now and returns the versions to retain:
// those routed before and not now, for keep after they went.
func (r *retention) update(st translate.State, now time.Time) map[placement.ModelVersion]bool {
	routed := translate.GRPCTwins(st)
	for m, grpc := range r.routed {
		if _, still := routed[m]; !still {
			if _, known := r.gone[m]; !known {
				r.gone[m] = goneAt{at: now, grpc: grpc}
			}
		}
	}
	r.routed = routed
	out := map[placement.ModelVersion]bool{}
	for m, g := range r.gone {
		if _, back := routed[m]; back || now.Sub(g.at) >= r.keep {
			delete(r.gone, m)
			continue
		}
		out[m] = g.grpc
	}
	return out
}
