"""cffi builder: exposes the module's pure C core (csrc/options.c) to Python.

The CLI validates options with exactly the code the module runs, never with a Python copy of it.
"""

from __future__ import annotations

from cffi import FFI

ffibuilder = FFI()
ffibuilder.cdef(
    """
    enum pu_onerr { PU_ONERR_FAIL, PU_ONERR_SUCCEED, ... };
    enum pu_propagation { PU_PROPAGATION_SLAVE, PU_PROPAGATION_PRIVATE, ... };
    enum pu_on_logout { PU_ON_LOGOUT_LINGER, PU_ON_LOGOUT_KILL, ... };
    enum pu_scope { PU_SCOPE_SESSION, PU_SCOPE_USER, ... };
    #define PU_NAME_MAX ...
    struct pu_options {
        int debug;
        int onerr;
        int propagation;
        int on_logout;
        int scope;
        int max_sessions;
        const char *exempt_users;
        const char *exempt_groups;
        const char *only_groups;
    };
    void pu_options_init(struct pu_options *opts);
    const char *pu_option_apply(struct pu_options *opts, const char *arg);
    int pu_name_in_list(const char *list, const char *name);
    """
)
ffibuilder.set_source(
    "pam_unshare._core",
    '#include "options.h"',
    # Relative to the project root, where setuptools runs the build.
    sources=["csrc/options.c"],
    include_dirs=["csrc"],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
