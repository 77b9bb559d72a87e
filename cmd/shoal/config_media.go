package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-chat/shoal/gateway"
)

// mediaSettings are the content repository's settings (see
// gateway.MediaConfig for their defaults).
func mediaSettings() []setting {
	bytes := func(f func(c *Config) *int64) func(*Config, string) error {
		return func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("must be an integer, not %q", v)
			}
			*f(c) = n
			return nil
		}
	}
	return []setting{
		{name: "media-max-upload-bytes", usage: "largest media upload (default 50 MiB)", set: bytes(func(c *Config) *int64 { return &c.MediaMaxUploadBytes })},
		{name: "media-quota-bytes", usage: "media bytes each user may store (default 4 GiB; negative: no quota)", set: bytes(func(c *Config) *int64 { return &c.MediaQuotaBytes })},
		{name: "media-unauthenticated-until", usage: "RFC 3339 instant: media created before it stays on the deprecated unauthenticated download endpoints (default: none does)", set: func(c *Config, v string) error {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return fmt.Errorf("must be an RFC 3339 time, not %q", v)
			}
			c.MediaUnauthenticatedUntil = t
			return nil
		}},
		{name: "url-preview-allow-networks", usage: "non-public address ranges URL previews may fetch from, comma-separated CIDRs", set: func(c *Config, v string) error {
			c.URLPreviewAllowNetworks = nil
			for _, s := range strings.Split(v, ",") {
				if s = strings.TrimSpace(s); s != "" {
					c.URLPreviewAllowNetworks = append(c.URLPreviewAllowNetworks, s)
				}
			}
			_, err := parsePrefixes(c.URLPreviewAllowNetworks)
			return err
		}},
	}
}

func parsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("url_preview_allow_networks: %q is not a CIDR range", s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// media is the gateway's media configuration.
func (c Config) media() gateway.MediaConfig {
	allow, _ := parsePrefixes(c.URLPreviewAllowNetworks) // checked by validateMedia
	return gateway.MediaConfig{
		MaxUploadBytes:       c.MediaMaxUploadBytes,
		QuotaBytes:           c.MediaQuotaBytes,
		UnauthenticatedUntil: c.MediaUnauthenticatedUntil,
		Preview:              gateway.PreviewConfig{AllowNetworks: allow},
	}
}

func (c Config) validateMedia() error {
	if c.MediaMaxUploadBytes < 0 {
		return fmt.Errorf("media_max_upload_bytes must not be negative")
	}
	_, err := parsePrefixes(c.URLPreviewAllowNetworks)
	return err
}
