"""The syscall table and the path policy held against their sources of truth.

* aarch64 numbers against the kernel's generic syscall table (asm-generic/unistd.h), as
  tests/test_table.py holds the x86_64 numbers against asm/unistd_64.h.
* The path decision the C wait loop makes on its own (native/_source.c, routes_local())
  against qrun.syscalls.paths.PathPolicy, on thousands of random paths.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from qrun.native import lib
from qrun.remote import procpaths
from qrun.remote.fastpath import policy_bytes
from qrun.syscalls.paths import PathPolicy, normalize
from qrun.syscalls.table import TABLE

GENERIC_UNISTD = Path("/usr/include/asm-generic/unistd.h")

# What arch/arm64/include/uapi/asm/unistd.h defines before it includes the generic table
# (kernels up to 6.10; later ones generate the same numbers from scripts/syscall.tbl).
# Everything else the header tests (__SYSCALL_COMPAT, __ARCH_WANT_STAT64,
# __ARCH_WANT_SYNC_FILE_RANGE2, __ARCH_NOMMU, ...) is undefined on aarch64.
AARCH64_MACROS = {
    "__BITS_PER_LONG": "64",
    "__ARCH_WANT_RENAMEAT": "",
    "__ARCH_WANT_NEW_STAT": "",
    "__ARCH_WANT_SET_GET_RLIMIT": "",
    "__ARCH_WANT_TIME32_SYSCALLS": "",
    "__ARCH_WANT_SYS_CLONE3": "",
    "__ARCH_WANT_MEMFD_SECRET": "",
}
# __NR_ names the header defines that are not syscalls.
NOT_SYSCALLS = {"syscalls", "arch_specific_syscall"}


def skip_or_fail(reason: str) -> None:
    """Skip for a developer; under CI=true a missing piece of the machine is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


# ---- a preprocessor for the generic syscall table -------------------------------------
_TOKEN = re.compile(r"\s*(?:(\d+)[uUlL]*|(\w+)|(\|\||&&|==|!=|<=|>=|[()!<>]))")


class CondExpr:
    """An #if expression: integers, macros, defined(), !, comparisons, && and ||."""

    def __init__(self, text: str, macros: dict[str, str]) -> None:
        self.macros = macros
        self.tokens: list[str] = []
        pos, text = 0, text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise ValueError(f"cannot read #if expression {text!r} at {text[pos:]!r}")
            self.tokens.append(m.group(m.lastindex or 0))
            pos = m.end()
        self.pos = 0

    def value(self) -> int:
        v = self._or()
        if self.pos != len(self.tokens):
            raise ValueError(f"trailing tokens in #if expression: {self.tokens[self.pos:]}")
        return v

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, want: str | None = None) -> str:
        tok = self._peek()
        if tok is None or (want is not None and tok != want):
            raise ValueError(f"#if expression {' '.join(self.tokens)!r}: expected {want or 'more'}")
        self.pos += 1
        return tok

    def _or(self) -> int:
        v = self._and()
        while self._peek() == "||":
            self._take()
            rhs = self._and()
            v = int(bool(v) or bool(rhs))
        return v

    def _and(self) -> int:
        v = self._cmp()
        while self._peek() == "&&":
            self._take()
            rhs = self._cmp()
            v = int(bool(v) and bool(rhs))
        return v

    def _cmp(self) -> int:
        ops = {"==": int.__eq__, "!=": int.__ne__, "<": int.__lt__, ">": int.__gt__,
               "<=": int.__le__, ">=": int.__ge__}
        v = self._unary()
        while (op := self._peek()) in ops:
            self._take()
            v = int(ops[op](v, self._unary()))
        return v

    def _unary(self) -> int:
        tok = self._take()
        if tok == "!":
            return int(not self._unary())
        if tok == "(":
            v = self._or()
            self._take(")")
            return v
        if tok == "defined":
            paren = self._peek() == "("
            if paren:
                self._take("(")
            name = self._take()
            if paren:
                self._take(")")
            return int(name in self.macros)
        if tok.isdigit():
            return int(tok)
        if not re.fullmatch(r"[A-Za-z_]\w*", tok):
            raise ValueError(f"#if expression {' '.join(self.tokens)!r}: unexpected {tok!r}")
        return resolve(tok, self.macros) or 0   # an undefined macro is 0, as in cpp


def resolve(name: str, macros: dict[str, str], depth: int = 0) -> int | None:
    """An object-like macro's integer value, through aliases (__NR_fcntl -> __NR3264_fcntl)."""
    value = macros.get(name, "").strip()
    if re.fullmatch(r"\d+", value):
        return int(value)
    if re.fullmatch(r"\w+", value) and depth < 16:
        return resolve(value, macros, depth + 1)
    return None


