"""The command lines ("recipes") of docs/habits.md and docs/cluster.md, and how the tests run
each one: tests/test_cli.py against a cluster file whose ssh and srun are stand-ins that run
the stub on this machine, tests/test_recipes.py against real sshd and Slurm daemons (root).

Every recipe the pages show must be listed in RECIPES, so a new or changed command line in
the docs fails test_cli.py until it is run (or the reason it cannot be is written down).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HABITS = REPO / "docs" / "habits.md"
CLUSTER = REPO / "docs" / "cluster.md"

# The first word of a code span or block line that makes it a command line.
COMMAND_WORDS = frozenset({"qrun", "setsid", "for", "ssh", "sbatch", "salloc", "srun", "chmod",
                           "systemctl", "loginctl", "journalctl", "<ssh_command>", "<srun_command>"})

FAKE = "fake"      # tests/test_cli.py, stand-in ssh and srun
SSH = "ssh"        # tests/test_recipes.py, real sshd on namespace hosts
SLURM = "slurm"    # tests/test_recipes.py, real Slurm on namespace hosts
LAUNCHER = "launcher"  # what qrun itself runs: compared with the stand-ins' argv in test_cli.py

# recipe -> the ways it is run, or "not run: why".
RECIPES: dict[str, tuple[str, ...] | str] = {
    # docs/habits.md (the qrun column of its tables)
    "qrun --help": (FAKE,),
    "qrun -- cmd": (FAKE, SSH),
    "qrun -w host -- cmd": (FAKE, SSH),
    "qrun agent": (FAKE,),
    'for h in node1 node2 node3; do qrun -w "$h" -D / -- uptime; done': (FAKE, SSH),
    "qrun --launcher slurm -- cmd": (FAKE, SLURM),
    "qrun -w node1 -- cmd": (FAKE, SSH),
    "qrun -w 'node[1-3]' -- cmd": (FAKE, SSH),
    "qrun -x 'node[4-5]' -- cmd": (FAKE,),
    "qrun --launcher slurm -x 'node[4-5]' -- cmd": (FAKE,),
    "qrun … < FILE": (FAKE, SSH),
    'qrun -D "$HOME" -- cmd': (FAKE, SSH),
    "qrun -w host -- cmd args": (FAKE, SSH),
    "qrun --via 'ssh host' --home-addr ADDR -- cmd args": (FAKE, SSH),
    "qrun -w host -- sh -c 'cmd1 \\| cmd2'": (FAKE, SSH),
    "qrun … < /dev/null": (FAKE, SSH),
    "qrun --pty -- cmd": "not run here: it needs a terminal; tests/test_pty.py runs --pty jobs in tmux",
    # docs/cluster.md
    "qrun hosts": (FAKE, SSH),
    "qrun agent --keygen": (FAKE,),
    "qrun hosts -w LIST": (FAKE, SSH),
    "qrun --require 'scratch_gb>=100' --require 'gpu>=1' -- ./train": (FAKE,),
    "qrun hosts [--json] [-w HOSTS] [--require EXPR]... [--config FILE]":
        "not run: a synopsis (its forms are run above)",
    "qrun agent [--config FILE] [--bind ADDR] [--load-file FILE]":
        "not run: a synopsis (qrun agent and --keygen are run)",
    "chmod 600": "not run: part of a sentence",
    "chmod 600 ~/.config/qrun/agent.toml": "not run: systemd user services are not available in tests",
    "systemctl --user daemon-reload": "not run: systemd user services are not available in tests",
    "systemctl --user enable --now qrun-agent": "not run: systemd user services are not available in tests",
    "loginctl enable-linger": "not run: systemd user services are not available in tests",
    "loginctl enable-linger USER": "not run: systemd user services are not available in tests",
    "journalctl --user -u qrun-agent": "not run: systemd user services are not available in tests",
    "<ssh_command> -o BatchMode=yes -o ControlMaster=auto -o ControlPersist=60 "
    "-o ControlPath=~/.cache/qrun/ssh-%C alice@10.0.0.11 -- '<stub command>'": (LAUNCHER,),
    "<ssh_command> -o BatchMode=yes -o ControlPath=~/.cache/qrun/ssh-%C -O check alice@10.0.0.11": (LAUNCHER,),
    "<ssh_command> -o BatchMode=yes -o ControlPath=~/.cache/qrun/ssh-%C -G alice@10.0.0.11": (LAUNCHER,),
    "<ssh_command> -o BatchMode=yes -o ControlMaster=yes -o ControlPersist=60 "
    "-o ControlPath=~/.cache/qrun/ssh-%C -f -N alice@10.0.0.11": (LAUNCHER,),
    "ssh HOST true": (SSH,),
    "ssh -o ControlPath=~/.cache/qrun/ssh-%C -O exit alice@10.0.0.11": (SSH,),
    "<srun_command> -N1 -n1 --quiet --job-name=qrun-JOBID --chdir=/ [--nodelist=NODE] [--partition=P] "
    "[--exclude=HOSTS] <stub command>": (LAUNCHER,),
    'sbatch --wrap "qrun --launcher slurm -- hostname"': (SLURM,),
    # batch jobs: their forms run in tests/test_batch.py, against a daemon of each test's own
    "qrun submit -- cmd": "not run here: a batch job; tests/test_batch.py::test_submit_returns_at_once_and_the_job_outlives_its_submitter runs this form",
    "qrun submit [-o FILE] -- cmd": "not run here: a batch job; tests/test_batch.py::test_twenty_jobs_over_three_hosts_keep_the_cap runs this form",
    "qrun status": "not run here: a batch job; tests/test_batch.py::test_arrays_and_dependencies runs this form",
    "qrun wait ID": "not run here: a batch job; tests/test_batch.py::test_submit_returns_at_once_and_the_job_outlives_its_submitter runs this form",
    "qrun output ID -f": "not run here: a batch job; tests/test_batch.py::test_submit_returns_at_once_and_the_job_outlives_its_submitter runs this form",
    "qrun cancel ID": "not run here: a batch job; tests/test_batch.py::test_cancel_leaves_nothing_running runs this form",
    "qrun submit -J NAME": "not run here: a batch job; tests/test_batch.py::test_submit_returns_at_once_and_the_job_outlives_its_submitter runs this form",
    "qrun submit [--transparent] -- script": "not run here: a batch job; tests/test_batch.py::test_submit_returns_at_once_and_the_job_outlives_its_submitter runs this form",
    "qrun submit -o FILE -e FILE -J NAME": "not run here: a batch job; tests/test_batch.py::test_twenty_jobs_over_three_hosts_keep_the_cap runs this form",
    "qrun submit --array 1-100%8": "not run here: a batch job; tests/test_batch.py::test_arrays_and_dependencies runs this form",
    "qrun submit --afterok ID": "not run here: a batch job; tests/test_batch.py::test_arrays_and_dependencies runs this form",
    "qrun submit --requeue": "not run here: a batch job; tests/test_batch.py::test_a_requeued_job_whose_host_is_lost_starts_again runs this form",
    "qrun cancel --name NAME": "not run here: a batch job; tests/test_batch.py::test_arrays_and_dependencies runs this form",
    "qrun acct [ID] [--since 7d] [--json]": "not run here: a batch job; tests/test_batch.py::test_submit_returns_at_once_and_the_job_outlives_its_submitter runs this form",
    "qrun submit": "not run here: a batch job; tests/test_batch.py::test_submit_returns_at_once_and_the_job_outlives_its_submitter runs this form",
}

# Placeholders that stand for a value the reader supplies; everything else (cmd, host,
# node1, FILE, ./train ...) is made to exist by the tests, so the line runs as written.
PLACEHOLDERS = {"…": "-- cat", "ADDR": "{home_addr}", "LIST": "node1,node2", "HOST": "host",
                "alice@10.0.0.11": "node1"}


def _commands(texts: list[str]) -> list[str]:
    return [t for t in texts if len(t.split()) > 1 and t.split()[0] in COMMAND_WORDS]


def _spans(text: str) -> list[str]:
    return [(m.group(1) or m.group(2)).strip() for m in re.finditer(r"``(.+?)``|`([^`]+)`", text)]


def doc_recipes(path: Path, qrun_column_only: bool = False) -> list[str]:
    """Every command line of a page: the lines of indented code blocks (a trailing `\\`
    joins the next line) and inline code spans; with `qrun_column_only`, only the last
    column of table rows (habits.md's first column is the other tool's command)."""
    out: list[str] = []
    fenced = in_block = False
    prev_blank = True
    held = ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        indented = re.match(r"^ {4,}\S", line) is not None
        in_block = indented and (prev_blank or in_block)
        prev_blank = not line.strip()
        if in_block:
            text = (held + " " + line.strip()).strip()
            if text.endswith("\\"):
                held = text[:-1].strip()
                continue
            held = ""
            out += _commands([text])
            continue
        if qrun_column_only and line.startswith("|"):
            line = re.split(r"(?<!\\)\|", line.strip().strip("|"))[-1]
        out += _commands(_spans(line))
    return list(dict.fromkeys(out))


def all_recipes() -> list[str]:
    return list(dict.fromkeys(doc_recipes(HABITS, qrun_column_only=True) + doc_recipes(CLUSTER)))


def runs(kind: str) -> list[str]:
    return [r for r, how in RECIPES.items() if isinstance(how, tuple) and kind in how]


def shell_line(recipe: str, home_addr: str = "127.0.0.1") -> str:
    """The recipe as a shell command line: Markdown's `\\|` unescaped and the placeholders
    filled in (as whole words)."""
    line = recipe.replace("\\|", "|")
    for word, value in PLACEHOLDERS.items():
        line = re.sub(rf"(?<![\w@.-]){re.escape(word)}(?![\w@.-])", value.format(home_addr=home_addr), line)
    return line
