package istio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	analysisv1alpha1 "istio.io/api/analysis/v1alpha1"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	"istio.io/client-go/pkg/clientset/versioned"
	"istio.io/client-go/pkg/informers/externalversions"
	listersv1 "istio.io/client-go/pkg/listers/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// settle gathers a burst of informer events into one update.
const settle = 100 * time.Millisecond

// DefaultSelector is the label selector of the objects the mesh reads by default.
const DefaultSelector = "modelmesh.io/model-traffic=true"

// What the mesh writes into an object's IstioStatus: one condition, and a validation message
// per kind of finding (their texts are in the condition's message). Other writers' conditions
// and messages are kept.
const (
	conditionType = "ModelMeshAccepted"
	rejectedName  = "ModelMeshRejected"
	rejectedCode  = "MM0001"
	warningName   = "ModelMeshWarning"
	warningCode   = "MM0002"
)

// KubeClient returns an Istio clientset for the cluster of the kubeconfig file at path, or
// for the cluster the process runs in when path is empty.
func KubeClient(path string) (*versioned.Clientset, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		cfg, err = rest.InClusterConfig()
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	return versioned.NewForConfig(cfg)
}

// Kube is a source of VirtualServices and DestinationRules in the Kubernetes API, read
// through shared informers and filtered by namespace and labels, and the StatusWriter that
// records verdicts on them. Watch owns the informers; WriteStatus may run concurrently.
type Kube struct {
	client    versioned.Interface
	namespace string
	selector  labels.Selector
	log       *slog.Logger
	factory   externalversions.SharedInformerFactory
	vsInf     cache.SharedIndexInformer
	drInf     cache.SharedIndexInformer
	vss       listersv1.VirtualServiceLister
	drs       listersv1.DestinationRuleLister
}

// NewKube reads the objects of namespace (empty: all) whose labels match selector (see
// DefaultSelector). An invalid selector is an error.
func NewKube(client versioned.Interface, namespace, selector string, log *slog.Logger) (*Kube, error) {
	sel, err := labels.Parse(selector)
	if err != nil {
		return nil, fmt.Errorf("label selector %q: %w", selector, err)
	}
	f := externalversions.NewSharedInformerFactoryWithOptions(client, 0, externalversions.WithNamespace(namespace),
		externalversions.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel.String() }))
	vs, dr := f.Networking().V1().VirtualServices(), f.Networking().V1().DestinationRules()
	return &Kube{client: client, namespace: namespace, selector: sel, log: log, factory: f,
		vsInf: vs.Informer(), drInf: dr.Informer(), vss: vs.Lister(), drs: dr.Lister()}, nil
}

// Watch starts the informers and calls update with every selected object once their caches
// have synced, then after each change to an object's spec or labels (status-only updates,
// such as those of WriteStatus, are not changes), gathered for settle. Returns nil when ctx
// ends, after the informers have stopped; call it once.
func (k *Kube) Watch(ctx context.Context, update func(Objects)) error {
	dirty := make(chan struct{}, 1)
	mark := func() {
		select {
		case dirty <- struct{}{}:
		default:
		}
	}
	h := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { mark() },
		UpdateFunc: func(old, obj any) {
			if changed(old, obj) {
				mark()
			}
		},
		DeleteFunc: func(any) { mark() },
	}
	defer k.factory.Shutdown() // after ctx ended: waits for the informers' goroutines
	for _, inf := range []cache.SharedIndexInformer{k.vsInf, k.drInf} {
		if _, err := inf.AddEventHandler(h); err != nil {
			return fmt.Errorf("watch istio objects: %w", err)
		}
	}
	k.factory.Start(ctx.Done())
	k.log.InfoContext(ctx, "waiting for istio objects from kubernetes", "namespace", k.namespace, "selector", k.selector.String())
	if !cache.WaitForCacheSync(ctx.Done(), k.vsInf.HasSynced, k.drInf.HasSynced) {
		return nil // ctx ended
	}
	select {
	case <-dirty: // the initial list, read below
	default:
	}
	update(k.list())
	var pending <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-dirty:
			if pending == nil {
				pending = time.After(settle)
			}
		case <-pending:
			pending = nil
			update(k.list())
		}
	}
}

// changed reports whether an update changed an object's spec or labels, the only parts
// Convert and the selector read.
func changed(old, obj any) bool {
	switch o := old.(type) {
	case *networkingv1.VirtualService:
		n, ok := obj.(*networkingv1.VirtualService)
		return !ok || !proto.Equal(&o.Spec, &n.Spec) || !maps.Equal(o.Labels, n.Labels)
	case *networkingv1.DestinationRule:
		n, ok := obj.(*networkingv1.DestinationRule)
		return !ok || !proto.Equal(&o.Spec, &n.Spec) || !maps.Equal(o.Labels, n.Labels)
	}
	return true
}

