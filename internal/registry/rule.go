package registry

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"time"

	"github.com/modelmesh/mesh/internal/wire"
)

// maxRegexProgram is Envoy's default limit on an RE2 program's size
// (re2.max_program_size.error_level); a bigger regex makes Envoy reject the whole route
// configuration.
const maxRegexProgram = 100

// maxRetries bounds Retries.Attempts.
const maxRetries = 10

// Lookup finds a request header by lower-case name, and tells whether it was sent at all: an
// empty value is not a missing header, to Envoy's matchers or to the mesh's.
type Lookup func(name string) (value string, ok bool)

// MapLookup looks headers up in a map keyed by lower-case name.
func MapLookup(h map[string]string) Lookup {
	return func(name string) (string, bool) {
		v, ok := h[name]
		return v, ok
	}
}

// Matches reports whether a request matches the rule the way the gateway's routes for it
// do: every Match header is present with exactly its value and, when When is not empty, at
// least one condition holds. path is the request path without its query string. A header
// that is missing matches nothing; one that is present and empty is matched as "" (a regex
// such as ".*" holds), as in Envoy. Safe for concurrent use; regexes are compiled on each
// call.
func (r Rule) Matches(path string, header Lookup) bool {
	for k, want := range r.Match {
		if v, ok := header(k); !ok || v != want {
			return false
		}
	}
	if len(r.When) == 0 {
		return true
	}
	for _, c := range r.When {
		if c.matches(path, header) {
			return true
		}
	}
	return false
}

func (c Condition) matches(path string, header Lookup) bool {
	if c.URI != nil && !c.URI.matches(path) {
		return false
	}
	for name, sm := range c.Headers {
		if v, ok := header(name); !ok || !sm.matches(v) {
			return false
		}
	}
	return true
}

// matches applies the one pattern that is set: exact, prefix, or a regex that must match
// all of v.
func (s StringMatch) matches(v string) bool {
	switch {
	case s.Exact != "":
		return v == s.Exact
	case s.Prefix != "":
		return strings.HasPrefix(v, s.Prefix)
	case s.Regex != "":
		re, err := regexp.Compile(`^(?:` + s.Regex + `)$`)
		return err == nil && re.MatchString(v)
	}
	return false
}

// problems lists what is wrong with a rule, given the model's versions.
func (r Rule) problems(versions map[string]bool) []error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	var total uint64
	if len(r.Split) == 0 {
		fail("empty split")
	}
	for _, w := range r.Split {
		if !versions[w.Version] {
			fail("version %q is not registered", w.Version)
		}
		total += uint64(w.Weight)
	}
	if len(r.Split) > 0 && total == 0 {
		fail("weights add up to 0")
	}
	if total > math.MaxUint32 {
		fail("weights add up to %d, more than the %d Envoy accepts in one route", total, uint32(math.MaxUint32))
	}
	for _, h := range slices.Sorted(maps.Keys(r.Match)) {
		if err := matchedHeader(h); err != nil {
			fail("match: %v", err)
		}
	}
	// NaN fails every comparison, so ranges are written as what must hold.
	if r.Mirror != nil && (!versions[r.Mirror.Version] || !(r.Mirror.Percent > 0 && r.Mirror.Percent <= 100)) {
		fail("mirror needs a registered version and a percent in (0, 100]")
	}
	for i, c := range r.When {
		for _, h := range slices.Sorted(maps.Keys(c.Headers)) {
			if err := matchedHeader(h); err != nil {
				fail("when[%d]: %v", i, err)
			}
			if err := c.Headers[h].check(false); err != nil {
				fail("when[%d]: header %q: %v", i, h, err)
			}
		}
		if c.URI != nil {
			if err := c.URI.check(true); err != nil {
				fail("when[%d]: uri: %v", i, err)
			}
		}
	}
	if r.Timeout != "" {
		if err := duration(r.Timeout); err != nil {
			fail("timeout: %v", err)
		}
	}
	if rt := r.Retries; rt != nil {
		if rt.Attempts > maxRetries {
			fail("retries: %d attempts, at most %d", rt.Attempts, maxRetries)
		}
		if rt.PerTryTimeout != "" {
			if err := duration(rt.PerTryTimeout); err != nil {
				fail("retries: perTryTimeout: %v", err)
			}
		}
		if rt.RetryOn != "" {
			for _, cond := range strings.Split(rt.RetryOn, ",") {
				if !retryCondition(strings.TrimSpace(cond)) {
					fail("retries: retryOn %q is not one of Envoy's retry conditions", cond)
				}
			}
		}
	}
	if f := r.Fault; f != nil {
		if !(f.DelayPercent >= 0 && f.DelayPercent <= 100) || !(f.AbortPercent >= 0 && f.AbortPercent <= 100) {
			fail("fault: percents must be within [0, 100]")
		}
		switch {
		case f.Delay != "":
			if err := duration(f.Delay); err != nil {
				fail("fault: delay: %v", err)
			}
		case f.DelayPercent > 0:
			fail("fault: delayPercent without a delay")
		}
		if (f.AbortStatus != 0 || f.AbortPercent > 0) && (f.AbortStatus < 200 || f.AbortStatus > 599) {
			fail("fault: abortStatus %d is not within 200..599", f.AbortStatus)
		}
		if f.Delay == "" && f.AbortStatus == 0 {
			fail("fault: neither a delay nor an abort")
		}
	}
	for _, ops := range []struct {
		name string
		ops  *HeaderOps
	}{{"requestHeaders", r.RequestHeaders}, {"responseHeaders", r.ResponseHeaders}} {
		for _, err := range ops.ops.problems() {
			fail("%s: %v", ops.name, err)
		}
	}
	return errs
}

