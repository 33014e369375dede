package kserve

import (
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

// Model states, as ModelMesh reports them.
const (
	StatePending  = "Pending"
	StateStandby  = "Standby"
	StateLoading  = "Loading"
	StateLoaded   = "Loaded"
	StateFailed   = "FailedToLoad"
	transUpToDate = "UpToDate"
	transLoading  = "InProgress"
	transBlocked  = "BlockedByFailedLoad"
	transInvalid  = "InvalidSpec"
)

// Endpoints are where clients reach every model: the gateway, over REST and gRPC.
type Endpoints struct {
	REST, GRPC string
}

// StatusOf is e's status given the registry in force and the residency:
//
//   - Pending: not (yet) in the registry the control plane serves;
//   - FailedToLoad: its spec cannot be served (Problem), or its last cold load failed and no
//     replica is ready or loading;
//   - Loaded: ready on at least one worker (totalCopies counts them);
//   - Loading: loading somewhere, none ready;
//   - Standby: registered and routable, loaded nowhere: the first request loads it.
//
// Ready and PredictorReady are True in Standby, Loading and Loaded: requests are served
// (ModelMesh's meaning: the model may not be in memory yet).
func StatusOf(e Entry, inForce *registry.Registry, snap residency.Snapshot, ep Endpoints) Status {
	st := Status{URL: ep.GRPC, Components: map[string]ComponentStatus{"predictor": {URL: ep.GRPC, RestURL: ep.REST, GrpcURL: ep.GRPC}}}
	ms := &st.ModelStatus
	if e.Problem != nil {
		ms.TransitionStatus, ms.States.ActiveModelState = transInvalid, StateFailed
		ms.LastFailureInfo = e.Problem
		st.Conditions = conditions(false, e.Problem.Reason, e.Problem.Message)
		return st
	}
	if !registered(inForce, e.Model) {
		ms.TransitionStatus, ms.States.ActiveModelState = transLoading, StatePending
		st.Conditions = conditions(false, StatePending, "not yet in the registry the control plane serves")
		return st
	}
	ready, loading := 0, 0
	for id, reps := range snap.Replicas {
		if _, live := snap.Workers[id]; !live {
			continue
		}
		switch reps[e.Model].State {
		case placement.StateReady:
			ready++
		case placement.StateLoading:
			loading++
		}
	}
	ms.ModelCopies.TotalCopies = ready
	failure, failed := snap.Failures[e.Model]
	if failed {
		ms.ModelCopies.FailedCopies = 1
		ms.LastFailureInfo = &FailureInfo{Reason: failure.Reason, Message: failure.Message, Location: failure.Worker,
			ModelID: e.Model.String(), Time: time.UnixMilli(failure.UnixMs).UTC().Format(time.RFC3339)}
	}
	switch {
	case ready > 0:
		ms.TransitionStatus, ms.States.ActiveModelState = transUpToDate, StateLoaded
	case loading > 0:
		ms.TransitionStatus, ms.States.ActiveModelState = transLoading, StateLoading
	case failed:
		ms.TransitionStatus, ms.States.ActiveModelState = transBlocked, StateFailed
		st.Conditions = conditions(false, failure.Reason, failure.Message)
		return st
	default:
		ms.TransitionStatus, ms.States.ActiveModelState = transUpToDate, StateStandby
	}
	st.Conditions = conditions(true, ms.States.ActiveModelState, "")
	return st
}

func registered(reg *registry.Registry, m placement.ModelVersion) bool {
	if reg == nil {
		return false
	}
	model, ok := reg.Model(m.Name)
	if !ok {
		return false
	}
	_, ok = model.Version(m.Version)
	return ok
}

func conditions(ready bool, reason, message string) []Condition {
	status := "False"
	if ready {
		status = "True"
	}
	return []Condition{
		{Type: "PredictorReady", Status: status, Reason: reason, Message: message},
		{Type: "Ready", Status: status, Reason: reason, Message: message},
	}
}
