// Command coredns is the site's cluster DNS: CoreDNS with only the plugins a cluster's DNS needs
// (the stock build links every cloud provider's DNS client, minutes more to build on 2 cores).
// Directive order stays CoreDNS's own (core/dnsserver/zdirectives.go); a Corefile naming a plugin
// that is not imported here fails at start.
package main

import (
	"github.com/coredns/coredns/coremain"

	// The plugins of the Corefile in infra/dns.py, registered by import.
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	coremain.Run()
}
