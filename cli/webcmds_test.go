package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/minionsdev/minions/service"
)

func TestPrintSharePublicIP(t *testing.T) {
	var b bytes.Buffer
	printShare(&b, service.WebInfo{VM: "web", URL: "https://web.example.com/", Public: true, PublicIP: "203.0.113.7"})
	if want := "web is public at https://web.example.com/\nDNS: web.example.com must resolve to 203.0.113.7 (an A record for it or for the domain's wildcard)\n"; b.String() != want {
		t.Errorf("share output:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	printShare(&b, service.WebInfo{VM: "web", URL: "https://web.example.com:8443/", Public: true, PublicIP: "2001:db8::7"})
	if !strings.Contains(b.String(), "DNS: web.example.com must resolve to 2001:db8::7 (an AAAA record") {
		t.Errorf("share output with IPv6:\n%s", b.String())
	}
	b.Reset()
	printShare(&b, service.WebInfo{VM: "web", URL: "http://web.localhost:8080/", Public: true})
	if strings.Contains(b.String(), "DNS") {
		t.Errorf("local mode mentions DNS:\n%s", b.String())
	}
}
