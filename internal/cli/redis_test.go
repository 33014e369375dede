package cli

import (
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/modelmesh/mesh/internal/redistest"
)

func TestRedisPasswordReachesTheServer(t *testing.T) {
	srv := redistest.StartWith(t, "--requirepass", "s3cret")
	t.Setenv("MESH_TEST_REDIS_PASSWORD", "s3cret")
	var r Redis
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	r.RegisterFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := ApplyEnv(fs, "MESH_TEST_"); err != nil {
		t.Fatal(err)
	}
	ping := func(r Redis) error {
		opts, err := r.Options(srv.Addr)
		if err != nil {
			t.Fatal(err)
		}
		rdb := redis.NewClient(opts)
		defer rdb.Close()
		return rdb.Ping(context.Background()).Err()
	}
	if err := ping(r); err != nil {
		t.Fatalf("with the password from the environment: %v", err)
	}
	if err := ping(Redis{}); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("without a password: %v, want NOAUTH", err)
	}
}

func TestRedisTLSOptions(t *testing.T) {
	opts, err := Redis{TLS: true}.Options("r:6380")
	if err != nil || opts.TLSConfig == nil || opts.TLSConfig.RootCAs != nil {
		t.Fatalf("TLS with the system's CAs: %+v, %v", opts, err)
	}
	bad := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, r := range []Redis{{TLS: true, CAFile: bad}, {TLS: true, CAFile: bad + ".missing"}, {CAFile: bad}} {
		if _, err := r.Options("r:6380"); err == nil {
			t.Errorf("%+v accepted", r)
		}
	}
}
