//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/procfs"

	"github.com/modelmesh/mesh/internal/proctest"
)

// BenchmarkMeshStatsMemory measures what the bootstrap's stats matcher saves. One mesh with
// 2,000 models resident on 20 fake workers (records in Redis, as BenchmarkMeshScale) feeds
// two gateway Envoys the same configuration through two control planes: the mesh's own, with
// manifests/local/envoy-bootstrap.yaml, and one whose bootstrap lacks the stats matcher.
// Both are measured with no model resident, with the 2,000 model clusters, and after one
// request to every model (which creates the stats Envoy charges per response).
func BenchmarkMeshStatsMemory(b *testing.B) {
	const models = 2000
	for range b.N {
		m := startMesh(b, meshOptions{Registry: scaleRegistry(models)})
		gateways := []*gateway{{name: "with matcher", admin: m.Admin, addr: m.Gateway, envoy: m.envoy}, m.secondGateway(b, withoutStatsMatcher)}
		phases := []string{"no model resident", fmt.Sprintf("%d model clusters", models), "after one request per model"}
		figures := make([][]envoyFigures, len(phases))
		measure := func(phase int) {
			for _, g := range gateways {
				figures[phase] = append(figures[phase], g.figures(b))
			}
		}
		measure(0)
		startFakeWorkers(b, m, 20, models/20)
		for _, g := range gateways {
			eventually(b, 120*time.Second, fmt.Sprintf("%d model clusters in the gateway %s", models, g.name), func() bool {
				return g.stat(b, "cluster_manager.active_clusters") >= models+2
			})
		}
		measure(1)
		for _, g := range gateways {
			g.requestEveryModel(b, models)
		}
		measure(2)

		var sb strings.Builder
		fmt.Fprintf(&sb, "\nEnvoy stats memory, %d models resident, the same configuration from one mesh\n", models)
		fmt.Fprintf(&sb, "%-30s %-26s %14s %14s %8s\n", "phase", "figure", gateways[0].name, gateways[1].name, "ratio")
		for i, phase := range phases {
			with, without := figures[i][0], figures[i][1]
			for _, row := range []struct {
				name      string
				with, out float64
				unit      string
			}{
				{"heap allocated", mib(with.allocated), mib(without.allocated), "MiB"},
				{"heap size", mib(with.heap), mib(without.heap), "MiB"},
				{"resident set", mib(with.rss), mib(without.rss), "MiB"},
				{"stats (admin /stats)", float64(with.stats), float64(without.stats), ""},
				{"/stats/prometheus", float64(with.promBytes) / 1024, float64(without.promBytes) / 1024, "KiB"},
			} {
				fmt.Fprintf(&sb, "%-30s %-26s %10.0f %-3s %10.0f %-3s %7.2fx\n", phase, row.name, row.with, row.unit, row.out, row.unit, row.with/row.out)
				phase = ""
			}
		}
		fmt.Print(sb.String())
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// gateway is a gateway Envoy: its listener and admin addresses.
type gateway struct {
	name, admin, addr string
	envoy             *proctest.Process
}

// envoyFigures are one Envoy's memory and stats.
type envoyFigures struct {
	allocated, heap, rss int64
	stats, promBytes     int
}

func (g *gateway) figures(b *testing.B) envoyFigures {
	b.Helper()
	_, body := get(b, "http://"+g.admin+"/memory")
	var f envoyFigures
	for _, field := range []struct {
		key string
		to  *int64
	}{{`"allocated": "`, &f.allocated}, {`"heap_size": "`, &f.heap}} {
		_, rest, ok := strings.Cut(body, field.key)
		v, _, _ := strings.Cut(rest, `"`)
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			b.Fatalf("admin /memory lacks %s: %s", field.key, body)
		}
		*field.to = n
	}
	f.rss = rss(b, g.envoy.Cmd.Process.Pid)
	_, stats := get(b, "http://"+g.admin+"/stats")
	f.stats = strings.Count(stats, "\n")
	_, prom := get(b, "http://"+g.admin+"/stats/prometheus")
	f.promBytes = len(prom)
	return f
}

// stat reads one counter or gauge from the gateway's admin /stats.
func (g *gateway) stat(b *testing.B, name string) int64 {
	b.Helper()
	return (&mesh{Admin: g.admin}).envoyStat(b, name)
}

// requestEveryModel sends one inference request for each of the models m00000... through
// the gateway. Nothing listens at the fake workers' addresses, so Envoy answers 503 itself,
// after charging the model cluster's response and latency stats as for any answer.
func (g *gateway) requestEveryModel(b *testing.B, models int) {
	b.Helper()
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range 8 {
		wg.Go(func() {
			for i := range next {
				resp, err := http.Post(fmt.Sprintf("http://%s/v2/models/m%05d/infer", g.addr, i), "application/json", strings.NewReader(irisSetosa))
				code := 0
				if err == nil {
					code = resp.StatusCode
					resp.Body.Close()
				}
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		})
	}
	for i := range models {
		next <- i
	}
	close(next)
	wg.Wait()
	if codes[503] != models {
		b.Fatalf("gateway %s answered %v to %d requests for models on unreachable workers, want 503 each", g.name, codes, models)
	}
}

// rss is a process's resident set in bytes (/proc/PID/statm).
func rss(b *testing.B, pid int) int64 {
	b.Helper()
	p, err := procfs.NewProc(pid)
	must(b, err)
	statm, err := p.Statm()
	must(b, err)
	return int64(statm.ResidentBytes())
}

// withoutStatsMatcher removes stats_config.stats_matcher from a bootstrap, so that Envoy
// creates every stat.
func withoutStatsMatcher(tb testing.TB, boot string) string {
	tb.Helper()
	start := strings.Index(boot, "\n  stats_matcher:\n")
	if start < 0 {
		tb.Fatal("the bootstrap has no stats_matcher")
	}
	end := start + len("\n  stats_matcher:\n")
	for end < len(boot) && strings.HasPrefix(boot[end:], "    ") {
		end += strings.Index(boot[end:], "\n") + 1
	}
	return boot[:start+1] + boot[end:]
}

// secondGateway starts another control plane on m's registry and Redis, with a gateway
// port of its own, and an Envoy it configures from the local bootstrap changed by edit.
func (m *mesh) secondGateway(b *testing.B, edit func(testing.TB, string) string) *gateway {
	b.Helper()
	xdsAddr, metrics, gw, admin := freePort(b), freePort(b), freePort(b), freePort(b)
	_, gwPort, _ := net.SplitHostPort(gw)
	args := append([]string(nil), m.cpArgs...)
	for i := range len(args) - 1 {
		switch args[i] {
		case "--xds-listen":
			args[i+1] = xdsAddr
		case "--metrics-listen":
			args[i+1] = metrics
		case "--gateway-port":
			args[i+1] = gwPort
		}
	}
	startProcess(b, "second control plane", filepath.Join(*binDir, "mesh-controlplane"), args, proctest.HTTPOK("http://"+metrics+"/healthz"))
	_, adminPort, _ := net.SplitHostPort(admin)
	xdsHost, xdsPort, _ := net.SplitHostPort(xdsAddr)
	boot := edit(b, render(b, "../manifests/local/envoy-bootstrap.yaml", map[string]string{
		"ADMIN_PORT": adminPort, "XDS_HOST": xdsHost, "XDS_PORT": xdsPort, "XDS_API": "GRPC", "NODE_ID": "gateway-second"}))
	path := filepath.Join(b.TempDir(), "envoy.yaml")
	must(b, os.WriteFile(path, []byte(boot), 0o644))
	envoy := startProcess(b, "second envoy", envoyPath(b), []string{"-c", path, "--concurrency", "2", "--disable-hot-restart",
		"--use-dynamic-base-id", "--log-level", "warn"}, proctest.HTTPOK("http://"+admin+"/ready"))
	eventually(b, 30*time.Second, "the second gateway serves /v2/health/ready", proctest.HTTPOK("http://"+gw+"/v2/health/ready"))
	return &gateway{name: "without", admin: admin, addr: gw, envoy: envoy}
}
