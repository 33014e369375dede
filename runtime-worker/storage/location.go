package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"
)

// DefaultKey is the storage-config entry a Location with a path and no key uses, as in
// ModelMesh.
const DefaultKey = "default"

// Location says where a model version's files are: a URI, or a storage-config entry (Key)
// and a Path in its bucket (Bucket overrides the entry's). SHA256, when set, is the digest
// the files must have (of the file, the archive, or of a directory's manifest: see
// docs/storage.md).
type Location struct {
	URI    string
	Key    string
	Bucket string
	Path   string
	SHA256 string
}

func (l Location) String() string {
	if l.URI != "" {
		return l.URI
	}
	key := l.Key
	if key == "" {
		key = DefaultKey
	}
	if l.Bucket != "" {
		return fmt.Sprintf("storage key %s, bucket %s, path %s", key, l.Bucket, l.Path)
	}
	return fmt.Sprintf("storage key %s, path %s", key, l.Path)
}

var sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)

// target is a Location resolved against the storage config: which kind of store, where in
// it, with which entry's settings.
type target struct {
	scheme string // file, s3, gs, https, http
	bucket string // s3, gs
	key    string // object key or prefix in the bucket (no leading slash), or the file path
	url    *url.URL
	cfg    Config
	cfgKey string // storage-config entry name; "" for settings from the environment
	sha256 string
}

// name is the target as a user wrote it, for logs and errors; no secrets.
func (t target) name() string {
	switch t.scheme {
	case "s3", "gs":
		return t.scheme + "://" + t.bucket + "/" + t.key
	case "file":
		return t.key // the URI as given
	}
	return t.url.Redacted()
}

// id is the target's identity in the disk tier: the same object through another endpoint
// or another storage key (whose credentials may not reach it), or with another declared
// digest, is another entry.
func (t target) id() string {
	sum := sha256.Sum256([]byte(strings.Join([]string{t.name(), t.cfgKey, t.cfg.EndpointURL, t.sha256}, "\x00")))
	return hex.EncodeToString(sum[:16])
}

// prefix is the object-store key t names read as a prefix: with its trailing slash, so
// that "fraud/1" does not take in "fraud/10/"; "" for a whole bucket.
func (t target) prefix() string {
	if t.key == "" || strings.HasSuffix(t.key, "/") {
		return t.key
	}
	return t.key + "/"
}

// resolve parses loc against configs; every error wraps ErrBadURI.
func resolve(loc Location, configs Configs, allowHTTP bool) (target, error) {
	if loc.SHA256 != "" && !sha256Hex.MatchString(loc.SHA256) {
		return target{}, fmt.Errorf("%w: sha256 %q: want 64 lower-case hex digits", ErrBadURI, loc.SHA256)
	}
	if loc.URI != "" {
		if loc.Key != "" || loc.Path != "" || loc.Bucket != "" {
			return target{}, fmt.Errorf("%w: a storage uri and a storage key/path are exclusive", ErrBadURI)
		}
		t, err := parseURI(loc.URI, allowHTTP)
		t.sha256 = loc.SHA256
		return t, err
	}
	key := loc.Key
	if key == "" {
		key = DefaultKey
	}
	cfg, err := configs.Get(key)
	if err != nil {
		return target{}, err
	}
	p := strings.TrimPrefix(loc.Path, "/")
	if err := checkKey(p); err != nil {
		return target{}, fmt.Errorf("%w: path %q: %v", ErrBadURI, loc.Path, err)
	}
	t := target{cfg: cfg, cfgKey: key, key: p, sha256: loc.SHA256}
	switch cfg.Type {
	case "s3", "gcs":
		t.scheme = map[string]string{"s3": "s3", "gcs": "gs"}[cfg.Type]
		t.bucket = loc.Bucket
		if t.bucket == "" {
			t.bucket = cfg.bucket()
		}
		if t.bucket == "" {
			return target{}, fmt.Errorf("%w: storage key %q names no bucket and the model gives none", ErrBadURI, key)
		}
	case "https", "http":
		if cfg.Type == "http" && !allowHTTP {
			return target{}, fmt.Errorf("%w: storage key %q is plain http, which this worker refuses (--allow-http)", ErrBadURI, key)
		}
		base, err := url.Parse(cfg.EndpointURL)
		if err != nil || base.Host == "" {
			return target{}, fmt.Errorf("%w: storage key %q: endpoint_url %q is not an absolute URL", ErrBadURI, key, cfg.EndpointURL)
		}
		t.scheme, t.url = cfg.Type, base.JoinPath(p)
	}
	return t, nil
}

// parseURI parses a storage URI with no storage-config entry: s3:// and gs:// take their
// settings from the environment, https:// the system's CAs plus --storage-ca-file.
func parseURI(raw string, allowHTTP bool) (target, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return target{}, fmt.Errorf("%w: %q: %v", ErrBadURI, raw, err)
	}
	bad := func(why string) (target, error) {
		return target{}, fmt.Errorf("%w: %q: %s", ErrBadURI, raw, why)
	}
	if u.Fragment != "" || u.User != nil {
		return bad("fragments and user info are not allowed")
	}
	switch u.Scheme {
	case "file":
		return target{scheme: "file", key: raw}, nil // checked against the roots by the file store
	case "s3", "gs":
		if u.RawQuery != "" {
			return bad("query not allowed")
		}
		key := strings.TrimPrefix(u.Path, "/")
		if u.Host == "" {
			return bad("no bucket")
		}
		if err := checkKey(key); err != nil {
			return bad(err.Error())
		}
		return target{scheme: u.Scheme, bucket: u.Host, key: key}, nil
	case "http":
		if !allowHTTP {
			return bad("plain http is refused by this worker (--allow-http)")
		}
		fallthrough
	case "https":
		if u.Host == "" {
			return bad("no host")
		}
		if err := checkKey(strings.TrimPrefix(u.Path, "/")); err != nil {
			return bad(err.Error())
		}
		return target{scheme: u.Scheme, url: u}, nil
	case "":
		return bad("no scheme (file://, s3://, gs://, https://)")
	}
	return bad(fmt.Sprintf("scheme %q not supported (file://, s3://, gs://, https://)", u.Scheme))
}

// checkKey refuses object keys that would land outside a model's directory once mapped to
// files: "..", empty segments in the middle, NUL and backslashes.
func checkKey(key string) error {
	if strings.ContainsAny(key, "\x00\\") {
		return fmt.Errorf("NUL and backslash are not allowed")
	}
	if strings.HasPrefix(key, "/") {
		return fmt.Errorf("empty path segments are not allowed")
	}
	for _, seg := range strings.Split(strings.TrimSuffix(key, "/"), "/") {
		if seg == ".." || seg == "." {
			return fmt.Errorf("%q segments are not allowed", seg)
		}
	}
	if key != "" && path.Clean("/"+key) != "/"+strings.TrimSuffix(key, "/") {
		return fmt.Errorf("empty path segments are not allowed")
	}
	return nil
}
