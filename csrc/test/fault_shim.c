/* Test-only fault injection for pam_unshare.so: an LD_PRELOAD shim, never linked into the module.
 *
 * It wraps the libc calls the module makes on its way into a session and, for calls made by
 * code of pam_unshare.so itself (the return address lies in a file named pam_unshare.so, or
 * $PU_FAULT_OBJECT), fails the Nth matching one. Calls from anywhere else (the caller, PAM,
 * libc, the shim) pass straight through, so the caller and the user's shell are unaffected.
 *
 *   PU_FAULT="NAME[=ARG][@ROLE]:N:ACTION[,...]"   or the same text in $PU_FAULT_DIR/spec
 *     NAME    a wrapped function (mount, pipe2, prctl, ...) or a system call the module makes
 *             through syscall(2): close_range, execveat, listmount, pidfd_open,
 *             pidfd_send_signal, setgroups, setresgid, setresuid, statmount
 *     ARG     only calls whose first "selector" argument equals ARG count: the option of prctl,
 *             the command of fcntl (e.g. prctl=38 is PR_SET_NO_NEW_PRIVS, fcntl=1033 F_ADD_SEALS)
 *     ROLE    caller: only calls in the calling process; init: only in the clone child (its
 *             PID is 1 in its namespace). Each process counts its own calls after the clone.
 *     N       which matching call fails (1 = the first); 0 fails every one
 *     ACTION  an errno name or number: the call returns failure with it;
 *             KILL: the calling process dies at that call, by SIGKILL (the caller) or by
 *                   exit_group (the init-to-be, which as its namespace's PID 1 cannot be
 *                   SIGKILLed from inside);
 *             HANG: it sleeps for 60 s at that call, then proceeds
 *   $PU_FAULT_DIR/log gets one line per event (appended with O_APPEND, one write each):
 *     inject NAME[=ARG] N ACTION pid=PID
 *     clone pid=PID start=TICKS pidns=INODE mntns=INODE     (each namespace child the module
 *                                                            made, seen from the caller)
 *
 * Counters live in process memory, which the clone child (the session's PID 1 before it execs)
 * shares with the caller (CLONE_VM): "mount:2" is the second mount of the module wherever it
 * happens, and a count without ROLE includes the child's calls. The session init itself is static
 * and libc-free: the shim never reaches it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <security/pam_modules.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_FAULTS 8

struct fault {
    char name[32];
    int role;      /* 0: any process; ROLE_CALLER; ROLE_INIT (the clone child, PID 1 inside) */
    int has_arg;
    long arg;
    long nth;      /* 0: every call */
    int action;    /* > 0 errno; ACTION_KILL; ACTION_HANG */
    char action_text[24];
    long seen;
};

enum { ACTION_KILL = -1, ACTION_HANG = -2 };
enum { ROLE_CALLER = 1, ROLE_INIT = 2 };

static struct fault faults[MAX_FAULTS];
static int n_faults;
static char log_path[4096];
static const char *object_name = "pam_unshare.so";
static __thread int in_shim;

/* ---- the real functions ------------------------------------------------------------------- */

/* The next definition after ours; for PAM's functions, libpam itself, which a caller may have
 * loaded without RTLD_GLOBAL (python-pam through ctypes), out of RTLD_NEXT's reach. */
static void *find_real(const char *name)
{
    void *found = dlsym(RTLD_NEXT, name);
    if (!found && strncmp(name, "pam_", 4) == 0) {
        void *libpam = dlopen("libpam.so.0", RTLD_LAZY | RTLD_NOLOAD);
        if (libpam)
            found = dlsym(libpam, name);
    }
    if (!found)
        abort();
    return found;
}

