//go:build e2e

package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/modelmesh/mesh/internal/proctest"
)

// kubeAPI is a real Kubernetes API server (kube-apiserver on etcd, both built by set-up from
// their Go modules), started as controller-runtime's envtest starts one: no nodes, no
// controllers, RBAC on. Admin is a system:masters client; ServiceAccount tokens come from the
// TokenRequest API, signed by a key of the test's own.
type kubeAPI struct {
	etcd, apiserver *proctest.Process
	etcdArgs        []string
	apiArgs         []string
	// URL is the API server; CA the PEM of the CA that signed its serving certificate.
	URL   string
	CA    []byte
	Admin *rest.Config
	dir   string
}

// startKubeAPI starts etcd and kube-apiserver and waits until the API server is ready;
// extra are more kube-apiserver flags.
func startKubeAPI(t testing.TB, extra ...string) *kubeAPI {
	t.Helper()
	k := &kubeAPI{dir: t.TempDir()}
	ca, caKey := newCA(t)
	k.CA = pemBlock("CERTIFICATE", ca.Raw)
	writeFile(t, filepath.Join(k.dir, "ca.crt"), k.CA)
	serving, servingKey := issue(t, ca, caKey, pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth)
	writeFile(t, filepath.Join(k.dir, "apiserver.crt"), pemBlock("CERTIFICATE", serving.Raw))
	writeFile(t, filepath.Join(k.dir, "apiserver.key"), keyPEM(t, servingKey))
	admin, adminKey := issue(t, ca, caKey, pkix.Name{CommonName: "e2e-admin", Organization: []string{"system:masters"}}, x509.ExtKeyUsageClientAuth)
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	must(t, err)
	writeFile(t, filepath.Join(k.dir, "sa.key"), keyPEM(t, saKey))
	writeFile(t, filepath.Join(k.dir, "sa.pub"), pemBlock("PUBLIC KEY", saPub))

	etcdClient, etcdPeer := freePort(t), freePort(t)
	k.etcdArgs = []string{"--data-dir", filepath.Join(k.dir, "etcd"), "--name", "e2e",
		"--listen-client-urls", "http://" + etcdClient, "--advertise-client-urls", "http://" + etcdClient,
		"--listen-peer-urls", "http://" + etcdPeer, "--initial-advertise-peer-urls", "http://" + etcdPeer,
		"--initial-cluster", "e2e=http://" + etcdPeer, "--unsafe-no-fsync", "--log-level", "warn"}
	k.etcd = startProcess(t, "etcd", toolPath(t, "etcd"), k.etcdArgs, proctest.HTTPOK("http://"+etcdClient+"/health"))

	secure := freePort(t)
	host, port, _ := net.SplitHostPort(secure)
	k.URL = "https://" + secure
	k.apiArgs = []string{"--etcd-servers", "http://" + etcdClient, "--bind-address", host, "--secure-port", port,
		"--advertise-address", host, "--tls-cert-file", filepath.Join(k.dir, "apiserver.crt"),
		"--tls-private-key-file", filepath.Join(k.dir, "apiserver.key"), "--client-ca-file", filepath.Join(k.dir, "ca.crt"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(k.dir, "sa.pub"), "--service-account-signing-key-file", filepath.Join(k.dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/24", "--authorization-mode", "RBAC", "--allow-privileged",
		"--enable-priority-and-fairness=false", "--endpoint-reconciler-type", "none", "--cert-dir", filepath.Join(k.dir, "certs")}
	k.apiArgs = append(k.apiArgs, extra...)
	k.Admin = &rest.Config{Host: k.URL, TLSClientConfig: rest.TLSClientConfig{CAData: k.CA,
		CertData: pemBlock("CERTIFICATE", admin.Raw), KeyData: keyPEM(t, adminKey)}, QPS: 200, Burst: 400}
	k.start(t)
	return k
}

// start runs kube-apiserver and waits for /readyz.
func (k *kubeAPI) start(t testing.TB) {
	t.Helper()
	k.apiserver = proctest.Start(t, "kube-apiserver", toolPath(t, "kube-apiserver"), k.apiArgs...)
	k.apiserver.Await(t, 90*time.Second, k.ready)
}

// ready reports whether the API server answers /readyz with 200 to the admin.
func (k *kubeAPI) ready() bool {
	hc, err := rest.HTTPClientFor(k.Admin)
	if err != nil {
		return false
	}
	hc.Timeout = 2 * time.Second
	resp, err := hc.Get(k.URL + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// clientset is a typed client with the admin's credential.
func (k *kubeAPI) clientset(t testing.TB) *kubernetes.Clientset {
	t.Helper()
	c, err := kubernetes.NewForConfig(k.Admin)
	must(t, err)
	return c
}

// token asks the TokenRequest API for a token of ServiceAccount namespace/name, valid for
// an hour.
func (k *kubeAPI) token(t testing.TB, namespace, name string) string {
	t.Helper()
	hour := int64(3600)
	tr, err := k.clientset(t).CoreV1().ServiceAccounts(namespace).CreateToken(context.Background(), name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &hour}}, metav1.CreateOptions{})
	must(t, err)
	return tr.Status.Token
}

// asServiceAccount is a client configuration with the token of ServiceAccount
// namespace/name, and nothing else: what its Role grants.
func (k *kubeAPI) asServiceAccount(t testing.TB, namespace, name string) *rest.Config {
	t.Helper()
	return &rest.Config{Host: k.URL, BearerToken: k.token(t, namespace, name), TLSClientConfig: rest.TLSClientConfig{CAData: k.CA}}
}

// kubeconfig writes cfg (a bearer token or the admin's certificate) as a kubeconfig file for
// the mesh's binaries and returns its path.
func (k *kubeAPI) kubeconfig(t testing.TB, cfg *rest.Config) string {
	t.Helper()
	c := clientcmdapi.NewConfig()
	c.Clusters["e2e"] = &clientcmdapi.Cluster{Server: k.URL, CertificateAuthorityData: k.CA}
	c.AuthInfos["e2e"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken, ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	c.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "e2e"}
	c.CurrentContext = "e2e"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	must(t, clientcmd.WriteToFile(*c, path))
	return path
}

// toolPath is a binary set-up built into .bin (make setup).
func toolPath(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", ".bin", name))
	must(t, err)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not found at %s; run `make setup`: %v", name, p, err)
	}
	return p
}

func newCA(t testing.TB) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e kubernetes CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	cert, err := x509.ParseCertificate(der)
	must(t, err)
	return cert, key
}

// issue signs a certificate for subject, for localhost and 127.0.0.1, used for usage.
func issue(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, subject pkix.Name, usage x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	must(t, err)
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: subject, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	must(t, err)
	cert, err := x509.ParseCertificate(der)
	must(t, err)
	return cert, key
}

func keyPEM(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	return pemBlock("EC PRIVATE KEY", der)
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	must(t, os.WriteFile(path, b, 0o600))
}
