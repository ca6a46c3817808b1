"""The sshfs modes' view of the data: the data directory mounted over sshfs from a private
sshd on loopback (its own keys, port and config, so nothing about the machine's ssh setup
matters); commands run natively on the mount. `cache=False` turns sshfs's and the
kernel's attribute and entry caches off."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .commands import apt_hint, run
from .config import Ctx

SSHD = "/usr/sbin/sshd"
SSHD_CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
Subsystem sftp internal-sftp
"""
NO_CACHE = "cache=no,attr_timeout=0,entry_timeout=0,negative_timeout=0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SshfsView:
    def __init__(self, cache: bool = True) -> None:
        self.cache = cache
        self.mnt: Path | None = None
        self.src: Path | None = None
        self.dir: Path | None = None
        self.sshd: subprocess.Popen[bytes] | None = None

    def setup(self, ctx: Ctx) -> str | None:
        """Starts the sshd and mounts ctx.home; returns why it cannot, or None."""
        tools = (("sshfs", "sshfs"), ("ssh-keygen", "openssh-client"), (SSHD, "openssh-server"))
        for tool, package in tools:
            if not shutil.which(tool):
                return f"{tool} is not installed" + apt_hint(package)
        why = self._start_sshd()
        if why:
            self.teardown()
            return why
        return self._mount(ctx)

    def _start_sshd(self) -> str | None:
        self.dir = Path(tempfile.mkdtemp(prefix="qrun-bench-sshd-"))
        for key in ("host_key", "client_key"):
            p = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / key)], 30)
            if p.rc != 0:
                return "ssh-keygen failed: " + p.reason(30)
        shutil.copy(self.dir / "client_key.pub", self.dir / "authorized_keys")
        self.port = _free_port()
        cfg = self.dir / "sshd_config"
        cfg.write_text(SSHD_CONFIG.format(port=self.port, dir=self.dir, user=getpass.getuser()))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd insists on its privsep dir
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "sshd.log", "wb"))  # noqa: SIM115
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                return "sshd exited: " + (self.dir / "sshd.log").read_text(errors="replace")[-300:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return None
            time.sleep(0.05)
        return "sshd did not listen within 10 s"

    def _mount(self, ctx: Ctx) -> str | None:
        assert self.dir is not None
        mnt = Path(tempfile.mkdtemp(prefix="qrun-bench-sshfs-"))
        opts = (f"IdentityFile={self.dir}/client_key,UserKnownHostsFile=/dev/null,"
                "StrictHostKeyChecking=no,BatchMode=yes,LogLevel=ERROR")
        if not self.cache:
            opts += "," + NO_CACHE
        p = run(["sshfs", "-p", str(self.port), "-o", opts, f"127.0.0.1:{ctx.home}", str(mnt)], 60)
        if p.rc != 0 or p.timed_out:
            mnt.rmdir()
            self.teardown()
            return "sshfs mount failed: " + p.reason(60)
        self.mnt, self.src = mnt, ctx.home
        return None

    def path(self, p: Path) -> Path:
        if self.mnt is None or self.src is None:
            return p
        return self.mnt / p.relative_to(self.src)

    def teardown(self) -> None:
        if self.mnt is not None:
            for cmd in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
                if shutil.which(cmd[0]) and run([*cmd, str(self.mnt)], 30).rc == 0:
                    break
            try:
                self.mnt.rmdir()
            except OSError:
                pass
            self.mnt = None
        if self.sshd is not None:
            self.sshd.terminate()
            try:
                self.sshd.wait(5)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
            self.sshd = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
