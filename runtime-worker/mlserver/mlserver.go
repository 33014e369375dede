// Package mlserver is the worker's backend for Seldon's MLServer, with its scikit-learn,
// XGBoost and LightGBM runtimes, started with load_models_at_startup off so that the worker
// decides what is loaded (modelserver does the repository calls). A model is installed as
// its file (or directory) beside a model-settings.json naming the runtime its format needs;
// its memory is the growth of the MLServer processes' resident memory around its load, and
// its last use comes from MLServer's per-model request counters.
package mlserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/modelmesh/mesh/internal/placement"
	"github.com/modelmesh/mesh/proto/inference"
	"github.com/modelmesh/mesh/runtime-worker/agent"
	"github.com/modelmesh/mesh/runtime-worker/modelserver"
)

// implementations maps the formats MLServer reads here, in KServe's names, to the MLServer
// runtime class that serves each.
var implementations = map[string]string{
	"sklearn":  "mlserver_sklearn.SKLearnModel",
	"xgboost":  "mlserver_xgboost.XGBoostModel",
	"lightgbm": "mlserver_lightgbm.LightGBMModel",
}

// Config locates the MLServer the worker drives.
type Config struct {
	modelserver.Config
	// MetricsURL is MLServer's Prometheus endpoint (its metrics_port), for example
	// http://127.0.0.1:8082/metrics: each model's request counters there tell its last use.
	// Empty: models count as used only when loaded.
	MetricsURL string
}

// New drives the MLServer cfg locates; Close releases the connection.
func New(cfg Config, log *slog.Logger) (*modelserver.Backend, error) {
	return modelserver.New(cfg.Config, &Server{metricsURL: cfg.MetricsURL, repository: cfg.Repository, log: log,
		http: &http.Client{}, served: map[string]float64{}, measuring: make(chan struct{}, 1)}, log)
}

// Server is what MLServer does its own way (modelserver.Server).
type Server struct {
	metricsURL, repository string
	log                    *slog.Logger
	http                   *http.Client

	// measuring serializes loads (a one-slot semaphore a waiting load can give up on), so
	// that the growth of MLServer's memory around one is that model's alone.
	measuring chan struct{}

	mu sync.Mutex
	// served is each model's count of answered requests at the last poll.
	served map[string]float64
	// pid is MLServer's main process, once found (resident).
	pid int
}

var _ modelserver.Server = (*Server)(nil)

// Runtime names the runtime in the worker's records.
func (*Server) Runtime() string { return "mlserver" }

// Capabilities: scikit-learn, XGBoost and LightGBM models; one version of a model at a time,
// since MLServer reloads every version of a name when one is loaded.
func (*Server) Capabilities() placement.Capabilities {
	formats := make([]string, 0, len(implementations))
	for f := range implementations {
		formats = append(formats, f)
	}
	slices.Sort(formats)
	return placement.Capabilities{OneVersion: true, Formats: formats}
}

// settings is the part of MLServer's model-settings.json the worker writes.
type settings struct {
	Name           string     `json:"name"`
	Implementation string     `json:"implementation"`
	Parameters     parameters `json:"parameters"`
}

type parameters struct {
	URI     string `json:"uri"`
	Version string `json:"version,omitempty"`
}

// Install copies the model at f.Path into dir with a model-settings.json that names m and
// the runtime of f.Format. A file is installed under its format's name (fileName) and the
// settings point at it; a directory is copied whole, and the settings point at its one file, or at the directory itself when
// it holds several (MLServer's runtimes then look for their well-known file names, such as
// model.joblib or model.json). The format must be given: a file's name does not say it.
func (*Server) Install(m placement.ModelVersion, f agent.Files, dir string) error {
	impl, ok := implementations[f.Format]
	if !ok {
		if f.Format == "" {
			return errors.New("mlserver needs the model's format (sklearn, xgboost or lightgbm) to choose its runtime")
		}
		return fmt.Errorf("mlserver reads sklearn, xgboost and lightgbm models, not %q", f.Format)
	}
	fi, err := os.Stat(f.Path)
	if err != nil {
		return err
	}
	uri := "."
	switch {
	case fi.Mode().IsRegular():
		name := fileName(f.Format, f.Path)
		uri = "./" + name
		err = os.MkdirAll(dir, 0o755)
		if err == nil {
			err = copyFile(f.Path, filepath.Join(dir, name))
		}
	case fi.IsDir():
		err = modelserver.CopyTree(f.Path, dir)
		if err == nil {
			err = noNestedSettings(dir)
		}
		if only, ok := onlyFile(dir); ok && err == nil {
			uri = "./" + only
		}
	default:
		err = fmt.Errorf("%s is neither a file nor a directory", f.Path)
	}
	if err != nil {
		return err
	}
	body, err := json.MarshalIndent(settings{Name: m.Name, Implementation: impl, Parameters: parameters{URI: uri, Version: m.Version}}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "model-settings.json"), body, 0o644)
}

