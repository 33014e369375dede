//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"

	"github.com/modelmesh/mesh/kserve"
)

// BenchmarkKubeInferenceServices is the InferenceService figures of docs/benchmarks.md: with
// 1,000 InferenceServices on a real API server (each the iris model), the time from `create`
// of one more to its first answer through the gateway, and from a residency change (its load)
// to the status that shows it (Loaded), for 20 models one after the other.
func BenchmarkKubeInferenceServices(b *testing.B) {
	const existing, sampled = 1000, 20
	for range b.N {
		_, m, isvcs := kserveMesh(b, false)
		ctx := context.Background()
		uri := fmt.Sprintf("file://%s/iris/1/model.onnx", models(b))
		start := time.Now()
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for i := range existing {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				_, err := isvcs.Create(ctx, inferenceService(fmt.Sprintf("m%04d", i), uri), metav1.CreateOptions{})
				must(b, err)
			})
		}
		wg.Wait()
		created := time.Since(start)
		eventuallyEvery(b, 120*time.Second, 200*time.Millisecond, "every InferenceService in Standby", func() bool {
			list, err := isvcs.List(ctx, metav1.ListOptions{})
			if err != nil {
				return false
			}
			standby := 0
			for _, o := range list.Items {
				if state, _ := isvcState(&o); state == kserve.StateStandby {
					standby++
				}
			}
			return standby == existing
		})
		allStandby := time.Since(start)
		var toAnswer, toStatus []time.Duration
		for i := range sampled {
			name := fmt.Sprintf("new%02d", i)
			w, err := isvcs.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
			must(b, err)
			t0 := time.Now()
			_, err = isvcs.Create(ctx, inferenceService(name, uri), metav1.CreateOptions{})
			must(b, err)
			eventually(b, 30*time.Second, name+" answered", func() bool {
				code, _ := inferREST(b, m.Gateway, name, irisSetosa, nil)
				return code == 200
			})
			answered := time.Now()
			toAnswer = append(toAnswer, answered.Sub(t0))
			loadedAt := waitState(b, w, kserve.StateLoaded)
			w.Stop()
			// The load ended at about the answer: from there to the status that shows it.
			toStatus = append(toStatus, loadedAt.Sub(answered))
		}
		slices.Sort(toAnswer)
		slices.Sort(toStatus)
		b.Logf("%d InferenceServices created in %v, all Standby %v after the first create", existing, created.Round(time.Millisecond), allStandby.Round(time.Millisecond))
		b.Logf("create → first answer through the gateway (%d more): p50 %v, max %v", sampled, toAnswer[len(toAnswer)/2].Round(time.Millisecond), toAnswer[len(toAnswer)-1].Round(time.Millisecond))
		b.Logf("answer (load done) → status Loaded: p50 %v, max %v", toStatus[len(toStatus)/2].Round(time.Millisecond), toStatus[len(toStatus)-1].Round(time.Millisecond))
		b.ReportMetric(float64(toAnswer[len(toAnswer)/2].Milliseconds()), "create-to-answer-p50-ms")
		b.ReportMetric(float64(toStatus[len(toStatus)/2].Milliseconds()), "load-to-status-p50-ms")
	}
}

// waitState returns when the watched InferenceService's status first shows state.
func waitState(b *testing.B, w watch.Interface, state string) time.Time {
	b.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				b.Fatal("watch closed")
			}
			if o, isObj := ev.Object.(*unstructured.Unstructured); isObj {
				if s, _ := isvcState(o); s == state {
					return time.Now()
				}
			}
		case <-timeout:
			b.Fatalf("status never showed %s", state)
		}
	}
}
