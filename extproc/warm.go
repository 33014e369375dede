package extproc

import (
	"context"
	"time"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/internal/residency"
)

// WarmPlan lists the loads that bring every model with minReplicas up to that many replicas
// of each version its traffic rules can pick (placement.WarmPlan). Pure.
func WarmPlan(snap *residency.Snapshot) []WarmLoad {
	if snap == nil || snap.Registry == nil {
		return nil
	}
	var wants []placement.Want
	targets := map[placement.ModelVersion]Target{}
	for _, model := range snap.Registry.Models {
		if model.MinReplicas <= 0 {
			continue
		}
		for _, version := range model.ServedVersions() {
			v, ok := model.Version(version)
			if !ok {
				continue
			}
			t := targetOf(snap, model, v)
			targets[t.Model] = t
			wants = append(wants, placement.Want{Load: t.load(), Min: model.MinReplicas})
		}
	}
	var plan []WarmLoad
	for _, p := range placement.WarmPlan(wants, snap.Nodes()) {
		plan = append(plan, WarmLoad{Worker: snap.Workers[p.Node.ID], Target: targets[p.Load.Model]})
	}
	return plan
}

// WarmLoad is one load of a warm plan.
type WarmLoad struct {
	Worker residency.Worker
	Target Target
}

// Warm keeps models with minReplicas warm until ctx ends: every interval it runs the warm
// plan of the latest snapshot. Each model version's loads run under its fleet-wide lock, so
// ext_proc replicas do not overshoot; a version whose lock is held is left to its holder.
func (s *Server) Warm(ctx context.Context, interval time.Duration) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		s.warmOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (s *Server) warmOnce(ctx context.Context) {
	byModel := map[placement.ModelVersion][]WarmLoad{}
	var order []placement.ModelVersion
	for _, l := range WarmPlan(s.view.Snapshot()) {
		if _, ok := byModel[l.Target.Model]; !ok {
			order = append(order, l.Target.Model)
		}
		byModel[l.Target.Model] = append(byModel[l.Target.Model], l)
	}
	for _, m := range order {
		if s.locks != nil {
			lock, err := s.locks.Acquire(ctx, m)
			if err != nil || lock == nil {
				continue // Redis away, or another replica is loading it: next round
			}
			stop := lock.KeepAlive(ctx, s.log)
			s.warmModel(ctx, byModel[m])
			stop()
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			lock.Release(rctx)
			cancel()
			continue
		}
		s.warmModel(ctx, byModel[m])
	}
}

func (s *Server) warmModel(ctx context.Context, loads []WarmLoad) {
	for _, l := range loads {
		lctx, cancel := context.WithTimeout(ctx, s.cfg.LoadDeadline)
		err := s.loader.Load(lctx, l.Worker, l.Target)
		cancel()
		result := "ok"
		if err != nil {
			result = "error"
			s.log.WarnContext(ctx, "warm load for minReplicas failed", "model", l.Target.Model.String(), "worker", l.Worker.ID, "error", err)
		} else {
			s.log.InfoContext(ctx, "model warmed for minReplicas", "model", l.Target.Model.String(), "worker", l.Worker.ID)
		}
		s.metrics.warmLoads.WithLabelValues(result).Inc()
	}
}
