package gateway

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPreviewAddressPolicy(t *testing.T) {
	blocked := []string{
		"127.0.0.1", "127.1.2.3", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "0.0.0.0",
		"100.64.0.1", "224.0.0.1", "239.255.255.250", "255.255.255.255", "198.18.0.1", "240.0.0.1",
		"::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
		"64:ff9b::a00:1", "2002:a00:1::1", "2001:db8::1",
	}
	for _, a := range blocked {
		ap := netip.AddrPortFrom(netip.MustParseAddr(a), 80).String()
		if err := previewDialControl(nil)("tcp", ap, nil); !errors.Is(err, errPreviewBlocked) {
			t.Errorf("%s: dial allowed", a)
		}
	}
	for _, a := range []string{"1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"} {
		ap := netip.AddrPortFrom(netip.MustParseAddr(a), 443).String()
		if err := previewDialControl(nil)("tcp", ap, nil); err != nil {
			t.Errorf("%s: %v", a, err)
		}
	}
	allow := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	for _, a := range []string{"127.0.0.1", "fd12::1", "::ffff:127.0.0.1"} {
		ap := netip.AddrPortFrom(netip.MustParseAddr(a), 80).String()
		if err := previewDialControl(allow)("tcp", ap, nil); err != nil {
			t.Errorf("allowlisted %s: %v", a, err)
		}
	}
	if err := previewDialControl(allow)("tcp", "10.0.0.1:80", nil); err == nil {
		t.Error("10.0.0.1 allowed by a list without it")
	}
}

func TestParseOpenGraph(t *testing.T) {
	og := parseOpenGraph([]byte(`<html><head><title>T</title><meta name="og:site_name" content="S">` +
		`<meta property="og:title" content="first"><meta property="og:title" content="second"></head></html>`))
	if og["og:title"] != "first" || og["og:site_name"] != "S" {
		t.Errorf("%v", og)
	}
	if og := parseOpenGraph([]byte("\x00\xff<<<>")); len(og) != 0 {
		t.Errorf("garbage: %v", og)
	}
}
