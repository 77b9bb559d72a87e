package fedclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/shoal-chat/shoal/eventgraph"
)

// Response is a 2xx answer whose body the caller reads itself: media, which
// may be far larger than what Do buffers, and whose headers (the multipart
// boundary, Content-Type, Content-Disposition) matter.
type Response struct {
	Header http.Header
	// Body is at most the request's Limit bytes (more reads as an error);
	// closing it ends the request.
	Body io.ReadCloser
}

// Stream sends req and hands back the response's headers and body for the
// caller to read (Do reads it). req.Timeout (or the client's) bounds the
// whole exchange, body included. Non-2xx answers are *HTTPError.
func (c *Client) Stream(ctx context.Context, req Request) (*Response, error) {
	if _, _, err := eventgraph.ParseServerName(req.Destination); err != nil {
		return nil, fmt.Errorf("fedclient: destination: %w", err)
	}
	if !strings.HasPrefix(req.URI, "/_matrix/") {
		return nil, fmt.Errorf("fedclient: URI %q does not start with /_matrix/", req.URI)
	}
	limit := limitOf(req)
	timeout := c.cfg.Timeout
	if req.Timeout > 0 {
		timeout = req.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	ok := false
	defer func() {
		if !ok {
			cancel()
		}
	}()
	host, err := c.hostHeader(ctx, req.Destination)
	if err != nil {
		return nil, err
	}
	ru, err := url.ParseRequestURI(req.URI)
	if err != nil {
		return nil, fmt.Errorf("fedclient: URI %q: %w", req.URI, err)
	}
	ru.Scheme, ru.Host = "https", urlHost(req.Destination)
	var body io.Reader
	if req.Content != nil {
		body = bytes.NewReader(req.Content)
	}
	hr, err := http.NewRequestWithContext(ctx, req.Method, ru.String(), body)
	if err != nil {
		return nil, fmt.Errorf("fedclient: build request: %w", err)
	}
	hr.Host = host
	if req.Content != nil {
		hr.Header.Set("Content-Type", "application/json")
	}
	if req.Signed {
		if c.cfg.Identity == nil {
			return nil, errors.New("fedclient: signed request without a server identity")
		}
		// Sign the request target exactly as it goes on the wire.
		auth, err := SignRequest(c.cfg.Identity, req.Method, hr.URL.RequestURI(), req.Destination, req.Content)
		if err != nil {
			return nil, err
		}
		hr.Header.Set("Authorization", auth)
	}
	resp, err := c.http.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("fedclient: %s %s: %w", req.Method, req.Destination, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		he := &HTTPError{Status: resp.StatusCode}
		var e struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil {
			he.ErrCode, he.Message = e.ErrCode, e.Error
		}
		return nil, he
	}
	ok = true
	return &Response{Header: resp.Header, Body: &limitedBody{r: resp.Body, left: limit, cancel: cancel,
		dest: req.Destination}}, nil
}

// limitOf is the response size bound of req.
func limitOf(req Request) int64 {
	if req.Limit > 0 {
		return req.Limit
	}
	return MaxResponseBytes
}

// ErrTooLarge is what a Stream body reads once the peer sent more than
// the request's Limit.
var ErrTooLarge = errors.New("fedclient: response exceeds the limit")

// limitedBody reads at most left bytes and cancels the request when closed.
type limitedBody struct {
	r      io.ReadCloser
	left   int64
	cancel context.CancelFunc
	dest   string
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly the limit from a longer one.
		var one [1]byte
		n, err := b.r.Read(one[:])
		if n > 0 {
			return 0, fmt.Errorf("%w (%s)", ErrTooLarge, b.dest)
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error {
	err := b.r.Close()
	b.cancel()
	return err
}
