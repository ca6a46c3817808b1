"""How a job ended, as the home server hands it to `qrun`: the outcome the stub reported,
checked field by field, or the failure that ended the job early."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qrun.homenode import schema
from qrun.homenode.executor import BadRequest
from qrun.syscalls import wire


class JobFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Outcome:
    status: dict[str, Any]
    usage: dict[str, Any]
    host: str
    wall: float


def exit_status(st: dict[str, Any]) -> dict[str, Any]:
    """How the job ended, as the stub reported it, reduced to fields of the right types: a
    malformed report is a failed job with a message, not a crash of qrun."""
    try:
        if "signal" in st:
            schema.integer(1, 64, "signal")(st["signal"])
            out: dict[str, Any] = {"signal": st["signal"], "core": bool(st.get("core"))}
        else:
            schema.integer(0, 255, "exit code")(st.get("code"))
            out = {"code": st["code"]}
        if "spawn_errno" in st:
            schema.integer(1, 4095, "errno")(st["spawn_errno"])
            out["spawn_errno"] = st["spawn_errno"]
        for key in ("error", "error_kind"):
            if key in st:
                if not isinstance(st[key], str) or len(st[key]) > 1000:
                    raise BadRequest(f"{key}: a short string expected")
                out[key] = st[key]
    except BadRequest as exc:
        return {"code": 1, "error": f"the stub sent a malformed exit report ({exc})", "error_kind": "launch"}
    return out


def exit_usage(u: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in u.items() if k in ("utime", "stime", "maxrss_kb", "reconnects",
                                                        *wire.DATA_PATH_COUNTS)
            and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 2**53}
