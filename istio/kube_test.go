package istio

import (
	"context"
	"strings"
	"testing"
	"time"

	analysisv1alpha1 "istio.io/api/analysis/v1alpha1"
	metav1alpha1 "istio.io/api/meta/v1alpha1"
	networkingv1alpha3 "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	"istio.io/client-go/pkg/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	k8stesting "k8s.io/client-go/testing"
)

var selected = map[string]string{"modelmesh.io/model-traffic": "true"}

func kubeVS(ns, name string, lbls map[string]string, subset string) *networkingv1.VirtualService {
	vs := &networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls, Generation: 1}}
	vs.Spec.Hosts = []string{"iris"}
	vs.Spec.Http = []*networkingv1alpha3.HTTPRoute{{Route: []*networkingv1alpha3.HTTPRouteDestination{
		{Destination: &networkingv1alpha3.Destination{Host: "iris", Subset: subset}},
	}}}
	return vs
}

func kubeDR(ns, name string, lbls map[string]string, version string) *networkingv1.DestinationRule {
	dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls, Generation: 1}}
	dr.Spec.Host = "iris"
	dr.Spec.Subsets = []*networkingv1alpha3.Subset{{Name: "canary", Labels: map[string]string{"version": version}}}
	return dr
}

// fakeClient is a fake clientset that tells on watching when the informers' watches are
// open, so that a test changes objects only once they are sure to be seen.
func fakeClient(t *testing.T, objs ...*networkingv1.VirtualService) (*fake.Clientset, <-chan string) {
	t.Helper()
	client := fake.NewSimpleClientset()
	for _, o := range objs {
		if err := client.Tracker().Add(o); err != nil {
			t.Fatal(err)
		}
	}
	watching := make(chan string, 8)
	client.PrependWatchReactor("*", func(action k8stesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(action.GetResource(), action.GetNamespace())
		if err != nil {
			return false, nil, err
		}
		watching <- action.GetResource().Resource
		return true, w, nil
	})
	return client, watching
}