#define REAL(ret, name, ...)                                                                       \
    static ret (*real_##name)(__VA_ARGS__);                                                         \
    static ret (*get_##name(void))(__VA_ARGS__)                                                    \
    {                                                                                              \
        if (!real_##name)                                                                          \
            real_##name = (ret(*)(__VA_ARGS__))find_real(#name);                                   \
        return real_##name;                                                                        \
    }

REAL(long, syscall, long, long, long, long, long, long, long)
REAL(int, clone, int (*)(void *), void *, int, void *, ...)
REAL(int, mount, const char *, const char *, const char *, unsigned long, const void *)
REAL(void *, mmap, void *, size_t, int, int, int, off_t)
REAL(int, mprotect, void *, size_t, int)
REAL(int, pipe2, int *, int)
REAL(int, memfd_create, const char *, unsigned int)
REAL(int, setns, int, int)
REAL(int, prctl, int, unsigned long, unsigned long, unsigned long, unsigned long)
REAL(int, fcntl, int, int, long)
REAL(ssize_t, write, int, const void *, size_t)
REAL(ssize_t, read, int, void *, size_t)
REAL(ssize_t, __read_chk, int, void *, size_t, size_t)
REAL(int, poll, struct pollfd *, nfds_t, int)
REAL(int, chdir, const char *)
REAL(int, dup3, int, int, int)
REAL(int, setgroups, size_t, const gid_t *)
REAL(int, setresuid, uid_t, uid_t, uid_t)
REAL(int, setresgid, gid_t, gid_t, gid_t)
REAL(int, setrlimit, int, const struct rlimit *)
REAL(FILE *, fopen, const char *, const char *)
REAL(int, socket, int, int, int)
REAL(int, bind, int, const struct sockaddr *, socklen_t)
REAL(int, listen, int, int)
REAL(int, connect, int, const struct sockaddr *, socklen_t)
REAL(int, getsockopt, int, int, int, void *, socklen_t *)
REAL(int, mkdir, const char *, mode_t)
REAL(int, open, const char *, int, mode_t)
REAL(int, openat, int, const char *, int, mode_t)
REAL(int, fstat, int, struct stat *)
REAL(int, flock, int, int)
REAL(int, unlinkat, int, const char *, int)
REAL(int, getpwnam_r, const char *, struct passwd *, char *, size_t, struct passwd **)
REAL(int, getgrnam_r, const char *, struct group *, char *, size_t, struct group **)
REAL(int, getgrouplist, const char *, gid_t, gid_t *, int *)
REAL(int, pam_get_item, const pam_handle_t *, int, const void **)
REAL(int, pam_set_data, pam_handle_t *, const char *, void *,
     void (*)(pam_handle_t *, void *, int))

/* dlsym may itself allocate: while it resolves calloc/malloc, serve from a small arena. */
static char arena[4096];
static size_t arena_used;
static int resolving_alloc;
static void *(*real_calloc)(size_t, size_t);
static void *(*real_malloc)(size_t);

static void *arena_alloc(size_t size)
{
    size = (size + 15) & ~(size_t)15;
    if (arena_used + size > sizeof arena)
        return NULL;
    void *p = arena + arena_used;
    arena_used += size;
    return p;
}

static void resolve_alloc(void)
{
    if (real_calloc && real_malloc)
        return;
    resolving_alloc = 1;
    real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
    resolving_alloc = 0;
}

/* ---- the spec and the log ----------------------------------------------------------------- */

static const struct {
    const char *name;
    int value;
} ERRNOS[] = {
    {"EPERM", EPERM},   {"ENOENT", ENOENT}, {"ESRCH", ESRCH},   {"EINTR", EINTR},
    {"EIO", EIO},       {"ENOEXEC", ENOEXEC}, {"EBADF", EBADF}, {"ECHILD", ECHILD},
    {"EAGAIN", EAGAIN}, {"ENOMEM", ENOMEM}, {"EACCES", EACCES}, {"EFAULT", EFAULT},
    {"EBUSY", EBUSY},   {"EEXIST", EEXIST}, {"EINVAL", EINVAL}, {"ENFILE", ENFILE},
    {"EMFILE", EMFILE}, {"ENOSPC", ENOSPC}, {"EROFS", EROFS},   {"ENOSYS", ENOSYS},
    {"ENOLCK", ENOLCK}, {"ELOOP", ELOOP},   {"EUSERS", EUSERS}, {"EADDRINUSE", EADDRINUSE},
    {"ECONNREFUSED", ECONNREFUSED},         {"ETIMEDOUT", ETIMEDOUT},
    {"EOVERFLOW", EOVERFLOW},               {"E2BIG", E2BIG},   {"EFBIG", EFBIG},
    {"ENOBUFS", ENOBUFS},                   {"EDQUOT", EDQUOT}, {NULL, 0}};

static int parse_action(const char *text)
{
    if (strcmp(text, "KILL") == 0)
        return ACTION_KILL;
    if (strcmp(text, "HANG") == 0)
        return ACTION_HANG;
    for (int i = 0; ERRNOS[i].name; i++) {
        if (strcmp(ERRNOS[i].name, text) == 0)
            return ERRNOS[i].value;
    }
    if (atoi(text) > 0)
        return atoi(text);
    /* A name missing above must not turn into some other errno: the test would check the
     * module's answer to a failure it never injected. */
    fprintf(stderr, "fault shim: unknown errno name %s\n", text);
    abort();
}

static void parse_spec(char *spec)
{
    char *save = NULL;
    for (char *item = strtok_r(spec, ", \t\n", &save); item && n_faults < MAX_FAULTS;
         item = strtok_r(NULL, ", \t\n", &save)) {
        struct fault *f = &faults[n_faults];
        char *first = strchr(item, ':');
        char *second = first ? strchr(first + 1, ':') : NULL;
        if (!first || !second)
            continue;
        *first = *second = '\0';
        char *at = strchr(item, '@');
        if (at) {
            f->role = strcmp(at + 1, "init") == 0 ? ROLE_INIT : ROLE_CALLER;
            *at = '\0';
        }
        char *eq = strchr(item, '=');
        if (eq) {
            *eq = '\0';
            f->has_arg = 1;
            f->arg = strtol(eq + 1, NULL, 0);
        }
        snprintf(f->name, sizeof f->name, "%s", item);
        f->nth = strtol(first + 1, NULL, 10);
        snprintf(f->action_text, sizeof f->action_text, "%s", second + 1);
        f->action = parse_action(second + 1);
        n_faults++;
    }
}

__attribute__((constructor)) static void shim_init(void)
{
    const char *dir = getenv("PU_FAULT_DIR");
    const char *env = getenv("PU_FAULT");
    const char *object = getenv("PU_FAULT_OBJECT");
    char spec[1024] = "";

    if (object && *object)
        object_name = object;
    if (env) {
        snprintf(spec, sizeof spec, "%s", env);
    } else if (dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/spec", dir);
        int fd = (int)get_syscall()(SYS_openat, AT_FDCWD, (long)path, O_RDONLY | O_CLOEXEC, 0, 0, 0);
        if (fd >= 0) {
            long n = get_syscall()(SYS_read, fd, (long)spec, sizeof spec - 1, 0, 0, 0);
            spec[n > 0 ? n : 0] = '\0';
            get_syscall()(SYS_close, fd, 0, 0, 0, 0, 0);
        }
    }
    if (dir)
        snprintf(log_path, sizeof log_path, "%s/log", dir);
    parse_spec(spec);
}

static void log_line(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int len;

    if (!log_path[0])
        return;
    va_start(ap, fmt);
    len = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (len <= 0)
        return;
    if (len >= (int)sizeof line)
        len = (int)sizeof line - 1;
    int saved = errno;
    int fd = (int)get_syscall()(SYS_openat, AT_FDCWD, (long)log_path,
                                O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644, 0, 0);
    if (fd >= 0) {
        get_syscall()(SYS_write, fd, (long)line, len, 0, 0, 0);
        get_syscall()(SYS_close, fd, 0, 0, 0, 0, 0);
    }
    errno = saved;
}

/* ---- deciding ----------------------------------------------------------------------------- */

static int from_module(const void *return_address)
{
    Dl_info info;
    const char *base;

    if (!dladdr(return_address, &info) || !info.dli_fname)
        return 0;
    base = strrchr(info.dli_fname, '/');
    base = base ? base + 1 : info.dli_fname;
    return strcmp(base, object_name) == 0;
}

/* 0: run the real call; otherwise the errno to fail with. Dies or hangs for KILL and HANG. */
static int decide(const char *name, long arg, const void *return_address)
{
    int checked = 0, module = 0;

    if (in_shim || n_faults == 0)
        return 0;
    for (int i = 0; i < n_faults; i++) {
        struct fault *f = &faults[i];
        if (strcmp(f->name, name) != 0 || (f->has_arg && f->arg != arg))
            continue;
        if (!checked) {
            in_shim = 1;
            module = from_module(return_address);
            in_shim = 0;
            checked = 1;
        }
        if (!module)
            return 0;
        if (f->role) {
            int is_init = get_syscall()(SYS_getpid, 0, 0, 0, 0, 0, 0) == 1;
            if (is_init != (f->role == ROLE_INIT))
                continue;
        }
        f->seen++;
        if (f->nth != 0 && f->seen != f->nth)
            continue;
        in_shim = 1;
        if (f->has_arg)
            log_line("inject %s=%ld %ld %s pid=%ld\n", f->name, f->arg, f->seen, f->action_text,
                     (long)get_syscall()(SYS_getpid, 0, 0, 0, 0, 0, 0));
        else
            log_line("inject %s %ld %s pid=%ld\n", f->name, f->seen, f->action_text,
                     (long)get_syscall()(SYS_getpid, 0, 0, 0, 0, 0, 0));
        in_shim = 0;
        if (f->action == ACTION_KILL) {
            long self = get_syscall()(SYS_getpid, 0, 0, 0, 0, 0, 0);
            /* A namespace's PID 1 ignores SIGKILL from inside: it dies by exiting at once. */
            if (self != 1)
                get_syscall()(SYS_kill, self, SIGKILL, 0, 0, 0, 0);
            for (;;)
                get_syscall()(SYS_exit_group, 137, 0, 0, 0, 0, 0);
        }
        if (f->action == ACTION_HANG) {
            struct timespec t = {60, 0};
            while (nanosleep(&t, &t) < 0 && errno == EINTR)
                ;
            return 0;
        }
        return f->action;
    }
    return 0;
}

#define RA __builtin_return_address(0)
#define FAIL_WITH(name, arg, failure)                                                              \
    do {                                                                                           \
        int err_ = decide(name, (long)(arg), RA);                                                  \
        if (err_) {                                                                                \
            errno = err_;                                                                          \
            return failure;                                                                        \
        }                                                                                          \
    } while (0)

/* After the module made a child in new namespaces: record what the test must see gone. */
static void log_clone(long pid)
{
    char path[64], text[1024], pidns[64] = "", mntns[64] = "";
    struct stat st;
    unsigned long long start = 0;

    if (!log_path[0] || pid <= 0)
        return;
    int saved = errno;
    in_shim = 1;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = (int)get_syscall()(SYS_openat, AT_FDCWD, (long)path, O_RDONLY | O_CLOEXEC, 0, 0, 0);
    if (fd >= 0) {
        long n = get_syscall()(SYS_read, fd, (long)text, sizeof text - 1, 0, 0, 0);
        get_syscall()(SYS_close, fd, 0, 0, 0, 0, 0);
        text[n > 0 ? n : 0] = '\0';
        char *p = strrchr(text, ')');
        /* field 22 (starttime); p points at field 2's end, so skip 20 fields */
        for (int field = 2; p && field < 22; field++)
            p = strchr(p + 1, ' ');
        if (p)
            start = strtoull(p + 1, NULL, 10);
    }
    snprintf(path, sizeof path, "/proc/%ld/ns/pid", pid);
    if (stat(path, &st) == 0)
        snprintf(pidns, sizeof pidns, "%lu", (unsigned long)st.st_ino);
    snprintf(path, sizeof path, "/proc/%ld/ns/mnt", pid);
    if (stat(path, &st) == 0)
        snprintf(mntns, sizeof mntns, "%lu", (unsigned long)st.st_ino);
    log_line("clone pid=%ld start=%llu pidns=%s mntns=%s\n", pid, start, pidns, mntns);
    in_shim = 0;
    errno = saved;
}

/* ---- the wrappers ------------------------------------------------------------------------- */

long syscall(long number, ...)
{
    va_list ap;
    long a[6];
    const char *name = NULL;

    va_start(ap, number);
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    switch (number) {
    /* The module sets ids with raw system calls (glibc's wrappers broadcast to threads). */
#ifdef SYS_setresuid32
    case SYS_setresuid32: name = "setresuid"; break;
    case SYS_setresgid32: name = "setresgid"; break;
    case SYS_setgroups32: name = "setgroups"; break;
#else
    case SYS_setresuid: name = "setresuid"; break;
    case SYS_setresgid: name = "setresgid"; break;
    case SYS_setgroups: name = "setgroups"; break;
#endif
    case 457: name = "statmount"; break; /* SYS_statmount, newer than some build hosts' headers */
    case 458: name = "listmount"; break;
    case SYS_close_range: name = "close_range"; break;
    case SYS_execveat: name = "execveat"; break;
    case SYS_pidfd_open: name = "pidfd_open"; break;
    case SYS_pidfd_send_signal: name = "pidfd_send_signal"; break;
    default: break;
    }
    if (name) {
        int err = decide(name, a[0], RA);
        if (err) {
            errno = err;
            return -1;
        }
    }
    return get_syscall()(number, a[0], a[1], a[2], a[3], a[4], a[5]);
}

/* The module's clone: the child shares our memory and we are suspended until it execs or dies
 * (CLONE_VFORK), so the record is written once the child is the init, or is gone. */
int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...)
{
    va_list ap;
    pid_t *parent_tid, *child_tid;
    void *tls;

    va_start(ap, arg);
    parent_tid = va_arg(ap, pid_t *);
    tls = va_arg(ap, void *);
    child_tid = va_arg(ap, pid_t *);
    va_end(ap);
    FAIL_WITH("clone", 0, -1);
    int result = get_clone()(fn, stack, flags, arg, parent_tid, tls, child_tid);
    if (result > 0 && !in_shim) {
        int saved = errno;
        in_shim = 1;
        int module = from_module(RA);
        in_shim = 0;
        if (module)
            log_clone(result);
        errno = saved;
    }
    return result;
}

int mount(const char *source, const char *target, const char *type, unsigned long flags,
          const void *data)
{
    FAIL_WITH("mount", 0, -1);
    return get_mount()(source, target, type, flags, data);
}

void *mmap(void *address, size_t length, int protection, int flags, int fd, off_t offset)
{
    FAIL_WITH("mmap", 0, MAP_FAILED);
    return get_mmap()(address, length, protection, flags, fd, offset);
}

int mprotect(void *address, size_t length, int protection)
{
    FAIL_WITH("mprotect", 0, -1);
    return get_mprotect()(address, length, protection);
}

int pipe2(int fds[2], int flags)
{
    FAIL_WITH("pipe2", 0, -1);
    return get_pipe2()(fds, flags);
}

int memfd_create(const char *name, unsigned int flags)
{
    FAIL_WITH("memfd_create", 0, -1);
    return get_memfd_create()(name, flags);
}

int setns(int fd, int nstype)
{
    FAIL_WITH("setns", 0, -1);
    return get_setns()(fd, nstype);
}

int prctl(int option, ...)
{
    va_list ap;
    unsigned long a[4];
    va_start(ap, option);
    for (int i = 0; i < 4; i++)
        a[i] = va_arg(ap, unsigned long);
    va_end(ap);
    FAIL_WITH("prctl", option, -1);
    return get_prctl()(option, a[0], a[1], a[2], a[3]);
}

int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    long arg;
    va_start(ap, cmd);
    arg = va_arg(ap, long);
    va_end(ap);
    FAIL_WITH("fcntl", cmd, -1);
    return get_fcntl()(fd, cmd, arg);
}

ssize_t write(int fd, const void *buf, size_t count)
{
    FAIL_WITH("write", 0, -1);
    return get_write()(fd, buf, count);
}

ssize_t read(int fd, void *buf, size_t count)
{
    FAIL_WITH("read", 0, -1);
    return get_read()(fd, buf, count);
}

/* read() into a buffer of known size, under _FORTIFY_SOURCE: the same call to the test. */
ssize_t __read_chk(int fd, void *buf, size_t count, size_t size)
{
    FAIL_WITH("read", 0, -1);
    return get___read_chk()(fd, buf, count, size);
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    FAIL_WITH("poll", 0, -1);
    return get_poll()(fds, nfds, timeout);
}

int chdir(const char *path)
{
    FAIL_WITH("chdir", 0, -1);
    return get_chdir()(path);
}

int dup3(int oldfd, int newfd, int flags)
{
    FAIL_WITH("dup3", 0, -1);
    return get_dup3()(oldfd, newfd, flags);
}

int setgroups(size_t size, const gid_t *list)
{
    FAIL_WITH("setgroups", 0, -1);
    return get_setgroups()(size, list);
}

int setresuid(uid_t r, uid_t e, uid_t s)
{
    FAIL_WITH("setresuid", 0, -1);
    return get_setresuid()(r, e, s);
}

int setresgid(gid_t r, gid_t e, gid_t s)
{
    FAIL_WITH("setresgid", 0, -1);
    return get_setresgid()(r, e, s);
}

/* The selector is the resource (RLIMIT_NOFILE is 7, RLIMIT_FSIZE 1). */
int setrlimit(__rlimit_resource_t resource, const struct rlimit *limit)
{
    FAIL_WITH("setrlimit", resource, -1);
    return get_setrlimit()(resource, limit);
}

FILE *fopen(const char *path, const char *mode)
{
    FAIL_WITH("fopen", 0, NULL);
    return get_fopen()(path, mode);
}

int socket(int domain, int type, int protocol)
{
    FAIL_WITH("socket", 0, -1);
    return get_socket()(domain, type, protocol);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    FAIL_WITH("bind", 0, -1);
    return get_bind()(fd, addr, len);
}

int listen(int fd, int backlog)
{
    FAIL_WITH("listen", 0, -1);
    return get_listen()(fd, backlog);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    FAIL_WITH("connect", 0, -1);
    return get_connect()(fd, addr, len);
}

int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
{
    FAIL_WITH("getsockopt", 0, -1);
    return get_getsockopt()(fd, level, name, value, len);
}

int mkdir(const char *path, mode_t mode)
{
    FAIL_WITH("mkdir", 0, -1);
    return get_mkdir()(path, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;
    va_start(ap, flags);
    mode = (mode_t)va_arg(ap, int);
    va_end(ap);
    FAIL_WITH("open", 0, -1);
    return get_open()(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    mode_t mode;
    va_start(ap, flags);
    mode = (mode_t)va_arg(ap, int);
    va_end(ap);
    FAIL_WITH("openat", 0, -1);
    return get_openat()(dirfd, path, flags, mode);
}

int fstat(int fd, struct stat *st)
{
    FAIL_WITH("fstat", 0, -1);
    return get_fstat()(fd, st);
}

int flock(int fd, int operation)
{
    FAIL_WITH("flock", 0, -1);
    return get_flock()(fd, operation);
}

int unlinkat(int dirfd, const char *path, int flags)
{
    FAIL_WITH("unlinkat", 0, -1);
    return get_unlinkat()(dirfd, path, flags);
}

/* The lookups report failure through their return value, not errno. */
int getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t size,
               struct passwd **result)
{
    int err = decide("getpwnam_r", 0, RA);
    if (err) {
        *result = NULL;
        return err;
    }
    return get_getpwnam_r()(name, pw, buf, size, result);
}

int getgrnam_r(const char *name, struct group *gr, char *buf, size_t size, struct group **result)
{
    int err = decide("getgrnam_r", 0, RA);
    if (err) {
        *result = NULL;
        return err;
    }
    return get_getgrnam_r()(name, gr, buf, size, result);
}

int getgrouplist(const char *user, gid_t group, gid_t *groups, int *ngroups)
{
    if (decide("getgrouplist", 0, RA))
        return -1; /* *ngroups unchanged: "the list did not fit" with no size to grow to */
    return get_getgrouplist()(user, group, groups, ngroups);
}

int pam_get_item(const pam_handle_t *pamh, int type, const void **item)
{
    if (decide("pam_get_item", 0, RA))
        return PAM_BAD_ITEM;
    return get_pam_get_item()(pamh, type, item);
}

int pam_set_data(pam_handle_t *pamh, const char *name, void *data,
                 void (*cleanup)(pam_handle_t *, void *, int))
{
    if (decide("pam_set_data", 0, RA))
        return PAM_BUF_ERR;
    return get_pam_set_data()(pamh, name, data, cleanup);
}

void *calloc(size_t count, size_t size)
{
    if (resolving_alloc) {
        void *p = arena_alloc(count * size);
        if (p)
            memset(p, 0, count * size);
        return p;
    }
    resolve_alloc();
    if (decide("calloc", 0, RA)) {
        errno = ENOMEM;
        return NULL;
    }
    return real_calloc(count, size);
}

void *malloc(size_t size)
{
    if (resolving_alloc)
        return arena_alloc(size);
    resolve_alloc();
    if (decide("malloc", 0, RA)) {
        errno = ENOMEM;
        return NULL;
    }
    return real_malloc(size);
}
