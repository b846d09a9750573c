package config_test

import (
	"strings"
	"testing"

	"github.com/nfhelper/nfhelper/config"
)

func TestECMPWarnings(t *testing.T) {
	const services = `services:
  - name: mh-ftp
    vip: 198.51.100.10:21
    scheduler: mh
    helper: ftp
    real_servers: [{address: 10.0.0.11:21}, {address: 10.0.0.12:21}]
  - name: sh-ftp
    vip: 198.51.100.11:21
    scheduler: sh
    helper: ftp
    persistence: {timeout: 5m}
    real_servers: [{address: 10.0.0.13:21}]
  - name: second-on-address
    vip: 198.51.100.10:2121
    scheduler: sh
    helper: ftp
    real_servers: [{address: 10.0.0.14:21}]
  - name: sh-port
    vip: 198.51.100.12:21
    scheduler: sh
    sh_port: true
    helper: ftp
    real_servers: [{address: 10.0.0.15:21}]
  - name: rr-ftp
    vip: 198.51.100.13:21
    helper: ftp
    persistence: {timeout: 5m}
    real_servers: [{address: 10.0.0.11:21}]
  - name: wlc-ftp
    vip: 198.51.100.14:21
    scheduler: wlc
    helper: ftp
    real_servers: [{address: 10.0.0.16:21}]
  - name: plain-rr
    vip: 198.51.100.15:80
    real_servers: [{address: 10.0.0.11:80}]
  - name: tftp
    vip: 198.51.100.16:69
    protocol: udp
    scheduler: sh
    helper: tftp
    real_servers: [{address: 10.0.0.17:69}]
`
	c, err := config.Parse([]byte(services))
	if err != nil {
		t.Fatal(err)
	}
	if w := c.ECMPWarnings(); w != nil {
		t.Errorf("without ecmp: %q", w)
	}
	c, err = config.Parse([]byte("ecmp: true\n" + services))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(c.ECMPWarnings(), "\n")
	for _, want := range []string{
		`service "second-on-address": vip address 198.51.100.10 is service "mh-ftp"'s too`,
		`service "sh-port": sh with sh_port hashes the client's port`,
		`service "rr-ftp": scheduler rr picks by its counter on each router: a data connection crossing the other router may reach another server (use mh or sh); persistence templates are per router too`,
		`service "wlc-ftp": scheduler wlc picks by its own connection counts`,
		`service "tftp": helper tftp: the server's answer`,
		`real server 10.0.0.11 is in helped services of several VIPs (198.51.100.10, 198.51.100.13)`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	for _, quiet := range []string{`"mh-ftp":`, `"sh-ftp":`, `"plain-rr"`, "10.0.0.12"} {
		if strings.Contains(got, quiet) {
			t.Errorf("%s warned about:\n%s", quiet, got)
		}
	}
}
