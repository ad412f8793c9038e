module github.com/dqlite-go/dqlite

go 1.26.0

require pgregory.net/rapid v1.3.0

require (
	github.com/anishathalye/porcupine v1.3.1
	github.com/mattn/go-sqlite3 v1.14.53
	golang.org/x/term v0.47.0
)

require golang.org/x/sys v0.49.0 // indirect
