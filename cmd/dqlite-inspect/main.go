// Command dqlite-inspect prints and verifies a node's data directory:
// segments (index and term ranges, entry counts, sizes), term and vote, and
// snapshots. It verifies every checksum and exits with status 1 when it finds
// corruption, naming the file and offset.
//
//	dqlite-inspect DIR
//	dqlite-inspect -repair DIR
//
// With -repair it cuts the log after the last entry that verifies and prints
// exactly what it dropped. Snapshots and metadata are never modified.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/dqlite-go/dqlite/internal/inspectcmd"
)

func main() {
	repair := flag.Bool("repair", false, "truncate the log after the last good entry")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: dqlite-inspect [-repair] DIR")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	os.Exit(inspectcmd.Run(os.Stdout, flag.Arg(0), *repair))
}
