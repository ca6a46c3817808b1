"""cffi build script for qrun's native layer (API mode, compiled at install time)."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "_cdefs.h").read_text())
ffibuilder.set_source(
    "qrun.native._qrun_native",
    (HERE / "_source.c").read_text(),
    extra_compile_args=["-O2", "-Wall"],
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=False)
