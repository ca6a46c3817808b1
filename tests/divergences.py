"""The ONE place that lists allowed differences between native and qrun output.

The conformance principle is that a job run with ``qrun --transparent`` sees
exactly what it would see natively at home, so every probe's stdout must be
identical in both runs.  Anything that is allowed to differ is listed here,
each entry with a one-sentence explanation of why it cannot (or need not) be
made identical.  Keep this list short: every entry is a hole in the test.

How an entry is applied (tests/conformance.py: ``compare``):

* ``probe_glob`` is matched with ``fnmatch`` against the probe id
  (``'files.static'``, ``'ident.*'``, ``'shell.sh'``, ``'*'``...).
* ``line_regex`` is searched (``re.search``) in every stdout line of both the
  native and the qrun output; anchor it with ``^`` to match on the
  ``name:`` part, e.g. ``r'^uname\\.release: '``.
* Matching lines are removed from both outputs before they are compared.  The
  entry counts as *applied* when the lines it removed differ between the two
  runs (that count is reported, so stale entries can be spotted).

Example (not active)::

    Divergence(
        probe_glob="ident.*",
        line_regex=r"^proc\\.kernel_hostname",
        why="/proc/sys is read from the execution host, not forwarded.",
    )
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Divergence:
    probe_glob: str
    line_regex: str
    why: str


ALLOWED: list[Divergence] = []
