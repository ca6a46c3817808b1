"""The declarative syscall table and everything derived from it (no I/O, no project imports)."""
