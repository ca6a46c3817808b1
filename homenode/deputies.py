"""Deputies: one small home process per remote job process, so the job's pids are real
home pids. A signal sent to a deputy is caught and relayed to its remote process; a
deputy killed with SIGKILL (which cannot be caught) relays SIGKILL.
"""

from __future__ import annotations

import os
import signal
import struct

from qrun.native import lib


class Deputies:
    def __init__(self) -> None:
        self.report_fd, self._report_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.live: dict[int, int] = {}  # home pid -> pidfd

    def spawn(self, name: str) -> int:
        pid = lib.qr_spawn_deputy(self._report_w, name.encode(errors="replace"))
        if pid < 0:
            raise OSError(-pid, "fork deputy")
        try:
            self.live[pid] = os.pidfd_open(pid)
        except OSError:
            os.kill(pid, signal.SIGKILL)  # untracked, it would outlive the job
            os.waitpid(pid, 0)
            raise
        return pid

    def read_reports(self) -> list[tuple[int, int]]:
        try:
            data = os.read(self.report_fd, 8 * 512)
        except BlockingIOError:
            return []
        return [struct.unpack_from("<ii", data, i) for i in range(0, len(data) - 7, 8)]

    def changes(self) -> list[tuple[int, int]]:
        """(home pid, signal) to relay for what happened to deputies that cannot be caught:
        SIGKILL (the deputy is gone), SIGSTOP (it stays stopped here, as its remote process
        will there) and the SIGCONT that ends such a stop."""
        out: list[tuple[int, int]] = []
        for pid in list(self.live):
            try:
                done, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED | os.WCONTINUED)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            if os.WIFSTOPPED(status):
                out.append((pid, int(signal.SIGSTOP)))
            elif os.WIFCONTINUED(status):
                out.append((pid, int(signal.SIGCONT)))
            else:
                os.close(self.live.pop(pid))
                if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                    out.append((pid, int(signal.SIGKILL)))
        return out

    def retire(self, pid: object) -> None:
        if not isinstance(pid, int) or pid not in self.live:
            return
        pidfd = self.live.pop(pid)
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(pidfd)

    def close_all(self) -> None:
        for pid in list(self.live):
            self.retire(pid)
        os.close(self.report_fd)
        os.close(self._report_w)
