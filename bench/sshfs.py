"""The sshfs mode's view of the data: the data directory mounted from localhost over sshfs;
commands run natively on the mount."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .commands import apt_hint, run
from .config import Ctx

SSH_OPTS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "StrictHostKeyChecking=accept-new"]


class SshfsView:
    def __init__(self) -> None:
        self.mnt: Path | None = None
        self.src: Path | None = None

    def setup(self, ctx: Ctx) -> str | None:
        """Mounts ctx.home; returns why it cannot, or None."""
        if not shutil.which("sshfs"):
            return "not installed" + apt_hint("sshfs")
        if not shutil.which("ssh"):
            return "no ssh client" + apt_hint("openssh-client")
        p = run(["ssh", *SSH_OPTS, "localhost", "true"], 30)
        if p.rc != 0 or p.timed_out:
            hint = "" if shutil.which("sshd") else "; no sshd here" + apt_hint("openssh-server")
            return f"needs passwordless ssh to localhost: {p.reason(30)}{hint}"
        mnt = Path(tempfile.mkdtemp(prefix="qrun-bench-sshfs-"))
        p = run(["sshfs", "-o", "BatchMode=yes,StrictHostKeyChecking=accept-new",
                 f"localhost:{ctx.home}", str(mnt)], 60)
        if p.rc != 0 or p.timed_out:
            mnt.rmdir()
            return "sshfs mount failed: " + p.reason(60)
        self.mnt, self.src = mnt, ctx.home
        return None

    def path(self, p: Path) -> Path:
        if self.mnt is None or self.src is None:
            return p
        return self.mnt / p.relative_to(self.src)

    def teardown(self) -> None:
        if self.mnt is None:
            return
        for cmd in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
            if shutil.which(cmd[0]) and run([*cmd, str(self.mnt)], 30).rc == 0:
                break
        try:
            self.mnt.rmdir()
        except OSError:
            pass
        self.mnt = None
