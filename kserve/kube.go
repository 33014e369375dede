package kserve

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/modelmesh/mesh/internal/registry"
	"github.com/modelmesh/mesh/internal/residency"
)

// settle gathers a burst of informer events into one change.
const settle = 100 * time.Millisecond

// fieldManager owns the status the mesh writes (server-side apply).
const fieldManager = "modelmesh-controlplane"

// Source reads InferenceServices, ServingRuntimes and ClusterServingRuntimes through shared
// informers and adds the models they serve to the registry (Apply), and writes each
// InferenceService's status from the residency it is shown (Observe). While the API server
// is away the informers keep what they last listed, so no model leaves the routes; statuses
// catch up once it is back. Run owns the informers and the status writer.
type Source struct {
	client    dynamic.Interface
	namespace string
	endpoints Endpoints
	log       *slog.Logger
	factory   dynamicinformer.DynamicSharedInformerFactory
	cluster   dynamicinformer.DynamicSharedInformerFactory
	isvcs     cache.SharedIndexInformer
	runtimes  cache.SharedIndexInformer
	clusterRT cache.SharedIndexInformer
	observed  chan struct{}

	mu      sync.Mutex
	entries []Entry
	// rejected are the models the registry refused at the last Apply, by model name.
	rejected map[string]error
	reg      *registry.Registry
	snap     residency.Snapshot
	// written is the status last written to each InferenceService (by UID), and the
	// version of the object it was written against.
	written map[types.UID]writtenStatus
}

type writtenStatus struct {
	status          Status
	resourceVersion string
}

// NewSource reads the InferenceServices and ServingRuntimes of namespace (empty: all) and
// the ClusterServingRuntimes; statuses name endpoints as where clients reach the models.
func NewSource(client dynamic.Interface, namespace string, endpoints Endpoints, log *slog.Logger) *Source {
	s := &Source{client: client, namespace: namespace, endpoints: endpoints, log: log, observed: make(chan struct{}, 1), written: map[types.UID]writtenStatus{}}
	s.factory = dynamicinformer.NewFilteredDynamicSharedInformerFactory(client, 10*time.Minute, namespace, nil)
	s.cluster = dynamicinformer.NewDynamicSharedInformerFactory(client, 10*time.Minute)
	s.isvcs = s.factory.ForResource(InferenceServices).Informer()
	s.runtimes = s.factory.ForResource(ServingRuntimes).Informer()
	s.clusterRT = s.cluster.ForResource(ClusterServingRuntimes).Informer()
	return s
}

// Run starts the informers and, once they have listed, calls changed after each burst of
// changes, and writes statuses after each Observe, until ctx ends.
func (s *Source) Run(ctx context.Context, changed func()) error {
	kick := make(chan struct{}, 1)
	notify := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{AddFunc: func(any) { notify() }, UpdateFunc: func(any, any) { notify() }, DeleteFunc: func(any) { notify() }}
	for _, inf := range []cache.SharedIndexInformer{s.isvcs, s.runtimes, s.clusterRT} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("kserve informer: %w", err)
		}
	}
	s.factory.Start(ctx.Done())
	s.cluster.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), s.isvcs.HasSynced, s.runtimes.HasSynced, s.clusterRT.HasSynced) {
		s.factory.Shutdown()
		s.cluster.Shutdown()
		return nil // ctx ended first
	}
	defer s.factory.Shutdown()
	defer s.cluster.Shutdown()
	s.log.InfoContext(ctx, "kserve: InferenceServices and ServingRuntimes listed", "inferenceservices", len(s.isvcs.GetStore().List()))
	changed()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
			select {
			case <-time.After(settle):
			case <-ctx.Done():
				return nil
			}
			changed()
		case <-s.observed:
			s.writeStatuses(ctx)
		}
	}
}

