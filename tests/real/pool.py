"""For tests/test_real_programs.py: a ThreadPoolExecutor whose tasks write and read files and
run child processes at the same time. Prints only what is the same natively and under qrun."""

import concurrent.futures
import hashlib
import os
import socket
import subprocess
import sys


def task(i: int) -> str:
    name = f"out/t{i:02}.txt"
    with open(name, "w") as f:
        f.write("".join(f"task {i} line {j}\n" for j in range(400 + i)))
    with open(name) as f:
        digest = hashlib.sha256(f.read().encode()).hexdigest()[:16]
    script = f'wc -l < {name}; echo "child {i}" > out/c{i:02}.txt; exit $(({i} % 4))'
    sh = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60)
    code = ("import os, socket; "
            "print(os.getcwd(), socket.gethostname(), os.getppid() == int(os.environ['PARENT']))")
    py = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                        env={**os.environ, "PARENT": str(os.getpid())})
    os.replace(f"out/c{i:02}.txt", f"out/child{i:02}.txt")
    return f"{i} {digest} sh={sh.stdout.strip()}/{sh.returncode} py={py.stdout.strip()}/{py.returncode}"


def main() -> int:
    print("cwd", os.getcwd(), "host", socket.gethostname())
    os.mkdir("out")
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as ex:
        for line in ex.map(task, range(16)):
            print(line)
    print("out", " ".join(f"{n}:{os.stat('out/' + n).st_size}" for n in sorted(os.listdir("out"))))
    return 9


if __name__ == "__main__":
    sys.exit(main())