// list reads the selected objects from the informers' caches. The selector is applied here
// too: a cache may hold objects whose labels stopped matching.
func (k *Kube) list() Objects {
	var objs Objects
	vss, err := k.vss.VirtualServices(k.namespace).List(k.selector)
	if err != nil {
		objs.Problems = append(objs.Problems, Problem{File: "kubernetes", Error: err.Error()})
	}
	drs, err := k.drs.DestinationRules(k.namespace).List(k.selector)
	if err != nil {
		objs.Problems = append(objs.Problems, Problem{File: "kubernetes", Error: err.Error()})
	}
	objs.VirtualServices, objs.DestinationRules = vss, drs
	return objs
}

// WriteStatus records each status in its object's status (UpdateStatus), only where the
// mesh's condition or validation messages differ from what the cached object holds. Objects
// no longer cached are skipped.
func (k *Kube) WriteStatus(ctx context.Context, statuses []Status) error {
	var errs []error
	now := time.Now()
	for _, st := range statuses {
		var err error
		switch st.Kind {
		case KindVirtualService:
			obj, gerr := k.vss.VirtualServices(st.Namespace).Get(st.Name)
			if gerr != nil {
				continue
			}
			c := obj.DeepCopy()
			if setStatus(&c.Status, c.Generation, st, now) {
				_, err = k.client.NetworkingV1().VirtualServices(st.Namespace).UpdateStatus(ctx, c, metav1.UpdateOptions{})
			}
		case KindDestinationRule:
			obj, gerr := k.drs.DestinationRules(st.Namespace).Get(st.Name)
			if gerr != nil {
				continue
			}
			c := obj.DeepCopy()
			if setStatus(&c.Status, c.Generation, st, now) {
				_, err = k.client.NetworkingV1().DestinationRules(st.Namespace).UpdateStatus(ctx, c, metav1.UpdateOptions{})
			}
		}
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("%s %s/%s: %w", st.Kind, st.Namespace, st.Name, err))
		}
	}
	return errors.Join(errs...)
}

// setStatus puts st into s as the mesh's condition and validation messages, and reports
// whether that changed s. The transition time moves only when the verdict does.
func setStatus(s *metav1alpha1.IstioStatus, generation int64, st Status, now time.Time) bool {
	cond := &metav1alpha1.IstioCondition{Type: conditionType, Status: "True", Reason: "Accepted",
		Message: message(st), ObservedGeneration: generation}
	if st.State == Rejected {
		cond.Status, cond.Reason = "False", "Rejected"
	}
	var msgs []*analysisv1alpha1.AnalysisMessageBase
	if st.State == Rejected {
		msgs = append(msgs, &analysisv1alpha1.AnalysisMessageBase{Type: &analysisv1alpha1.AnalysisMessageBase_Type{Name: rejectedName, Code: rejectedCode},
			Level: analysisv1alpha1.AnalysisMessageBase_ERROR})
	}
	if len(st.Warnings) > 0 {
		msgs = append(msgs, &analysisv1alpha1.AnalysisMessageBase{Type: &analysisv1alpha1.AnalysisMessageBase_Type{Name: warningName, Code: warningCode},
			Level: analysisv1alpha1.AnalysisMessageBase_WARNING})
	}
	ours := func(m *analysisv1alpha1.AnalysisMessageBase) bool {
		return m.GetType().GetCode() == rejectedCode || m.GetType().GetCode() == warningCode
	}
	i := slices.IndexFunc(s.Conditions, func(c *metav1alpha1.IstioCondition) bool { return c.GetType() == conditionType })
	var old *metav1alpha1.IstioCondition
	if i >= 0 {
		old = s.Conditions[i]
	}
	sameMsgs := slices.EqualFunc(slices.DeleteFunc(slices.Clone(s.ValidationMessages), func(m *analysisv1alpha1.AnalysisMessageBase) bool { return !ours(m) }), msgs,
		func(a, b *analysisv1alpha1.AnalysisMessageBase) bool { return proto.Equal(a, b) })
	if old != nil && sameMsgs && old.GetStatus() == cond.Status && old.GetReason() == cond.Reason &&
		old.GetMessage() == cond.Message && old.GetObservedGeneration() == cond.ObservedGeneration {
		return false
	}
	cond.LastTransitionTime = timestamppb.New(now)
	if old.GetStatus() == cond.Status {
		cond.LastTransitionTime = old.GetLastTransitionTime()
	}
	if i >= 0 {
		s.Conditions[i] = cond
	} else {
		s.Conditions = append(s.Conditions, cond)
	}
	s.ValidationMessages = append(slices.DeleteFunc(s.ValidationMessages, ours), msgs...)
	return true
}

// message is a condition's text: the verdict with its reasons and warnings.
func message(st Status) string {
	var b strings.Builder
	if st.State == Rejected {
		b.WriteString("rejected: " + strings.Join(st.Reasons, "; "))
	} else {
		b.WriteString("accepted for models: " + strings.Join(st.Models, ", "))
	}
	if len(st.Warnings) > 0 {
		b.WriteString("; warnings: " + strings.Join(st.Warnings, "; "))
	}
	return b.String()
}