// Apply returns reg with the models of the InferenceServices added (registry.WithModels):
// one per model name, a version per InferenceService. Those that cannot be served get a
// status that says why. Safe concurrently with Run.
func (s *Source) Apply(reg *registry.Registry) *registry.Registry {
	entries := Convert(decodeAll[InferenceService](s.log, s.isvcs), decodeAll[ServingRuntime](s.log, s.runtimes), decodeAll[ServingRuntime](s.log, s.clusterRT))
	out, rejected := reg.WithModels(Models(entries))
	s.mu.Lock()
	s.entries, s.rejected = entries, rejected
	s.mu.Unlock()
	return out
}

// Observe is told the registry in force and the residency after each push; the statuses
// that changed are written by Run. It does not block.
func (s *Source) Observe(reg *registry.Registry, snap residency.Snapshot) {
	s.mu.Lock()
	s.reg, s.snap = reg, snap
	s.mu.Unlock()
	select {
	case s.observed <- struct{}{}:
	default:
	}
}

// statusWriters bounds the status writes in flight: a thousand InferenceServices created at
// once get their first status in seconds, not one round trip after another.
const statusWriters = 8

func (s *Source) writeStatuses(ctx context.Context) {
	s.mu.Lock()
	entries, rejected, reg, snap := s.entries, s.rejected, s.reg, s.snap
	s.mu.Unlock()
	seen := map[types.UID]bool{}
	var wg sync.WaitGroup
	slots := make(chan struct{}, statusWriters)
	for _, e := range entries {
		if err := rejected[e.Model.Name]; err != nil && e.Problem == nil {
			e.Problem = invalid(ReasonInvalidSpec, "%v", err)
		}
		seen[e.UID] = true
		st := StatusOf(e, reg, snap, s.endpoints)
		// Written already: the object says so (a recreated object, or a status someone else
		// changed, does not), or it was written against the version read and the informer
		// has not seen the write yet.
		if e.Observed != nil && reflect.DeepEqual(*e.Observed, st) {
			continue
		}
		s.mu.Lock()
		w, ok := s.written[e.UID]
		s.mu.Unlock()
		if ok && w.resourceVersion == e.ResourceVersion && reflect.DeepEqual(w.status, st) {
			continue
		}
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			if err := s.writeStatus(ctx, e, st); err != nil {
				s.log.WarnContext(ctx, "kserve: write InferenceService status; retried at the next change", "inferenceservice", e.Key(), "error", err)
				return
			}
			s.mu.Lock()
			s.written[e.UID] = writtenStatus{status: st, resourceVersion: e.ResourceVersion}
			s.mu.Unlock()
		})
	}
	wg.Wait()
	s.mu.Lock()
	for k := range s.written {
		if !seen[k] {
			delete(s.written, k) // deleted: nothing to write any more
		}
	}
	s.mu.Unlock()
}

// writeStatus applies st as e's status (server-side apply of the status subresource, owned
// by the mesh's field manager).
func (s *Source) writeStatus(ctx context.Context, e Entry, st Status) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	var status map[string]any
	if err := json.Unmarshal(raw, &status); err != nil {
		return err
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": InferenceServices.GroupVersion().String(), "kind": "InferenceService",
		"metadata": map[string]any{"name": e.Name, "namespace": e.Namespace}, "status": status}}
	_, err = s.client.Resource(InferenceServices).Namespace(e.Namespace).ApplyStatus(ctx, e.Name, obj, metav1.ApplyOptions{FieldManager: fieldManager, Force: true})
	return err
}

// decodeAll decodes every object of inf's store as T; one that does not decode is logged
// and left out.
func decodeAll[T any](log *slog.Logger, inf cache.SharedIndexInformer) []T {
	var out []T
	for _, o := range inf.GetStore().List() {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		var t T
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &t); err != nil {
			log.Warn("kserve: skip an object that does not decode", "kind", u.GetKind(), "name", u.GetNamespace()+"/"+u.GetName(), "error", err)
			continue
		}
		out = append(out, t)
	}
	return out
}
