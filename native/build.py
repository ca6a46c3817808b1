"""cffi build script for qrun's native layer (API mode, compiled at install time)."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).parent

ffibuilder = FFI()
TYPES = (HERE / "_types.h").read_text()   # defined once, in front of both
ffibuilder.cdef(TYPES + (HERE / "_cdefs.h").read_text())
ffibuilder.set_source(
    "qrun.native._qrun_native",
    TYPES + (HERE / "_source.c").read_text(),
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=False)
