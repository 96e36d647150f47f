// go-reader reads a variable through envproxy.Getenv, for the end-to-end tests.
//
//	go-reader NAME          prints NAME=<value>, environ=clean|leak, then runs itself as a child
//	                        with os.Environ() plus one variable, which prints the same lines
//	                        prefixed with child.
//	go-reader -loop NAME    prints NAME=<value> every 50 ms, for 10 s
package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"time"

	"envproxy.dev/go"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "-loop" {
		for i := 0; i < 200; i++ {
			fmt.Printf("%s=%s\n", os.Args[2], envproxy.Getenv(os.Args[2]))
			time.Sleep(50 * time.Millisecond)
		}
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go-reader [-loop] NAME [child]")
		os.Exit(2)
	}
	name, prefix := os.Args[1], ""
	if len(os.Args) == 3 && os.Args[2] == "child" {
		prefix = "child."
	}
	value, ok := envproxy.LookupEnv(name)
	if !ok {
		value = "(unset)"
	}
	raw, err := os.ReadFile("/proc/self/environ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "read /proc/self/environ:", err)
		os.Exit(1)
	}
	state := "clean"
	if bytes.Contains(raw, []byte(value)) {
		state = "leak"
	}
	fmt.Printf("%s%s=%s\n%senviron=%s\n", prefix, name, value, prefix, state)
	if prefix != "" {
		return
	}
	child := exec.Command(os.Args[0], name, "child")
	child.Env = append(os.Environ(), "EXTRA=1")
	child.Stdout, child.Stderr = os.Stdout, os.Stderr
	if err := child.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
}
