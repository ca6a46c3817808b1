// A static Go program for tests/test_real_programs.py: goroutines writing and reading files
// concurrently, child processes (a shell and itself), and the identity a job sees. It prints
// only what is the same natively and under qrun: no pids, inodes or times.
package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

func must(err error) {
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
}

// child runs as `prog child PARENT_PID NAME`: it checks its parent pid and leaves a file.
func child() {
	ok := strconv.Itoa(os.Getppid()) == os.Args[2]
	wd, err := os.Getwd()
	must(err)
	host, err := os.Hostname()
	must(err)
	must(os.WriteFile(filepath.Join("gout", "child-"+os.Args[3]), []byte(wd+"\n"+host+"\n"), 0o640))
	fmt.Printf("child %s ppid-ok=%v cwd=%s host=%s\n", os.Args[3], ok, wd, host)
	os.Exit(5)
}

func worker(i int) string {
	name := filepath.Join("gout", fmt.Sprintf("g%d.txt", i))
	var b strings.Builder
	for j := 0; j < 3000; j++ {
		fmt.Fprintf(&b, "goroutine %d line %d\n", i, j)
	}
	must(os.WriteFile(name, []byte(b.String()), 0o644))
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY, 0)
	must(err)
	_, err = f.WriteString(fmt.Sprintf("end of %d\n", i))
	must(err)
	must(f.Close())
	data, err := os.ReadFile(name)
	must(err)
	st, err := os.Stat(name)
	must(err)
	tmp := name + ".tmp"
	must(os.WriteFile(tmp, data[:len(data)/2], 0o600))
	must(os.Rename(tmp, filepath.Join("gout", fmt.Sprintf("half%d.txt", i))))
	return fmt.Sprintf("g%d size=%d stat=%d mode=%v sha=%x", i, len(data), st.Size(), st.Mode(),
		sha256.Sum256(data))
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		child()
	}
	host, err := os.Hostname()
	must(err)
	wd, err := os.Getwd()
	must(err)
	fmt.Println("host", host)
	fmt.Println("cwd", wd)
	must(os.Mkdir("gout", 0o755))

	var wg sync.WaitGroup
	lines := make([]string, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			lines[i] = worker(i)
		}(i)
	}
	wg.Wait()
	for _, l := range lines {
		fmt.Println(l)
	}

	// Children started concurrently from several goroutines: shells and this program itself.
	pid := strconv.Itoa(os.Getpid())
	outs := make([]string, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var cmd *exec.Cmd
			if i%2 == 0 {
				cmd = exec.Command("/bin/sh", "-c",
					`test "$PPID" = "$1" && echo ppid-ok; pwd; wc -l < gout/g$2.txt; exit $2`, "sh", pid,
					strconv.Itoa(i))
			} else {
				cmd = exec.Command(os.Args[0], "child", pid, strconv.Itoa(i))
			}
			out, err := cmd.Output()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				code = -1
				out = []byte(err.Error())
			}
			outs[i] = fmt.Sprintf("run %d exit=%d out=%q", i, code, out)
		}(i)
	}
	wg.Wait()
	for _, o := range outs {
		fmt.Println(o)
	}

	entries, err := os.ReadDir("gout")
	must(err)
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		info, err := e.Info()
		must(err)
		names = append(names, fmt.Sprintf("%s:%d:%v", e.Name(), info.Size(), info.Mode()))
	}
	sort.Strings(names)
	fmt.Println("gout", strings.Join(names, " "))
	os.Exit(3)
}
