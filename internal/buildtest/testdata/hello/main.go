// Command hello is a main package for buildtest's own test.
package main

import "fmt"

func main() { fmt.Println("hello") }