// fileName is the name a one-file model of format is installed as: the worker's disk tier
// keeps a single object under a name of its own, and XGBoost tells a booster's encoding
// from the name's extension (.json, else UBJSON), so the JSON text is looked for.
func fileName(format, path string) string {
	switch format {
	case "sklearn":
		return "model.joblib"
	case "lightgbm":
		return "model.txt"
	}
	head := make([]byte, 64)
	fh, err := os.Open(path)
	if err == nil {
		n, _ := fh.Read(head)
		head = head[:n]
		fh.Close()
	}
	// JSON opens an object and a quoted key; UBJSON's object marker is followed by a length
	// type byte.
	if rest, ok := strings.CutPrefix(strings.TrimSpace(string(head)), "{"); ok && strings.HasPrefix(strings.TrimSpace(rest), `"`) {
		return "model.json"
	}
	return "model.ubj"
}

// noNestedSettings refuses a model directory holding a model-settings.json below its top:
// MLServer looks for them at any depth, and would load one as a model of whatever name and
// runtime class it says (code of the directory's own, past the format check). The one at
// the top is the worker's to write.
func noNestedSettings(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Name() == "model-settings.json" && filepath.Dir(path) != dir {
			rel, _ := filepath.Rel(dir, path)
			return fmt.Errorf("the model's files hold %s: MLServer would load it as a model of its own; only the worker writes model settings", rel)
		}
		return nil
	})
}

// lock takes the load slot, or gives up when ctx ends.
func (s *Server) lock(ctx context.Context) error {
	select {
	case s.measuring <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for mlserver's load slot: %w", ctx.Err())
	}
}

func (s *Server) unlock() { <-s.measuring }

// onlyFile names the one regular file directly in dir, if it holds exactly one and nothing
// else.
func onlyFile(dir string) (string, bool) {
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 || !entries[0].Type().IsRegular() {
		return "", false
	}
	return entries[0].Name(), true
}

func copyFile(src, dst string) error {
	body, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, body, 0o644)
}

// Poll asks MLServer whether it is live, then reads its request counters: a model whose
// count of answered requests grew since the last poll was used now.
func (s *Server) Poll(ctx context.Context, c modelserver.Client) ([]modelserver.Use, error) {
	r, err := c.ServerLive(ctx, &inference.ServerLiveRequest{})
	if err != nil {
		return nil, fmt.Errorf("mlserver live: %w", err)
	}
	if !r.GetLive() {
		return nil, errors.New("mlserver reports it is not live")
	}
	if s.metricsURL == "" {
		return nil, nil
	}
	counts, err := s.requestCounts(ctx)
	if err != nil {
		s.log.WarnContext(ctx, "mlserver request counters", "error", err)
		return nil, nil
	}
	return s.used(counts), nil
}

// Prepare has MLServer import each of its runtimes, with their frameworks, before any model
// is measured: the first model of a format would otherwise be charged the hundreds of MiB
// that importing XGBoost takes in every MLServer process. A model-settings.json naming the
// runtime and a file that does not exist does it: MLServer imports the class in each
// process, then fails to find the file, and the imports stay.
func (s *Server) Prepare(ctx context.Context, c modelserver.Client, repository string) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.unlock()
	for _, format := range s.Capabilities().Formats {
		// Model names start with a letter or a digit: this one is the worker's own.
		name := "_import-" + format
		dir := filepath.Join(repository, name)
		body, _ := json.Marshal(settings{Name: name, Implementation: implementations[format], Parameters: parameters{URI: "./absent"}})
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "model-settings.json"), body, 0o644); err != nil {
			return err
		}
		_, err := c.RepositoryModelLoad(ctx, &inference.RepositoryModelLoadRequest{ModelName: name})
		os.RemoveAll(dir)
		switch {
		case err == nil: // cannot happen without the file; leave nothing loaded
			c.RepositoryModelUnload(ctx, &inference.RepositoryModelUnloadRequest{ModelName: name})
		case ctx.Err() != nil:
			return ctx.Err()
		case !strings.Contains(err.Error(), "absent"):
			// Not the missing file: the runtime itself is missing or broken.
			return fmt.Errorf("mlserver cannot import its %s runtime %s: %w", format, implementations[format], err)
		}
	}
	return nil
}
