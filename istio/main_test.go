package istio

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// client-go's informers stream their initial list through a watch (watch-list), which the
	// fake clientset's watches do not serve: have them list first, as with older API servers.
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	goleak.VerifyTestMain(m)
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