def preprocess(text: str, predefined: dict[str, str]) -> dict[str, str]:
    """The object-like macros defined after running `text` through the preprocessor with
    `predefined` set: #if/#ifdef/#ifndef/#elif/#else/#endif, #define and #undef."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S).replace("\\\n", " ")
    macros = dict(predefined)
    stack: list[tuple[bool, bool]] = []      # (this branch is live, some branch was taken)

    def live() -> bool:
        return all(s[0] for s in stack)

    for line in text.splitlines():
        m = re.match(r"\s*#\s*(\w+)\s*(.*?)\s*$", line)
        if not m:
            continue
        word, rest = m.groups()
        if word in ("if", "ifdef", "ifndef"):
            outer = live()
            cond = (rest in macros if word == "ifdef" else rest not in macros if word == "ifndef"
                    else outer and bool(CondExpr(rest, macros).value()))
            stack.append((outer and cond, outer and cond))
        elif word == "elif":
            _, taken = stack.pop()
            outer = live()
            cond = outer and not taken and bool(CondExpr(rest, macros).value())
            stack.append((cond, taken or cond))
        elif word == "else":
            _, taken = stack.pop()
            stack.append((live() and not taken, True))
        elif word == "endif":
            stack.pop()
        elif live() and word == "define":
            d = re.match(r"(\w+)(\()?\s*(.*)", rest)
            assert d, line
            if not d.group(2):                  # function-like macros are of no interest
                macros[d.group(1)] = d.group(3)
        elif live() and word == "undef":
            macros.pop(rest, None)
    assert stack == [], "unbalanced #if in the header"
    return macros


def aarch64_numbers(header: Path) -> tuple[dict[str, int], int]:
    """Syscall name -> aarch64 number from the generic table, and its __NR_syscalls."""
    macros = preprocess(header.read_text(), AARCH64_MACROS)
    numbers: dict[str, int] = {}
    for name in macros:
        if name.startswith("__NR_") and name[5:] not in NOT_SYSCALLS:
            nr = resolve(name, macros)
            assert nr is not None, f"{name} = {macros[name]!r} is not a number"
            numbers[name[5:]] = nr
    total = resolve("__NR_syscalls", macros)
    assert total is not None
    return numbers, total


@pytest.fixture(scope="module")
def generic_table() -> tuple[dict[str, int], int]:
    if not GENERIC_UNISTD.exists():
        skip_or_fail(f"{GENERIC_UNISTD} is missing (linux-libc-dev not installed)")
    return aarch64_numbers(GENERIC_UNISTD)


def test_the_header_reader_follows_the_64_bit_aliases(generic_table: tuple[dict[str, int], int]) -> None:
    known, _ = generic_table
    # __NR3264_* numbers under their 64-bit names, the 32-bit names absent
    expect = {"fcntl": 25, "statfs": 43, "fstatfs": 44, "truncate": 45, "ftruncate": 46, "lseek": 62,
              "sendfile": 71, "newfstatat": 79, "fstat": 80, "mmap": 222, "fadvise64": 223,
              "openat": 56, "renameat": 38, "getrlimit": 163, "clone3": 435, "memfd_secret": 447}
    assert {k: known.get(k) for k in expect} == expect
    for name in ("fcntl64", "statfs64", "fstatat64", "fstat64", "llseek", "_llseek", "mmap2",
                 "sendfile64", "fadvise64_64", "clock_gettime64", "sync_file_range2",
                 "stat", "lstat", "open", "fork", "arch_specific_syscall", "syscalls"):
        assert name not in known, name
    assert len(set(known.values())) == len(known), "two names for one number"


def test_aarch64_numbers_match_the_kernel_headers(generic_table: tuple[dict[str, int], int]) -> None:
    known, total = generic_table
    on_arm = [s for s in TABLE if s.aarch64 is not None]
    wrong = [(s.name, s.aarch64, known[s.name]) for s in on_arm if s.name in known and s.aarch64 != known[s.name]]
    assert wrong == [], "(name, table, header)"
    # A name the header does not know is fine only for a syscall newer than the header.
    unknown = [(s.name, s.aarch64) for s in on_arm if s.name not in known and (s.aarch64 or 0) < total]
    assert unknown == [], f"aarch64 numbers below the header's __NR_syscalls ({total}) it does not define"
    x86_only = [s.name for s in TABLE if s.aarch64 is None and s.name in known]
    assert x86_only == [], "marked x86-only but in aarch64's table"
    missing = sorted(set(known) - {s.name for s in on_arm})
    assert missing == [], f"syscalls aarch64's headers know but the table does not: {missing}"
    checked = [s for s in on_arm if s.name in known]
    assert len(checked) > 250 and len([s for s in TABLE if s.aarch64 is None]) > 30


# ---- one path policy: C wait loop and Python -------------------------------------------
def _policies() -> dict[str, PathPolicy]:
    extra = PathPolicy().with_overrides(
        local=["/tmp/scratch", "/home/a/local", "/proc/sys/kernel/hostname"],
        home=["/usr/local", "/dev/shm", "/home/a/local/home", "/etc"])
    root = PathPolicy().with_overrides(local=["/"], home=["/home", "/tmp", "/usr/share/doc"])
    ties = PathPolicy(local=[*PathPolicy().local, "/a/b", "/a"], home=[*PathPolicy().home, "/a/b"])
    # As the stub receives them: through the wire.
    return {name: PathPolicy.from_wire(p.to_wire()) for name, p in
            {"default": PathPolicy(), "extra": extra, "local-root": root, "ties": ties}.items()}


POLICIES = _policies()


def c_routes_home(path: str, raw: bytes) -> bool:
    return bool(lib.qr_policy_routes_home(os.fsencode(path), raw, len(raw)))


def tracer_decides(path: str) -> bool:
    """Paths the wait loop leaves to the tracer by contract (native/_cdefs.h): not plainly
    written (the kernel resolves '..' through symlinks, which lexical normalization does
    not), or naming a process or fd (procpaths.ASK_TRACER, /proc/<digit>...)."""
    parts = path.split("/")
    if not path.startswith("/") or "//" in path or any(p in (".", "..") for p in parts):
        return True
    if any(path == p or path.startswith(p + "/") for p in procpaths.ASK_TRACER):
        return True
    return any(path.startswith(p) and path[len(p):len(p) + 1] in set("0123456789")
               for p in procpaths.ASK_TRACER_NUMBERED)


COMPONENTS = ("", "...", ".hidden", "tmp", "home", "proc", "dev", "usr", "a", "b", "x",
              "tmpx", "usrx", "self", "thread-self", "task", "1", "42", "7x", "fd", "3", "stdin",
              "stdout", "sys", "kernel", "hostname", "domainname", "local", "scratch", "share",
              "lib", "lib64", "bin", "etc", "ld.so.cache", "shm", "é")


# Near misses of a prefix p, with how often each is drawn.
VARIANTS = ((lambda p: p, 4), (lambda p: p + "/", 1), (lambda p: p + "x", 2), (lambda p: p[:-1] or "/", 1),
            (lambda p: p + "/sub", 1), (lambda p: p + "1", 1), (lambda p: p + "/1", 1),
            (lambda p: p + "//", 0.3), (lambda p: p + "/.", 0.3), (lambda p: p + "/..", 0.3))


def anchor(rng: random.Random, policy: PathPolicy) -> str:
    """One of the policy's own prefixes (or the tracer's), or a near miss of it."""
    groups = (policy.local, policy.home, [*procpaths.ASK_TRACER, *procpaths.ASK_TRACER_NUMBERED])
    prefix = rng.choice(rng.choices(groups, weights=(4, 4, 1))[0])
    variant = rng.choices([v for v, _ in VARIANTS], weights=[w for _, w in VARIANTS])[0]
    return variant(prefix)


def random_paths(policy: PathPolicy, seed: int, n: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(n):
        path = anchor(rng, policy) if rng.random() < 0.7 else ""
        for _ in range(rng.randrange(0, 5)):
            sep = "/" if rng.random() < 0.9 else rng.choice(("//", "///"))
            path += sep + (rng.choice((".", "..")) if rng.random() < 0.05 else rng.choice(COMPONENTS))
        if rng.random() < 0.15:
            path += "/"
        yield path if path.startswith("/") else "/" + path


@pytest.mark.parametrize(("path", "local"), [
    ("/usr/bin/ls", True), ("/usr/", True), ("/proc/cpuinfo", True), ("/dev/null", True),
    ("/etc/ld.so.cache", True), ("/tmp/x", False), ("/", False), ("/usrx", False), ("/etc/passwd", False),
    ("/proc/sys/kernel/hostname", False), ("/proc/sys/kernel/hostname/", False),
    ("/proc/self/exe", None), ("/proc/1/status", None), ("/dev/fd/3", None), ("/dev/stdin", None),
    ("/usr/../tmp", None), ("/tmp/../usr", None), ("//usr/bin", None), ("/usr/./bin", None), ("/usr/.", None),
])
def test_the_wait_loop_on_known_paths(path: str, local: bool | None) -> None:
    """local=None: the wait loop must hand the call to the tracer."""
    raw = policy_bytes(POLICIES["default"])
    assert c_routes_home(path, raw) is (local is not True)
    assert tracer_decides(path) is (local is None)
    if local is not None:
        assert POLICIES["default"].routes_home(path) is not local


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_the_wait_loop_and_path_policy_agree(name: str) -> None:
    policy = POLICIES[name]
    raw = policy_bytes(policy)
    seen = {"local": 0, "home": 0, "tracer": 0}
    wrong = []
    for path in random_paths(policy, seed=20240 + sorted(POLICIES).index(name), n=5000):
        deferred, home = tracer_decides(path), policy.routes_home(path)
        seen["tracer" if deferred else "home" if home else "local"] += 1
        c_home = c_routes_home(path, raw)
        if c_home is not (home or deferred):
            wrong.append((path, f"C not local={c_home}", f"Python home={home}", f"tracer's={deferred}"))
        # What the tracer makes of a path the loop left to it: its normalized form.
        norm = normalize(path)
        if deferred and not tracer_decides(norm) and c_routes_home(norm, raw) is not home:
            wrong.append((path, f"C on {norm!r} not local={not home}", f"Python home={home}", "normalized"))
    assert wrong[:20] == [], f"{len(wrong)} disagreements"
    # the random paths reach every outcome, so the agreement means something
    assert min(seen.values()) >= 250, seen
