package server

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"time"
)

// http2Preface opens every HTTP/2 connection with prior knowledge (h2c), as gRPC clients
// and Envoy's HTTP/2 upstreams send it.
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// Split shares one port between two servers by the first bytes of each connection:
// connections that open with the HTTP/2 preface go to H2 (the native gRPC server, several
// times faster than gRPC over net/http's handler), all others to HTTP1 (REST).
type Split struct {
	ln    net.Listener
	H2    *chanListener
	HTTP1 *chanListener
	// sniffTimeout bounds the wait for a connection's first bytes.
	sniffTimeout time.Duration
}

// NewSplit wraps ln; call Run to start accepting.
func NewSplit(ln net.Listener) *Split {
	return &Split{ln: ln, H2: newChanListener(ln.Addr()), HTTP1: newChanListener(ln.Addr()), sniffTimeout: 10 * time.Second}
}

// Run accepts connections until ctx ends or the listener fails. Each connection is sniffed
// on a goroutine of its own, so a slow client blocks no other. The halves are closed by
// the servers that serve them (Shutdown, GracefulStop), so that each stops in its own order.
func (s *Split) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.route(ctx, conn)
		}()
	}
}

func (s *Split) route(ctx context.Context, conn net.Conn) {
	conn.SetReadDeadline(time.Now().Add(s.sniffTimeout))
	buf := make([]byte, len(http2Preface))
	n := 0
	for n < len(buf) {
		m, err := conn.Read(buf[n:])
		n += m
		if !bytes.Equal(buf[:n], http2Preface[:n]) {
			break
		}
		if err != nil {
			conn.Close()
			return
		}
	}
	conn.SetReadDeadline(time.Time{})
	pc := &prefixConn{Conn: conn, prefix: buf[:n]}
	target := s.HTTP1
	if bytes.Equal(buf[:n], http2Preface) {
		target = s.H2
	}
	select {
	case target.conns <- pc:
	case <-target.done:
		conn.Close()
	case <-ctx.Done():
		conn.Close()
	}
}

// prefixConn replays the sniffed bytes before reading on.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// chanListener is a net.Listener fed by Split.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// Accept waits for the next connection routed here.
func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops Accept; connections already accepted are the server's to close.
func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr is the shared listener's address.
func (l *chanListener) Addr() net.Addr { return l.addr }
