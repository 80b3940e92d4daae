// Command registry is the site registry (CNCF distribution) with filesystem storage only: the stock
// build links every cloud's storage driver, minutes more to build on 2 cores and nothing a site with
// its own disks uses.
package main

import (
	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	// Both of its commands exit non-zero on failure themselves.
	_ = registry.RootCmd.Execute()
}
