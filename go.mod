module github.com/dqlite-go/dqlite

go 1.26