// check validates a StringMatch; a URI's exact or prefix value is a path.
func (s StringMatch) check(uri bool) error {
	set := 0
	for _, v := range []string{s.Exact, s.Prefix, s.Regex} {
		if v != "" {
			set++
		}
	}
	switch {
	case set != 1:
		return errors.New("set exactly one of exact, prefix and regex")
	case s.Regex != "":
		return checkRegex(s.Regex)
	case uri && !strings.HasPrefix(s.Exact+s.Prefix, "/"):
		return fmt.Errorf("%q does not start with /", s.Exact+s.Prefix)
	}
	return nil
}

// checkRegex compiles re and estimates the size of the program RE2 makes of it, which Go
// does not report: RE2 spends an instruction per byte range where Go has one per character
// class, and more on "any character but newline". The estimate errs on the large side.
func checkRegex(re string) error {
	parsed, err := syntax.Parse(re, syntax.Perl)
	if err != nil {
		return fmt.Errorf("regex %q: %v", re, err)
	}
	prog, err := syntax.Compile(parsed.Simplify())
	if err != nil {
		return fmt.Errorf("regex %q: %v", re, err)
	}
	size := 0
	for _, in := range prog.Inst {
		switch {
		case in.Op == syntax.InstRune && len(in.Rune) > 2:
			size += len(in.Rune) / 2
		case in.Op == syntax.InstRuneAnyNotNL:
			size += 2
		default:
			size++
		}
	}
	if size > maxRegexProgram {
		return fmt.Errorf("regex %q is too complex for the gateway (RE2 program size about %d, Envoy's limit %d)", re, size, maxRegexProgram)
	}
	return nil
}

// problems lists what is wrong with header operations (nil is none).
func (h *HeaderOps) problems() []error {
	if h == nil {
		return nil
	}
	var errs []error
	for _, kv := range []struct {
		op     string
		values map[string]string
	}{{"set", h.Set}, {"add", h.Add}} {
		for _, name := range slices.Sorted(maps.Keys(kv.values)) {
			if err := changeableHeader(name); err != nil {
				errs = append(errs, fmt.Errorf("%s: %v", kv.op, err))
			}
			if strings.ContainsAny(kv.values[name], "\x00\r\n") {
				errs = append(errs, fmt.Errorf("%s: header %q: value holds NUL, CR or LF", kv.op, name))
			}
		}
	}
	for _, name := range h.Remove {
		if err := changeableHeader(name); err != nil {
			errs = append(errs, fmt.Errorf("remove: %v", err))
		}
	}
	return errs
}

// changeableHeader refuses the headers the mesh routes by, pseudo-headers and host, which
// Envoy does not let routes change.
func changeableHeader(name string) error {
	if err := headerName(name, false); err != nil {
		return err
	}
	switch name {
	case wire.HeaderModel, wire.HeaderVersion, wire.HeaderDestination, "host":
		return fmt.Errorf("header %q belongs to the mesh or to Envoy and may not be changed", name)
	}
	return nil
}

// matchedHeader accepts a header a rule may match on: a header name or pseudo-header, but
// none of the internal headers the gateway strips from every client request (a rule on
// one could never match a request the filter saw, and would let a client steer one it
// did not).
func matchedHeader(name string) error {
	if wire.IsInternalHeader(name) {
		return fmt.Errorf("header %q is internal to the mesh: the gateway strips it from client requests", name)
	}
	return headerName(name, true)
}

// headerName accepts a lower-case HTTP header name (an RFC 9110 token), and a pseudo-header
// (":authority") when pseudo is set.
func headerName(name string, pseudo bool) error {
	token := name
	if pseudo {
		token = strings.TrimPrefix(name, ":")
	}
	if token == "" {
		return fmt.Errorf("header name %q must be lower-case and not empty", name)
	}
	for _, c := range []byte(token) {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return fmt.Errorf("header name %q must be lower-case and not empty, of letters, digits and !#$%%&'*+-.^_`|~", name)
		}
	}
	return nil
}

// duration accepts a Go duration of at least a millisecond: Envoy counts timeouts and
// delays in whole milliseconds, and takes 0 for "none".
func duration(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if d < time.Millisecond {
		return fmt.Errorf("%s is below 1ms", s)
	}
	return nil
}

// retryCondition reports whether c is one of Envoy's x-envoy-retry-on or
// x-envoy-retry-grpc-on conditions.
func retryCondition(c string) bool {
	switch c {
	case "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
		"retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers", "http3-post-connect-failure",
		"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable":
		return true
	}
	return false
}
