// A tiny mmap-backed record store, as bbolt-style Go stores keep their data: the file is
// grown with ftruncate, records are written through a writable MAP_SHARED mapping and
// made durable with msync, then read back with plain reads after the mapping is gone.
package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

const pageSize = 4096

func must(err error) {
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
}

func msync(b []byte) error {
	_, _, e := syscall.Syscall(syscall.SYS_MSYNC, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), syscall.MS_SYNC)
	if e != 0 {
		return e
	}
	return nil
}

func main() {
	f, err := os.OpenFile("store.db", os.O_RDWR|os.O_CREATE, 0o644)
	must(err)
	for round := 1; round <= 3; round++ {
		size := round * 64 * pageSize
		must(f.Truncate(int64(size)))
		m, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
		must(err)
		for i := (round - 1) * 64; i < round*64; i++ {
			copy(m[i*pageSize:], fmt.Sprintf("record %d of round %d", i, round))
		}
		m[0] = byte('0' + round) // the header page changes every round
		must(msync(m))
		must(syscall.Munmap(m))
	}
	must(f.Sync())
	must(f.Close())
	data, err := os.ReadFile("store.db")
	must(err)
	fmt.Printf("size %d header %c sha256 %x\n", len(data), data[0], sha256.Sum256(data))
	fmt.Printf("%s\n", data[100*pageSize:100*pageSize+22])
}
