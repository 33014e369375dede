// Command meshctl drives a worker's management API: load, unload, drain and list models,
// and show its disk tier of fetched model files.
//
//	meshctl [--worker ADDR] [--memory BYTES] [--pinned] [--sha256 HEX] load NAME VERSION URI
//	meshctl [--worker ADDR] --storage-key KEY [--bucket B] load NAME VERSION PATH
//	meshctl [--worker ADDR] unload NAME VERSION
//	meshctl [--worker ADDR] drain NAME VERSION
//	meshctl [--worker ADDR] list
//	meshctl [--worker ADDR] disk
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/modelmesh/mesh/proto/meshv1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshctl:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("meshctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("worker", envOr("MESH_WORKER_MANAGEMENT", "127.0.0.1:8010"), "worker management address (env MESH_WORKER_MANAGEMENT)")
	timeout := fs.Duration("timeout", 5*time.Minute, "longest the call may take")
	memory := fs.Int64("memory", 0, "load: declared memory in bytes (0: measure at load)")
	pinned := fs.Bool("pinned", false, "load: never evict the model")
	key := fs.String("storage-key", "", "load: the worker's storage-config entry; the last argument is then a path in its bucket")
	bucket := fs.String("bucket", "", "load with --storage-key: a bucket other than the entry's")
	sum := fs.String("sha256", "", "load: the digest the model's files must have")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return errors.New("command missing: load, unload, drain, list or disk")
	}
	cc, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	c := meshv1.NewWorkerServiceClient(cc)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	ref := func(want int) (*meshv1.ModelRef, error) {
		if len(rest) != want {
			return nil, fmt.Errorf("%s: want %d arguments, got %d", rest[0], want-1, len(rest)-1)
		}
		return &meshv1.ModelRef{Name: rest[1], Version: rest[2]}, nil
	}
	var resp proto.Message
	switch rest[0] {
	case "load":
		m, err := ref(4)
		if err != nil {
			return err
		}
		req := &meshv1.LoadRequest{Model: m, StorageUri: rest[3], MemoryBytes: *memory, Pinned: *pinned, Sha256: *sum}
		if *key != "" {
			req.StorageUri, req.StorageKey, req.StorageBucket, req.StoragePath = "", *key, *bucket, rest[3]
		}
		resp, err = c.Load(ctx, req)
		if err != nil {
			return err
		}
	case "unload":
		m, err := ref(3)
		if err != nil {
			return err
		}
		if resp, err = c.Unload(ctx, &meshv1.UnloadRequest{Model: m}); err != nil {
			return err
		}
	case "drain":
		m, err := ref(3)
		if err != nil {
			return err
		}
		if resp, err = c.Drain(ctx, &meshv1.DrainRequest{Model: m}); err != nil {
			return err
		}
	case "list":
		if resp, err = c.List(ctx, &meshv1.ListRequest{}); err != nil {
			return err
		}
	case "disk":
		list, err := c.List(ctx, &meshv1.ListRequest{})
		if err != nil {
			return err
		}
		resp = list.GetDiskCache()
	default:
		return fmt.Errorf("unknown command %q: load, unload, drain, list or disk", rest[0])
	}
	b, err := protojson.Marshal(resp)
	if err != nil {
		return err
	}
	var pretty any
	json.Unmarshal(b, &pretty)
	out, _ := json.MarshalIndent(pretty, "", "  ")
	fmt.Fprintln(stdout, string(out))
	return nil
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}
