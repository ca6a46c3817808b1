"""pyprobe: the same job written in Python, run as /usr/bin/python3 PROBE WORKDIR.

Covers os.listdir/os.walk/os.stat/os.rename/os.replace, shutil.copy,
tempfile.mkdtemp, json round trip, socket.gethostname, os.getcwd,
subprocess.run of /bin/sh, and pid relations with children through pipes.
Prints "name: value" lines; never raw pids, inodes, devices or times.
"""

import errno
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile


def say(name, value):
    print(f"{name}: {value}", flush=True)


def yn(cond):
    return "yes" if cond else "no"


def err_of(fn):
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok"


def main():
    workdir = sys.argv[1]
    os.umask(0o022)
    say("cwd", os.getcwd())
    say("cwd_is_workdir", yn(os.getcwd() == workdir))
    say("listdir.empty", sorted(os.listdir(".")))

    # files and directories
    os.makedirs("tree/sub/deeper")
    for rel, text in [("tree/a.txt", "A\n"), ("tree/sub/b.txt", "BB\n"),
                      ("tree/sub/deeper/c.txt", "CCC\n"), ("top.txt", "top\n")]:
        with open(rel, "w") as fh:
            fh.write(text)
    say("listdir.workdir", sorted(os.listdir(workdir)))
    say("listdir.tree", sorted(os.listdir("tree")))
    walked = []
    for root, dirs, files in os.walk("tree"):
        dirs.sort()
        walked.append(f"{root}:{','.join(sorted(files))}")
    say("walk", " ".join(walked))
    with os.scandir("tree") as it:
        say("scandir", " ".join(sorted(
            f"{e.name}/{'dir' if e.is_dir() else 'file'}" for e in it)))

    st = os.stat("tree/sub/b.txt")
    say("stat.b", f"size={st.st_size} mode={stat.filemode(st.st_mode)} nlink={st.st_nlink}")
    os.utime("tree/sub/b.txt", ns=(1_000_000_000_000_000_123, 1_111_111_111_000_000_456))
    st = os.stat("tree/sub/b.txt")
    say("stat.utime_ns", f"atime={st.st_atime_ns} mtime={st.st_mtime_ns}")
    say("stat.missing", err_of(lambda: os.stat("missing")))
    os.symlink("tree/a.txt", "link")
    say("lstat.link", stat.filemode(os.lstat("link").st_mode)[0])
    say("readlink", os.readlink("link"))
    say("realpath_rel", os.path.relpath(os.path.realpath("link"), workdir))

    # rename / replace
    os.rename("top.txt", "renamed.txt")
    say("rename", f"old={yn(os.path.exists('top.txt'))} new={yn(os.path.exists('renamed.txt'))}")
    with open("other.txt", "w") as fh:
        fh.write("other\n")
    os.replace("other.txt", "renamed.txt")
    with open("renamed.txt") as fh:
        say("replace.content", fh.read().strip())
    say("rename.dir_over_file", err_of(lambda: os.rename("tree", "renamed.txt")))

    # shutil
    shutil.copy("tree/sub/deeper/c.txt", "copied.txt")
    with open("copied.txt") as fh:
        say("shutil.copy", fh.read().strip())
    say("shutil.copy_mode", oct(os.stat("copied.txt").st_mode & 0o777))
    shutil.copytree("tree", "tree2")
    say("shutil.copytree", sorted(os.listdir("tree2/sub")))
    shutil.rmtree("tree2")
    say("shutil.rmtree", yn(not os.path.exists("tree2")))
    shutil.move("copied.txt", "tree/moved.txt")
    say("shutil.move", sorted(os.listdir("tree")))

    # tempfile inside WORKDIR: print only relative facts
    tmpdir = tempfile.mkdtemp(dir=workdir, prefix="tmp-")
    say("mkdtemp.under_workdir", yn(os.path.dirname(tmpdir) == workdir))
    say("mkdtemp.isdir", yn(os.path.isdir(tmpdir)))
    say("mkdtemp.mode", oct(os.stat(tmpdir).st_mode & 0o777))
    fd, tmpfile = tempfile.mkstemp(dir=tmpdir, suffix=".json")
    payload = {"name": "probe", "values": [1, 2.5, None, True], "nested": {"k": "v"}}
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, sort_keys=True)
    with open(tmpfile) as fh:
        loaded = json.load(fh)
    say("json.roundtrip", yn(loaded == payload))
    say("json.text", json.dumps(loaded, sort_keys=True))
    say("mkstemp.mode", oct(os.stat(tmpfile).st_mode & 0o777))
    with tempfile.TemporaryDirectory(dir=workdir) as td:
        say("TemporaryDirectory.exists", yn(os.path.isdir(td)))
    say("TemporaryDirectory.removed", yn(not os.path.exists(td)))
    shutil.rmtree(tmpdir)
    say("mkdtemp.removed", yn(not os.path.exists(tmpdir)))

    # identity
    say("socket.gethostname", socket.gethostname())
    say("os.uname.nodename", os.uname().nodename)
    say("platform_node_matches", yn(socket.gethostname() == os.uname().nodename))
    say("getuid", os.getuid())
    say("getgid", os.getgid())

    # subprocess
    proc = subprocess.run(["/bin/sh", "-c", "echo hi > f; cat f"],
                          capture_output=True, text=True)
    say("subprocess.stdout", proc.stdout.strip())
    say("subprocess.returncode", proc.returncode)
    with open("f") as fh:
        say("subprocess.file_in_cwd", fh.read().strip())
    proc = subprocess.run(["/bin/sh", "-c", "exit 7"])
    say("subprocess.exit7", proc.returncode)
    proc = subprocess.run(["/bin/sh", "-c", "pwd"], capture_output=True, text=True,
                          cwd="tree")
    say("subprocess.cwd_arg", os.path.relpath(proc.stdout.strip(), workdir))

    # pid relations, checked through pipes
    me = os.getpid()
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getppid())"],
                          capture_output=True, text=True)
    say("subprocess.child_getppid==getpid", yn(int(proc.stdout) == me))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, f"{os.getpid()} {os.getppid()}".encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        child_pid, child_ppid = map(int, fh.read().split())
    _, status = os.waitpid(pid, 0)
    say("fork.ret==child_getpid", yn(child_pid == pid))
    say("fork.child_getppid==getpid", yn(child_ppid == me))
    say("fork.exit", os.waitstatus_to_exitcode(status))
    popen = subprocess.Popen(["/bin/sh", "-c", "echo $$; exec sleep 5"],
                             stdout=subprocess.PIPE, text=True)
    reported = int(popen.stdout.readline())
    say("popen.pid==child_shell_pid", yn(reported == popen.pid))
    popen.terminate()
    say("popen.terminated", popen.wait())
    popen.stdout.close()

    say("final.listdir", sorted(os.listdir(".")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
