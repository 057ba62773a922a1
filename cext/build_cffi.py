"""cffi build script (out-of-line API mode): compiles cext/*.c into uffdharness._native.

Declarations the Python side may use live in cext/*.cdef, one file per C unit, so adding a
C unit means adding a .c, a .h and a .cdef here, never editing this script. Headers only
the C files share live in cext/internal/: the globs below do not descend into it, so they
never reach the cffi source.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
for cdef_file in sorted(HERE.glob("*.cdef")):
    ffibuilder.cdef(cdef_file.read_text(), override=False)

headers = "\n".join(f'#include "{h.name}"' for h in sorted(HERE.glob("*.h")))
ffibuilder.set_source(
    "uffdharness._native",
    "#ifndef _GNU_SOURCE\n#define _GNU_SOURCE\n#endif\n"
    "#include <sys/mman.h>\n#include <fcntl.h>\n" + headers,
    sources=[str(c.relative_to(HERE.parent)) for c in sorted(HERE.glob("*.c"))],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
