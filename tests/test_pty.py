"""Interactive jobs on a pseudo-terminal (`qrun --pty`), driven as a person would: in tmux,
with send-keys and capture-pane. Bounded: every wait has a deadline."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TMUX = shutil.which("tmux")


class Pane:
    def __init__(self, cwd: Path) -> None:
        self.name = f"qrun-{uuid.uuid4().hex[:8]}"
        # A tmux server of its own (-L): a new session never races the exit of the server
        # whose last session the previous test killed.
        r = subprocess.run([TMUX or "tmux", "-L", self.name, "new-session", "-d", "-s", self.name,
                            "-x", "100", "-y", "30",
                            f"cd {shlex.quote(str(cwd))} && exec bash --norc --noprofile -i"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"tmux new-session failed: {r.stderr}"
        self.wait_for(lambda text: "$" in text or "#" in text, timeout=30)

    def tmux(self, args: list[str]) -> str:
        return subprocess.run([TMUX or "tmux", "-L", self.name, *args], capture_output=True, text=True,
                              timeout=10).stdout

    def keys(self, *keys: str) -> None:
        self.tmux(["send-keys", "-t", self.name, *keys])

    def line(self, text: str) -> None:
        self.keys(text, "Enter")

    def text(self) -> str:
        return self.tmux(["capture-pane", "-t", self.name, "-p"])

    def wait_for(self, ok: Callable[[str], bool], timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if ok(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"the screen never showed what was expected:\n{self.text()}")

    def run(self, command: str) -> str:
        """Type `command` at the shell and wait until it has finished. The marker the shell
        prints is computed, so the echo of the typed line itself can never match it."""
        n = uuid.uuid4().int % 10**6
        self.line(f"{command}; echo ran-$(({n} + 1))")
        return self.wait_for(lambda t: f"ran-{n + 1}" in t)

    def wait_prompt(self) -> str:
        """Wait until the home shell shows a fresh prompt on the last line. Keys typed before
        that would go to qrun, which forwards them to a job that is ending (as ssh -t does)."""
        def at_prompt(t: str) -> bool:
            lines = [ln for ln in t.splitlines() if ln.strip()]
            return len(lines) >= 2 and re.fullmatch(r"bash-[\d.]+[#$]\s*", lines[-1]) is not None
        return self.wait_for(at_prompt)

    def close(self) -> None:
        self.tmux(["kill-session", "-t", self.name])


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    if not TMUX:
        from conftest import skip_or_fail
        skip_or_fail("tmux is not installed")
    p = Pane(tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(params=[["--transparent"], []], ids=["transparent", "plain"])
def qrun_pty(request: pytest.FixtureRequest, qrun_cmd: list[str]) -> str:
    return shlex.join(qrun_cmd + request.param + ["--host", "local", "--pty", "--"])


def test_a_python_repl_shows_its_prompt_and_evaluates(pane: Pane, qrun_pty: str) -> None:
    pane.line(f"{qrun_pty} /usr/bin/python3 -q")
    pane.wait_for(lambda t: ">>>" in t)  # (capture-pane drops trailing blanks)
    pane.line("import os; print(6 * 7, os.isatty(0), os.isatty(1), os.isatty(2))")
    pane.wait_for(lambda t: "42 True True True" in t)
    pane.keys("C-d")
    time.sleep(1.5)  # typeahead while qrun ends would still go to the job
    pane.line("echo back:$?")
    pane.wait_for(lambda t: "back:0" in t)


def test_the_pty_follows_the_window_size(pane: Pane, qrun_pty: str) -> None:
    pane.line(f"{qrun_pty} sh -c 'stty size; tty; read x; stty size'")
    first = pane.wait_for(lambda t: "30 100" in t and "/dev/pts/" in t)
    assert "/dev/pts/" in first
    pane.tmux(["resize-window", "-t", pane.name, "-x", "90", "-y", "25"])
    time.sleep(0.5)
    pane.line("")
    pane.wait_for(lambda t: "25 90" in t)


def test_job_control_inside_a_remote_shell(pane: Pane, qrun_pty: str) -> None:
    pane.line(f"{qrun_pty} env PS1='remote> ' bash --norc --noprofile -i")
    pane.wait_for(lambda t: "remote> " in t or t.rstrip().endswith("remote>"))
    pane.line("sleep 100 &")
    pane.wait_for(lambda t: "[1]" in t)
    pane.line("sleep 50")
    time.sleep(1.5)  # sleep 50 in the foreground of the remote shell
    pane.keys("C-z")
    pane.wait_for(lambda t: "Stopped" in t and "sleep 50" in t)
    pane.line("jobs")
    text = pane.wait_for(lambda t: "Running" in t and "sleep 100" in t)
    assert "no job control" not in text, text
    pane.line("kill -9 %1 %2")
    time.sleep(0.5)
    for _ in range(3):  # bash may first answer "There are stopped jobs"
        last = [ln for ln in pane.text().splitlines() if ln.strip()][-1]
        if not last.startswith("remote>"):
            break
        pane.line("exit")
        time.sleep(1.5)
    pane.line("echo done:$?")
    pane.wait_for(lambda t: re.search(r"^done:\d", t, re.M) is not None)


def test_the_terminal_is_restored_after_qrun_is_terminated(pane: Pane, qrun_cmd: list[str], tmp_path: Path) -> None:
    before = tmp_path / "before"
    after = tmp_path / "after"
    pane.run(f"stty -g > {before}")
    job = shlex.join(qrun_cmd + ["--transparent", "--host", "local", "--pty", "--", "sleep", "30"])
    pane.line(f"{job} & sleep 1; fg")
    time.sleep(2.5)
    subprocess.run(["pkill", "-TERM", "-f", "qrun --transparent --host local --pty -- sleep 30"], timeout=10)
    pane.wait_prompt()
    pane.run(f"stty -g > {after}")
    assert after.read_text() == before.read_text()


def test_pty_needs_a_terminal(qrun_cmd: list[str]) -> None:
    r = subprocess.run(qrun_cmd + ["--host", "local", "--pty", "--", "true"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip() == "qrun: --pty needs a terminal on qrun's standard input"


def test_ctrl_z_stops_the_job_and_qrun_and_fg_resumes_both(pane: Pane, qrun_pty: str) -> None:
    pane.line(f"{qrun_pty} /usr/bin/python3 -q")
    pane.wait_for(lambda t: ">>>" in t)
    pane.line("x = 21")
    time.sleep(0.5)
    pane.keys("C-z")
    pane.wait_for(lambda t: "Stopped" in t)  # the home shell has its prompt back
    pane.line("fg")
    time.sleep(1.5)
    pane.line("print(x * 2, 'resumed')")
    pane.wait_for(lambda t: "42 resumed" in t)
    pane.keys("C-d")
    time.sleep(1.5)
    pane.line("echo back:$?")
    pane.wait_for(lambda t: "back:0" in t)


@pytest.mark.skipif(not shutil.which("vi"), reason="vi is not installed")
def test_vi_edits_and_saves_a_home_file(pane: Pane, qrun_cmd: list[str], tmp_path: Path) -> None:
    qrun = shlex.join(qrun_cmd + ["--transparent", "--host", "local", "--pty", "--", "vi", "notes.txt"])
    pane.line(qrun)
    pane.wait_for(lambda t: '"notes.txt"' in t)  # vi's status line; the typed line has no quotes
    pane.keys("i", "hello from vi", "Escape")
    time.sleep(0.5)
    pane.keys(":wq", "Enter")
    text = pane.wait_prompt()  # vi has written and exited
    assert (tmp_path / "notes.txt").read_text() == "hello from vi\n"
    assert "Output is not to a terminal" not in text and "Input is not from a terminal" not in text


def test_the_terminal_is_restored_after_the_job_is_killed(pane: Pane, qrun_cmd: list[str],
                                                          tmp_path: Path) -> None:
    before, after = tmp_path / "before", tmp_path / "after"
    pane.run(f"stty -g > {before}")
    marker = f"77{uuid.uuid4().int % 10**6}"
    qrun = shlex.join(qrun_cmd + ["--host", "local", "--pty", "--", "sleep", marker])
    pane.line(qrun)
    time.sleep(2.5)
    subprocess.run(["pkill", "-KILL", "-f", f"^sleep {marker}"], timeout=10)
    pane.wait_prompt()
    pane.run(f"stty -g > {after}")
    assert after.read_text() == before.read_text()