// runKube runs k.Watch until the test ends and returns its updates, once both watches are
// open.
func runKube(t *testing.T, k *Kube, watching <-chan string) <-chan Objects {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan Objects, 64)
	done := make(chan error, 1)
	go func() { done <- k.Watch(ctx, func(o Objects) { updates <- o }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	for range 2 {
		select {
		case <-watching:
		case <-time.After(10 * time.Second):
			t.Fatal("the informers did not watch")
		}
	}
	return updates
}

// rules converts objects against the test registry and renders the rules of iris briefly:
// "VirtualService ns/name: version weight, ..." per rule.
func rules(t *testing.T, o Objects) string {
	t.Helper()
	res := Convert(o.VirtualServices, o.DestinationRules, testReg(t))
	var out []string
	for _, r := range res.Rules["iris"] {
		s := strings.Fields(r.Source)[1] + ":"
		for _, w := range r.Split {
			s += " " + w.Version
		}
		out = append(out, s)
	}
	return strings.Join(out, ",")
}

func TestKubeWatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	client, watching := fakeClient(t,
		kubeVS("models", "iris", selected, ""),
		kubeVS("models", "unlabelled", nil, "3"),
		kubeVS("other", "elsewhere", selected, "3"),
	)
	k, err := NewKube(client, "models", DefaultSelector, discard())
	if err != nil {
		t.Fatal(err)
	}
	updates := runKube(t, k, watching)
	if o := await(t, updates, "the initial objects", func(Objects) bool { return true }); rules(t, o) != "models/iris: 1" {
		t.Fatalf("first update converts to %q: only the labelled VirtualService of the namespace counts", rules(t, o))
	}

	vss, drs := client.NetworkingV1().VirtualServices("models"), client.NetworkingV1().DestinationRules("models")
	if _, err := drs.Create(ctx, kubeDR("models", "iris", selected, "2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := vss.Update(ctx, kubeVS("models", "iris", selected, "canary"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, updates, "the subset through the new DestinationRule", func(o Objects) bool { return rules(t, o) == "models/iris: 2" })

	if _, err := drs.Update(ctx, kubeDR("models", "iris", selected, "3"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, updates, "the updated DestinationRule", func(o Objects) bool { return rules(t, o) == "models/iris: 3" })

	if err := drs.Delete(ctx, "iris", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Without the DestinationRule, subset "canary" is taken as a version, which iris lacks.
	await(t, updates, "the deleted DestinationRule", func(o Objects) bool { return len(o.DestinationRules) == 0 && rules(t, o) == "" })

	// Labels decide: the unlabelled one joins, the other leaves.
	if _, err := vss.Update(ctx, kubeVS("models", "unlabelled", selected, "3"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := vss.Update(ctx, kubeVS("models", "iris", map[string]string{"modelmesh.io/model-traffic": "false"}, "2"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, updates, "the relabelled VirtualServices", func(o Objects) bool { return rules(t, o) == "models/unlabelled: 3" })

	if err := vss.Delete(ctx, "unlabelled", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, updates, "the deleted VirtualService", func(o Objects) bool { return len(o.VirtualServices) == 0 })

	if _, err := vss.Create(ctx, kubeVS("models", "created", selected, "2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, updates, "the created VirtualService", func(o Objects) bool { return rules(t, o) == "models/created: 2" })
}

func TestNewKubeRefusesABadSelector(t *testing.T) {
	t.Parallel()
	if _, err := NewKube(fake.NewSimpleClientset(), "", "a in (", discard()); err == nil {
		t.Fatal("a selector that does not parse was accepted")
	}
}

// statusWrites counts the UpdateStatus calls the client has seen.
func statusWrites(client *fake.Clientset) int {
	n := 0
	for _, a := range client.Actions() {
		if a.GetVerb() == "update" && a.GetSubresource() == "status" {
			n++
		}
	}
	return n
}

func TestKubeWriteStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// istiod's own condition and analysis message are on the object already.
	theirs := &metav1alpha1.IstioCondition{Type: "Reconciled", Status: "True"}
	theirMsg := &analysisv1alpha1.AnalysisMessageBase{Type: &analysisv1alpha1.AnalysisMessageBase_Type{Name: "ReferencedResourceNotFound", Code: "IST0101"},
		Level: analysisv1alpha1.AnalysisMessageBase_ERROR}
	vs := kubeVS("models", "iris", selected, "")
	vs.Status.Conditions = []*metav1alpha1.IstioCondition{theirs}
	vs.Status.ValidationMessages = []*analysisv1alpha1.AnalysisMessageBase{theirMsg}
	client, watching := fakeClient(t, vs)
	if _, err := client.NetworkingV1().DestinationRules("models").Create(ctx, kubeDR("models", "iris", selected, "2"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k, err := NewKube(client, "", DefaultSelector, discard())
	if err != nil {
		t.Fatal(err)
	}
	updates := runKube(t, k, watching)
	await(t, updates, "the objects", func(o Objects) bool { return len(o.VirtualServices) == 1 && len(o.DestinationRules) == 1 })

	// writes records statuses and waits until the informer's cache holds them.
	writes := func(statuses ...Status) {
		t.Helper()
		if err := k.WriteStatus(ctx, statuses); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for _, st := range statuses {
			for {
				var got *metav1alpha1.IstioStatus
				if st.Kind == KindVirtualService {
					o, _ := k.vss.VirtualServices(st.Namespace).Get(st.Name)
					got = &o.Status
				} else {
					o, _ := k.drs.DestinationRules(st.Namespace).Get(st.Name)
					got = &o.Status
				}
				if c := ourCondition(got); c != nil && c.GetMessage() == message(st) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s %s never showed its status in the cache", st.Kind, st.Name)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	accepted := Status{Kind: KindVirtualService, Namespace: "models", Name: "iris", State: Accepted, Models: []string{"iris"}}
	drAccepted := Status{Kind: KindDestinationRule, Namespace: "models", Name: "iris", State: Accepted, Models: []string{"iris"},
		Warnings: []string{"trafficPolicy is ignored"}}
	writes(accepted, drAccepted)
	if n := statusWrites(client); n != 2 {
		t.Fatalf("%d status writes, want 2", n)
	}
	got, err := client.NetworkingV1().VirtualServices("models").Get(ctx, "iris", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := ourCondition(&got.Status)
	if c.GetStatus() != "True" || c.GetReason() != "Accepted" || c.GetObservedGeneration() != 1 || c.GetLastTransitionTime() == nil {
		t.Fatalf("condition %v", c)
	}
	if len(got.Status.Conditions) != 2 || got.Status.Conditions[0].GetType() != "Reconciled" ||
		len(got.Status.ValidationMessages) != 1 || got.Status.ValidationMessages[0].GetType().GetCode() != "IST0101" {
		t.Fatalf("istiod's status was not kept: %v", &got.Status)
	}
	dr, err := client.NetworkingV1().DestinationRules("models").Get(ctx, "iris", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if msgs := dr.Status.ValidationMessages; len(msgs) != 1 || msgs[0].GetType().GetCode() != warningCode ||
		!strings.Contains(ourCondition(&dr.Status).GetMessage(), "trafficPolicy is ignored") {
		t.Fatalf("DestinationRule status %v", &dr.Status)
	}

	// The same verdicts again: nothing is written.
	writes(accepted, drAccepted)
	if n := statusWrites(client); n != 2 {
		t.Fatalf("%d status writes after unchanged verdicts, want still 2", n)
	}

	// Rejected: written, with the reasons, and the transition time moves.
	rejected := accepted
	rejected.State, rejected.Reasons = Rejected, []string{"http[0].match[0].queryParams: not supported"}
	writes(rejected)
	got, err = client.NetworkingV1().VirtualServices("models").Get(ctx, "iris", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c2 := ourCondition(&got.Status)
	if c2.GetStatus() != "False" || c2.GetReason() != "Rejected" || !strings.Contains(c2.GetMessage(), "queryParams") {
		t.Fatalf("condition %v", c2)
	}
	if c2.GetLastTransitionTime().AsTime().Before(c.GetLastTransitionTime().AsTime()) {
		t.Fatalf("transition time went back: %v then %v", c.GetLastTransitionTime(), c2.GetLastTransitionTime())
	}
	if codes := []string{got.Status.ValidationMessages[0].GetType().GetCode(), got.Status.ValidationMessages[1].GetType().GetCode()}; len(got.Status.ValidationMessages) != 2 ||
		codes[0] != "IST0101" || codes[1] != rejectedCode {
		t.Fatalf("validation messages %v", got.Status.ValidationMessages)
	}

	// An object that is gone is skipped, not an error.
	if err := k.WriteStatus(ctx, []Status{{Kind: KindVirtualService, Namespace: "models", Name: "gone", State: Accepted}}); err != nil {
		t.Fatal(err)
	}
}

func ourCondition(s *metav1alpha1.IstioStatus) *metav1alpha1.IstioCondition {
	for _, c := range s.GetConditions() {
		if c.GetType() == conditionType {
			return c
		}
	}
	return nil
}
