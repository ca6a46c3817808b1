"""Which calls the C wait loop may answer from its mirror of the metadata cache, and with
what key (remote/loopanswers.py); that its answers stay coherent is shown end to end in
test_metacache.py (the absolute-path variants)."""

from __future__ import annotations

from qrun.remote.loopanswers import NO_OUTPUT, shape
from qrun.syscalls.table import BY_NAME, TABLE


def test_the_loop_answers_the_cached_calls_on_one_path_that_fill_no_buffer() -> None:
    answered = {sc.name for sc in TABLE if shape(sc) is not None}
    assert answered == {"stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2",
                        "readlink", "readlinkat"}
    assert answered == {sc.name for sc in TABLE if sc.cached}


def test_an_answer_is_keyed_by_every_integer_argument_and_written_where_the_call_says() -> None:
    assert shape(BY_NAME["stat"]) == (1, -1, 0)                       # path, buffer
    assert shape(BY_NAME["newfstatat"]) == (2, -1, 1 << 3)            # dirfd, path, buffer, flags
    assert shape(BY_NAME["statx"]) == (4, -1, 1 << 2 | 1 << 3)        # dirfd, path, flags, mask, buffer
    assert shape(BY_NAME["faccessat2"]) == (NO_OUTPUT, -1, 1 << 2 | 1 << 3)
    # readlink: the buffer's size bounds the answer, it is not part of the key
    assert shape(BY_NAME["readlink"]) == (1, 2, 0)
    assert shape(BY_NAME["readlinkat"]) == (2, 3, 0)
