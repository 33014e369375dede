package cli

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"

	"github.com/redis/go-redis/v9"
)

// Redis holds the Redis connection settings every binary shares besides its address: ACL
// credentials and TLS, as a managed or shared Redis requires.
type Redis struct {
	Username string
	Password string
	TLS      bool
	CAFile   string
}

// RegisterFlags declares the settings on fs.
func (r *Redis) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&r.Username, "redis-username", "", "Redis ACL user (empty: the default user)")
	fs.StringVar(&r.Password, "redis-password", "", "Redis password; set it through the environment variable (from a Kubernetes Secret), not on the command line, where the process list shows it")
	fs.BoolVar(&r.TLS, "redis-tls", false, "connect to Redis over TLS")
	fs.StringVar(&r.CAFile, "redis-ca-file", "", "with --redis-tls: PEM file of the CAs that sign Redis's certificate (default: the system's)")
}

// Options are the go-redis options for the server at addr. The CA file is read now, so a
// missing or malformed one fails at start.
func (r Redis) Options(addr string) (*redis.Options, error) {
	opts := &redis.Options{Addr: addr, Username: r.Username, Password: r.Password}
	if r.CAFile != "" && !r.TLS {
		return nil, fmt.Errorf("--redis-ca-file needs --redis-tls")
	}
	if !r.TLS {
		return opts, nil
	}
	opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if r.CAFile != "" {
		pem, err := os.ReadFile(r.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--redis-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--redis-ca-file %s: no PEM certificate in it", r.CAFile)
		}
		opts.TLSConfig.RootCAs = pool
	}
	return opts, nil
}
