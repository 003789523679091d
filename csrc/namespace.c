#include "namespace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <grp.h>
#include <linux/securebits.h>
#include <linux/capability.h>
#include <sys/resource.h>

#include "init/protocol.h"

#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* The init program, embedded by init/blob.S. */
extern const unsigned char pu_init_blob[];
extern const unsigned char pu_init_blob_end[];

/* How long the caller waits for PID 1 to come up or to go away before it gives up: far longer
 * than either takes, short enough that a login never hangs for good. */
#define READY_TIMEOUT_MS 10000
#define EXIT_TIMEOUT_MS 10000

/* The soft RLIMIT_NOFILE the caller gets while the module opens its few descriptors: the user's
 * own (ulimit -n before su) must not decide whether isolation happens. */
#define CALLER_NOFILE 1024
/* Below this the caller's own descriptors and ours may not fit: see check_user_limits. */
#define MIN_CALLER_FDS 16

_Static_assert(PU_MAX_SESSIONS_LIMIT <= PU_INIT_MAX_JOINED,
               "max_sessions must fit the init's table of joined sessions");

/* scope=user: where a user's namespace can be found. Root-only, and in /run so that a reboot
 * forgets it. */
#define STATE_DIR "/run/pam_unshare"
#define LISTEN_BACKLOG 128

/* The init's resource limits, set whatever the caller inherited from the user (ulimit -n, -f,
 * -v, -t before su): none may make the init fail or die. */
static const struct init_limit {
    int resource;
    rlim_t value;
} INIT_LIMITS[] = {
    {RLIMIT_NOFILE, PU_INIT_NOFILE}, {RLIMIT_FSIZE, RLIM_INFINITY}, {RLIMIT_AS, RLIM_INFINITY},
    {RLIMIT_DATA, RLIM_INFINITY},    {RLIMIT_STACK, 8u << 20},      {RLIMIT_CPU, RLIM_INFINITY},
    {RLIMIT_CORE, 0},
};

/* Steps of the child before it becomes the init; their index crosses the ready pipe. */
enum child_step {
    STEP_IDENTITY,
    STEP_LIMITS,
    STEP_PROPAGATION,
    STEP_MOUNT_PROC,
    STEP_COVER_PROCFS,
    STEP_MEMFD,
    STEP_WRITE_INIT,
    STEP_SEAL_INIT,
    STEP_CHDIR,
    STEP_LISTEN,
    STEP_MOVE_FDS,
    STEP_CLOSE_FDS,
    STEP_DROP_GROUPS,
    STEP_SECUREBITS,
    STEP_DROP_BOUNDING,
    STEP_DROP_AMBIENT,
    STEP_NO_NEW_PRIVS,
    STEP_EXEC_INIT,
    STEP_COUNT
};

static const char *const CHILD_STEP_NAMES[STEP_COUNT] = {
    [STEP_IDENTITY] = "setting the session init's uid and gid to 0",
    [STEP_LIMITS] = "setting the resource limits of the session init",
    [STEP_PROPAGATION] = "setting mount propagation of / in the session",
    [STEP_MOUNT_PROC] = "mounting the session's /proc",
    [STEP_COVER_PROCFS] = "covering the other procfs mounts of the session",
    [STEP_MEMFD] = "creating the memfd for the session init",
    [STEP_WRITE_INIT] = "writing the session init",
    [STEP_SEAL_INIT] = "sealing the session init",
    [STEP_CHDIR] = "changing the session init's directory to /",
    [STEP_LISTEN] = "creating the socket of the user's namespace",
    [STEP_MOVE_FDS] = "passing descriptors to the session init",
    [STEP_CLOSE_FDS] = "closing inherited descriptors in the session init",
    [STEP_DROP_GROUPS] = "dropping supplementary groups of the session init",
    [STEP_SECUREBITS] = "locking securebits of the session init",
    [STEP_DROP_BOUNDING] = "dropping the capability bounding set of the session init",
    [STEP_DROP_AMBIENT] = "clearing ambient capabilities of the session init",
    [STEP_NO_NEW_PRIVS] = "setting no_new_privs on the session init",
    [STEP_EXEC_INIT] = "executing the session init",
};

struct child_report {
    int32_t step;
    int32_t err;
};

static int fail(struct pu_failure *why, const char *step, int err)
{
    *why = pu_failure_of(step, err);
    return -1;
}

static void close_if_open(int *fd)
{
    if (*fd >= 0) {
        int saved = errno;
        close(*fd);
        *fd = -1;
        errno = saved;
    }
}

/* The one cleanup idiom: a descriptor that goes out of scope is closed, unless steal_fd() handed
 * it on. */
#define autoclose __attribute__((cleanup(close_if_open)))

static long monotonic_us(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000000L + now.tv_nsec / 1000;
}

static long monotonic_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Waits until FD is readable, retrying after signals; 0 when readable, -1 with errno set
 * (ETIMEDOUT once TIMEOUT_MS has passed). */
static int wait_readable(int fd, int timeout_ms)
{
    long deadline = monotonic_ms() + timeout_ms;
    for (;;) {
        long left = deadline - monotonic_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int ready;
        if (left < 0)
            left = 0;
        ready = poll(&pfd, 1, (int)left);
        if (ready > 0)
            return 0;
        if (ready == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR)
            return -1;
    }
}

/* ---- the child: becomes the session's PID 1 ------------------------------------------------ */

__attribute__((noreturn)) static void child_failed(int ready_fd, enum child_step step)
{
    struct child_report report = {.step = step, .err = errno};
    ssize_t ignored = write(ready_fd, &report, sizeof report);
    (void)ignored;
    _exit(127);
}

static int create_init_program(int ready_fd)
{
    size_t size = (size_t)(pu_init_blob_end - pu_init_blob);
    size_t done = 0;
    /* MFD_EXEC states the intent where vm.memfd_noexec exists; older kernels reject the flag. */
    int fd = memfd_create("pam_unshare-init", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
    if (fd < 0 && errno == EINVAL)
        fd = memfd_create("pam_unshare-init", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        child_failed(ready_fd, STEP_MEMFD);
    while (done < size) {
        ssize_t n = write(fd, pu_init_blob + done, size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            child_failed(ready_fd, STEP_WRITE_INIT);
        done += (size_t)n;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0)
        child_failed(ready_fd, STEP_SEAL_INIT);
    return fd;
}

/* mountinfo(5) writes blanks, tabs, newlines and backslashes of a path as \ooo: undone in place. */
static void unescape_octal(char *text)
{
    char *out = text;
    for (; *text; text++) {
        if (text[0] == '\\' && text[1] >= '0' && text[1] <= '3' && text[2] >= '0' &&
            text[2] <= '7' && text[3] >= '0' && text[3] <= '7') {
            *out++ = (char)((text[1] - '0') * 64 + (text[2] - '0') * 8 + (text[3] - '0'));
            text += 3;
        } else {
            *out++ = *text;
        }
    }
    *out = '\0';
}

/* From one mountinfo line: the mount ID and mount point of a procfs mount other than /proc and
 * what lies below it (the session's /proc covers those). 0 when the line is anything else. */
static int other_procfs(char *line, unsigned long *id, char **point)
{
    char *fields[5], *separator, *cursor = line;

    for (int i = 0; i < 5; i++) {
        fields[i] = strsep(&cursor, " ");
        if (fields[i] == NULL)
            return 0;
    }
    separator = cursor ? strstr(cursor, " - ") : NULL;
    if (separator == NULL || strncmp(separator + 3, "proc ", 5) != 0)
        return 0;
    unescape_octal(fields[4]);
    if (strcmp(fields[4], "/proc") == 0 || strncmp(fields[4], "/proc/", 6) == 0)
        return 0;
    *id = strtoul(fields[0], NULL, 10);
    *point = fields[4];
    return 1;
}

/* Mounts the session's procfs on top of the mount with ID, reached through POINT. The path was
 * read a moment ago and a user may own a directory on it: the mount is pinned by an O_PATH
 * descriptor whose mount ID must be ID, and the new procfs goes on exactly that. 0 when the
 * mount is gone meanwhile (nothing to cover), -1 with errno on failure. */
static int cover_procfs_mount(unsigned long id, const char *point)
{
    struct statx where;
    char through[64];
    autoclose int fd = open(point, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR || errno == ELOOP ? 0 : -1;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &where) < 0)
        return -1;
    if (!(where.stx_mask & STATX_MNT_ID) || where.stx_mnt_id != id)
        return 0; /* the path leads elsewhere now: not the procfs mount that was listed */
    snprintf(through, sizeof through, "/proc/self/fd/%d", fd);
    return mount("proc", through, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

/* The session inherits every procfs the host has mounted elsewhere (a chroot's /proc, a bind of
 * /proc): each would list the host's processes. A procfs of the session's own goes on top of
 * each. The whole table is read before anything is mounted: the new mounts join the table. */
static void cover_other_procfs(int ready_fd)
{
    char *table = NULL, *cursor, *line;
    size_t size = 0;
    FILE *mounts = fopen("/proc/self/mountinfo", "re");
    FILE *copy = open_memstream(&table, &size);
    char chunk[8192];
    size_t got;

    if (mounts == NULL || copy == NULL)
        child_failed(ready_fd, STEP_COVER_PROCFS);
    while ((got = fread(chunk, 1, sizeof chunk, mounts)) > 0)
        fwrite(chunk, 1, got, copy);
    if (ferror(mounts) || fclose(copy) != 0)
        child_failed(ready_fd, STEP_COVER_PROCFS);
    fclose(mounts);
    for (cursor = table; (line = strsep(&cursor, "\n")) != NULL;) {
        unsigned long id;
        char *point;
        if (other_procfs(line, &id, &point) && cover_procfs_mount(id, point) < 0)
            child_failed(ready_fd, STEP_COVER_PROCFS);
    }
    free(table);
}

/* The descriptors the init gets, at the numbers of protocol.h; -1: none. */
struct init_fds {
    int lifeline, ready, listener, program, slot;
};

/* Closes every inherited descriptor but the ones in FDS (-1: none): first, so that what the
 * child opens next gets a low number whatever the user's RLIMIT_NOFILE, and the caller's socket,
 * pty and pipes are never kept alive by PID 1. */
static void keep_only(const struct init_fds *given)
{
    int keep[5] = {given->lifeline, given->ready, given->listener, given->program, given->slot};
    unsigned int next = 0;

    /* A handful of numbers: sort them, then close the gaps between. */
    for (int i = 1; i < 5; i++)
        for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
            int swap = keep[j];
            keep[j] = keep[j - 1];
            keep[j - 1] = swap;
        }
    for (int i = 0; i < 5; i++) {
        if (keep[i] < 0 || (unsigned int)keep[i] < next)
            continue;
        if ((unsigned int)keep[i] > next && syscall(SYS_close_range, next, keep[i] - 1, 0) < 0)
            child_failed(given->ready, STEP_CLOSE_FDS);
        next = (unsigned int)keep[i] + 1;
    }
    if (syscall(SYS_close_range, next, ~0U, 0) < 0)
        child_failed(given->ready, STEP_CLOSE_FDS);
}

/* Moves each of FDS (nothing else is open: keep_only) to the number of protocol.h. A descriptor
 * sitting on another's number is moved out of the way to the lowest free one, which exists below
 * PU_INIT_LAST_FD + 1 (five descriptors, eight numbers): no RLIMIT_NOFILE above that is needed. */
static void arrange_fds(struct init_fds *given)
{
    enum { N = 5 };
    int *fds[N] = {&given->lifeline, &given->ready, &given->listener, &given->program,
                   &given->slot};
    const int targets[N] = {PU_INIT_LIFELINE_FD, PU_INIT_READY_FD, PU_INIT_LISTEN_FD,
                            PU_INIT_PROGRAM_FD, PU_INIT_SLOT_FD};

    for (int i = 0; i < N; i++) {
        int old = *fds[i];
        if (old < 0)
            continue;
        if (old == targets[i]) {
            /* Already in place, but still close-on-exec from pipe2 or open: the init needs it. */
            if (targets[i] != PU_INIT_PROGRAM_FD && fcntl(old, F_SETFD, 0) < 0)
                child_failed(given->ready, STEP_MOVE_FDS);
            continue;
        }
        for (int j = 0; j < N; j++) {
            if (j != i && *fds[j] == targets[i]) {
                int moved = fcntl(*fds[j], F_DUPFD_CLOEXEC, 0);
                if (moved < 0)
                    child_failed(given->ready, STEP_MOVE_FDS);
                *fds[j] = moved; /* the old number is replaced by dup3 below */
            }
        }
        /* The program is exec'd through its fd and needs no copy in the init. */
        if (dup3(old, targets[i], targets[i] == PU_INIT_PROGRAM_FD ? O_CLOEXEC : 0) < 0)
            child_failed(given->ready, STEP_MOVE_FDS);
        close(old);
        *fds[i] = targets[i];
    }
}

/* scope=user: the socket later sessions of the user connect to. Made here, by the init-to-be,
 * so that SO_PEERCRED names the init to whoever connects. */
static void socket_address(struct sockaddr_un *addr, const char *path)
{
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    snprintf(addr->sun_path, sizeof addr->sun_path, "%s", path);
}

static int listen_for_joiners(const char *path, int ready_fd)
{
    struct sockaddr_un addr;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    socket_address(&addr, path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(fd, LISTEN_BACKLOG) < 0)
        child_failed(ready_fd, STEP_LISTEN);
    return fd;
}

/* PID 1 keeps uid 0 (so the session's user cannot signal or ptrace it) but no capability, now
 * or after exec. */
static void drop_privileges(int ready_fd)
{
    /* uid 0 gains no capability at exec, and nothing can undo that. */
    const unsigned long securebits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED |
                                     SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED |
                                     SECBIT_KEEP_CAPS_LOCKED | SECBIT_NO_CAP_AMBIENT_RAISE |
                                     SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;

    if (setgroups(0, NULL) < 0)
        child_failed(ready_fd, STEP_DROP_GROUPS);
    if (prctl(PR_SET_SECUREBITS, securebits, 0, 0, 0) < 0)
        child_failed(ready_fd, STEP_SECUREBITS);
    for (int cap = 0;; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL && cap > CAP_SETPCAP)
                break; /* past the last capability this kernel knows */
            child_failed(ready_fd, STEP_DROP_BOUNDING);
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        child_failed(ready_fd, STEP_DROP_AMBIENT);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_failed(ready_fd, STEP_NO_NEW_PRIVS);
}

/* su and sudo open the session while the real uid is still the calling user's: an init that kept
 * it could be signalled (stopped, killed) by that user from outside the namespace. Then limits of
 * our own, before anything they could break. */
static void take_identity(int ready_fd)
{
    if (setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
        child_failed(ready_fd, STEP_IDENTITY);
    for (size_t i = 0; i < sizeof INIT_LIMITS / sizeof INIT_LIMITS[0]; i++) {
        struct rlimit limit = {INIT_LIMITS[i].value, INIT_LIMITS[i].value};
        if (setrlimit(INIT_LIMITS[i].resource, &limit) == 0)
            continue;
        /* Without CAP_SYS_RESOURCE (some containers) a hard limit cannot be raised: take as much
         * as it allows. The caller has checked that it is enough (check_user_limits). */
        if (errno != EPERM || getrlimit(INIT_LIMITS[i].resource, &limit) < 0)
            child_failed(ready_fd, STEP_LIMITS);
        if (INIT_LIMITS[i].value < limit.rlim_max)
            limit.rlim_max = INIT_LIMITS[i].value;
        limit.rlim_cur = limit.rlim_max;
        if (setrlimit(INIT_LIMITS[i].resource, &limit) < 0)
            child_failed(ready_fd, STEP_LIMITS);
    }
    /* The socket of scope=user is bound with it: never the user's umask. */
    umask(077);
}

__attribute__((noreturn)) static void become_init(const struct pu_options *opts,
                                                  struct init_fds fds, const char *listen_path)
{
    unsigned long propagation = opts->propagation == PU_PROPAGATION_PRIVATE ? MS_PRIVATE : MS_SLAVE;
    char max_joined[16];
    char *const argv[] = {PU_INIT_ARGV0,
                          opts->on_logout == PU_ON_LOGOUT_KILL ? PU_INIT_KILL : PU_INIT_LINGER,
                          listen_path ? PU_INIT_USER : NULL, max_joined, NULL};
    char *const envp[] = {NULL};
    int ready = fds.ready;

    snprintf(max_joined, sizeof max_joined, "%d",
             opts->max_sessions > 0 ? opts->max_sessions : PU_INIT_MAX_JOINED);
    take_identity(ready);
    keep_only(&fds);
    /* Before any mount: with / shared (every systemd host) a mount or unmount here would
     * otherwise propagate back to the host. */
    if (mount("none", "/", NULL, MS_REC | propagation, NULL) < 0)
        child_failed(ready, STEP_PROPAGATION);
    /* Mounted on top of the old /proc rather than in its place: under systemd /proc has mounts
     * below it and cannot be unmounted, and the old one stays out of reach underneath. */
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        child_failed(ready, STEP_MOUNT_PROC);
    cover_other_procfs(ready);
    fds.program = create_init_program(ready);
    if (chdir("/") < 0)
        child_failed(ready, STEP_CHDIR);
    if (listen_path)
        fds.listener = listen_for_joiners(listen_path, ready);
    arrange_fds(&fds);
    drop_privileges(PU_INIT_READY_FD);
    syscall(SYS_execveat, PU_INIT_PROGRAM_FD, "", argv, envp, AT_EMPTY_PATH);
    child_failed(PU_INIT_READY_FD, STEP_EXEC_INIT);
}

/* ---- the caller ------------------------------------------------------------------------------ */

/* Kills a PID 1 that never became a session and waits until it, and so its namespace, is gone. */
static void discard_init(int pidfd)
{
    siginfo_t info;
    syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    if (wait_readable(pidfd, EXIT_TIMEOUT_MS) == 0)
        waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | WNOHANG | __WALL);
}

static int await_ready(int ready_fd, struct pu_failure *why)
{
    struct child_report report;
    ssize_t got;

    if (wait_readable(ready_fd, READY_TIMEOUT_MS) < 0)
        return fail(why, "waiting for the session init to start", errno);
    do {
        got = read(ready_fd, &report, sizeof report);
    } while (got < 0 && errno == EINTR);
    if (got == 1 && ((const char *)&report)[0] == PU_INIT_READY)
        return 0;
    if (got == (ssize_t)sizeof report && report.step >= 0 && report.step < STEP_COUNT)
        return fail(why, CHILD_STEP_NAMES[report.step], report.err);
    if (got < 0)
        return fail(why, "reading the session init's ready signal", errno);
    return fail(why, "starting the session init (it exited before it was ready)", ECHILD);
}

/* fork() into new PID and mount namespaces, with a pidfd for the child. clone3 first; the old
 * clone() where clone3 is refused with ENOSYS (seccomp profiles of some container runtimes,
 * valgrind). */
static long clone_init(int *pidfd)
{
    const unsigned long flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_PIDFD;
    struct clone_args args;
    long pid;

    memset(&args, 0, sizeof args);
    args.flags = flags;
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    args.exit_signal = 0;
    pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid < 0 && errno == ENOSYS) {
        /* Exit signal 0 in the low byte; CLONE_PIDFD stores the fd through parent_tid. No new
         * stack: like fork(), the child runs on a copy of ours. */
        pid = syscall(SYS_clone, flags, NULL, pidfd, NULL, NULL);
    }
    return pid;
}

/* Moves the caller into the mount namespace of PIDFD and makes its future children members of
 * its PID namespace, in one atomic setns(). */
static int join_namespaces(int pidfd, struct pu_failure *why)
{
    char cwd[PATH_MAX];
    struct stat left, reached;
    int have_cwd = getcwd(cwd, sizeof cwd) != NULL && stat(".", &left) == 0;

    if (setns(pidfd, CLONE_NEWPID | CLONE_NEWNS) < 0)
        return fail(why, "joining the session's namespaces (setns)", errno);
    /* setns() into a mount namespace moves the working directory to its root; the namespace is
     * a copy of the caller's, so the same path leads back. The path is walked as root, and a user
     * who swapped a component for a symlink since getcwd() would be led into a directory they
     * cannot reach (another user's 0700 home): only the directory left, by device and inode,
     * will do, otherwise /. */
    if (!have_cwd || chdir(cwd) < 0 || stat(".", &reached) < 0 || reached.st_dev != left.st_dev ||
        reached.st_ino != left.st_ino) {
        if (chdir("/") < 0) {
            /* Cannot happen for root in a copy of its own tree; nothing left to fall back to. */
        }
    }
    return 0;
}

static void init_session(struct pu_session *session, const struct pu_options *opts)
{
    session->pidfd = -1;
    session->lifeline_fd = -1;
    session->opener = getpid();
    session->init_pid = 0;
    session->on_logout = opts->on_logout;
    session->kill_on_close = opts->on_logout == PU_ON_LOGOUT_KILL && opts->scope == PU_SCOPE_SESSION;
}

/* Hands FD over to a new owner: the cleanup attribute of its old home then closes nothing. */
static int steal_fd(int *fd)
{
    int stolen = *fd;
    *fd = -1;
    return stolen;
}

/* Starts PID 1 in new namespaces and joins them; LISTEN_PATH (NULL: none) is the socket on which
 * it accepts later sessions of the same user, SLOT (-1: none) the quota slot it holds. */
static int start_namespace(const struct pu_options *opts, const char *listen_path, int slot,
                           struct pu_session *session, struct pu_failure *why)
{
    autoclose int lifeline_read = -1, lifeline_write = -1, ready_read = -1, ready_write = -1;
    autoclose int pidfd = -1;
    int fds[2];
    long pid, started, cloned, ready;

    if (pipe2(fds, O_CLOEXEC) < 0)
        return fail(why, "creating the session lifeline pipe", errno);
    lifeline_read = fds[0];
    lifeline_write = fds[1];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return fail(why, "creating the session ready pipe", errno);
    ready_read = fds[0];
    ready_write = fds[1];

    /* A fresh child in fresh namespaces: the caller itself changes only at the very end, in one
     * atomic setns(), so a failure anywhere before leaves it untouched. exit_signal 0 keeps the
     * init out of callers' SIGCHLD handlers and waitpid(-1) loops. */
    started = monotonic_us();
    pid = clone_init(&pidfd);
    if (pid == 0) {
        struct init_fds given = {.lifeline = lifeline_read, .ready = ready_write, .listener = -1,
                                 .program = -1, .slot = slot};
        become_init(opts, given, listen_path);
    }
    if (pid < 0)
        return fail(why, "creating the PID and mount namespaces", errno);
    cloned = monotonic_us();
    close_if_open(&lifeline_read);
    close_if_open(&ready_write);

    if (await_ready(ready_read, why) < 0) {
        discard_init(pidfd);
        return -1;
    }
    ready = monotonic_us();
    if (join_namespaces(pidfd, why) < 0) {
        discard_init(pidfd);
        return -1;
    }
    session->clone_us = cloned - started;
    session->ready_us = ready - cloned;
    session->join_us = monotonic_us() - ready;
    session->pidfd = steal_fd(&pidfd);
    session->lifeline_fd = steal_fd(&lifeline_write);
    session->init_pid = (pid_t)pid;
    return 0;
}

/* The caller's RLIMIT_NOFILE comes from the user (ulimit -n before su): raised for the few
 * descriptors the module needs, then put back as it was, so the user's shell inherits the user's
 * own choice. Root callers may raise it; where that fails, the calls that follow report it. */
struct saved_nofile {
    struct rlimit limit;
    int changed;
};

static void raise_nofile(struct saved_nofile *saved)
{
    struct rlimit wanted;

    saved->changed = 0;
    if (getrlimit(RLIMIT_NOFILE, &saved->limit) < 0)
        return;
    wanted = saved->limit;
    if (wanted.rlim_cur != RLIM_INFINITY && wanted.rlim_cur < CALLER_NOFILE)
        wanted.rlim_cur = CALLER_NOFILE;
    if (wanted.rlim_max != RLIM_INFINITY && wanted.rlim_max < wanted.rlim_cur)
        wanted.rlim_max = wanted.rlim_cur;
    if (wanted.rlim_cur == saved->limit.rlim_cur && wanted.rlim_max == saved->limit.rlim_max)
        return;
    if (setrlimit(RLIMIT_NOFILE, &wanted) == 0) {
        saved->changed = 1;
        return;
    }
    /* No CAP_SYS_RESOURCE: up to the hard limit the user left. */
    wanted = saved->limit;
    wanted.rlim_cur = wanted.rlim_max;
    saved->changed = setrlimit(RLIMIT_NOFILE, &wanted) == 0;
}

static void restore_nofile(const struct saved_nofile *saved)
{
    if (saved->changed)
        setrlimit(RLIMIT_NOFILE, &saved->limit);
}

/* Whether the limits the caller inherited from the user leave room for the session: where root
 * cannot raise a hard limit (no CAP_SYS_RESOURCE), a user who lowered it would otherwise make the
 * init fail, and under onerr=succeed choose a session without a namespace. Refused outright. */
static int check_user_limits(struct pu_failure *why)
{
    struct rlimit nofile, fsize;
    rlim_t init_size = (rlim_t)(pu_init_blob_end - pu_init_blob);

    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < MIN_CALLER_FDS) {
        *why = pu_failure_of("checking the caller's RLIMIT_NOFILE (the user's limit)", EMFILE);
        why->refuse_always = 1;
        return -1;
    }
    if (getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_max < init_size) {
        /* The child raises it when it may: probe whether it may, and put it back. */
        struct rlimit raised = {fsize.rlim_cur, RLIM_INFINITY};
        if (setrlimit(RLIMIT_FSIZE, &raised) < 0) {
            *why = pu_failure_of("checking the caller's RLIMIT_FSIZE (the user's limit)", EFBIG);
            why->refuse_always = 1;
            return -1;
        }
        setrlimit(RLIMIT_FSIZE, &fsize);
    }
    return 0;
}

/* ---- the state directory: scope=user sockets, per-user quotas ------------------------------ */

/* The state directory, made if missing; refused unless it is a root-owned directory that nobody
 * else may write, since whoever could plant a socket there could hand out namespaces. */
static int open_state_dir(struct pu_failure *why)
{
    struct stat st;
    autoclose int fd = -1;

    if (mkdir(STATE_DIR, 0700) < 0 && errno != EEXIST)
        return fail(why, "creating " STATE_DIR, errno);
    fd = open(STATE_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return fail(why, "opening " STATE_DIR, errno);
    if (fstat(fd, &st) < 0 || st.st_uid != 0 || (st.st_mode & 077) != 0)
        return fail(why, "checking that " STATE_DIR " is root-only", EPERM);
    return steal_fd(&fd);
}

/* max_sessions for scope=session: the user's quota is a file of MAX bytes in the state dir, and
 * each live session's init holds a write lock on one byte of it (an open file description lock,
 * which the init inherits and the kernel drops when the init is gone, however it ends). Returns
 * the locked descriptor to hand to the init, or -1 with *WHY set: the file cannot be used, or
 * all MAX slots are held. */
static int take_quota_slot(int dir, uid_t uid, int max, struct pu_failure *why)
{
    char name[64];
    autoclose int fd = -1;

    snprintf(name, sizeof name, "user-%u.sessions", (unsigned)uid);
    fd = openat(dir, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return fail(why, "opening the session quota of the user", errno);
    for (int slot = 0; slot < max; slot++) {
        struct flock lock = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = slot,
                             .l_len = 1};
        if (fcntl(fd, F_OFD_SETLK, &lock) == 0)
            return steal_fd(&fd);
        if (errno != EAGAIN && errno != EACCES)
            return fail(why, "taking a slot of the user's session quota", errno);
    }
    /* The user's own doing, like their rlimits: onerr=succeed must not turn it into a session
     * without a namespace. */
    fail(why, "counting the user's sessions (max_sessions reached)", EUSERS);
    why->refuse_always = 1;
    return -1;
}

/* scope=session: a quota slot (max_sessions), then a namespace of its own. */
static int start_counted(const struct pu_options *opts, uid_t uid, struct pu_session *session,
                         struct pu_failure *why)
{
    autoclose int dir = -1, slot = -1;

    if (opts->max_sessions > 0) {
        if ((dir = open_state_dir(why)) < 0)
            return -1;
        if ((slot = take_quota_slot(dir, uid, opts->max_sessions, why)) < 0)
            return -1;
        close_if_open(&dir); /* one descriptor fewer for a caller the user held to few */
    }
    /* The init holds its own copy of SLOT; ours is closed on return, the lock stays. */
    return start_namespace(opts, NULL, slot, session, why);
}

typedef int starter(const struct pu_options *opts, uid_t uid, struct pu_session *session,
                    struct pu_failure *why);

/* Both ways in: room for the caller's descriptors, the user's limits checked, START, and the
 * caller's RLIMIT_NOFILE as the user left it. */
static int start_within_limits(starter *start, const struct pu_options *opts, uid_t uid,
                               struct pu_session *session, struct pu_failure *why)
{
    struct saved_nofile nofile;
    int rc;

    init_session(session, opts);
    raise_nofile(&nofile);
    rc = check_user_limits(why);
    if (rc == 0)
        rc = start(opts, uid, session, why);
    restore_nofile(&nofile);
    return rc;
}

int pu_session_start(const struct pu_options *opts, uid_t uid, struct pu_session *session,
                     struct pu_failure *why)
{
    return start_within_limits(start_counted, opts, uid, session, why);
}

/* ---- scope=user ------------------------------------------------------------------------------ */

/* Tries to join the running namespace of the user behind SOCKET_PATH. 1: joined; 0: there is
 * none (no socket, nobody listening, or its PID 1 is on its way out); -1: failure, including a
 * namespace that holds max_sessions sessions already. */
static int join_user_namespace(const char *socket_path, struct pu_session *session,
                               struct pu_failure *why)
{
    struct sockaddr_un addr;
    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    struct pollfd still_there;
    char answer = 0;
    autoclose int sock = -1, pidfd = -1;
    ssize_t got;

    socket_address(&addr, socket_path);
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return fail(why, "creating a socket to join the user's namespace", errno);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        if (errno == ENOENT || errno == ECONNREFUSED)
            return 0;
        return fail(why, "connecting to the user's namespace", errno);
    }
    /* PID 1 answers once it has counted us: from then on it stays while we hold the socket. */
    if (wait_readable(sock, READY_TIMEOUT_MS) < 0)
        return fail(why, "waiting for the user's namespace to accept the session", errno);
    do {
        got = read(sock, &answer, 1);
    } while (got < 0 && errno == EINTR);
    /* Only an answer that never comes (EOF, reset: PID 1 is on its way out) means "none". Any
     * other error is a failure: taken for "none", it would start a second namespace. */
    if (got < 0 && errno != ECONNRESET)
        return fail(why, "reading the answer of the user's namespace", errno);
    if (got == 1 && answer == PU_INIT_FULL) {
        fail(why, "joining the user's namespace (max_sessions reached)", EUSERS);
        why->refuse_always = 1;
        return -1;
    }
    if (got != 1 || answer != PU_INIT_JOINED)
        return 0;
    errno = 0;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) < 0 || peer.uid != 0)
        return fail(why, "checking who answers on the user's namespace socket",
                    errno ? errno : EPERM);
    pidfd = (int)syscall(SYS_pidfd_open, peer.pid, 0);
    if (pidfd < 0) {
        if (errno == ESRCH)
            return 0;
        return fail(why, "taking a pidfd of the user's namespace init", errno);
    }
    /* The peer still holds the connection after the pidfd was taken, so the pidfd is that
     * process and not a newcomer that reused its number. */
    still_there = (struct pollfd){.fd = sock, .events = POLLRDHUP};
    got = poll(&still_there, 1, 0);
    if (got > 0)
        return 0;
    if (got < 0)
        return fail(why, "checking that the user's namespace init is still there", errno);
    if (join_namespaces(pidfd, why) < 0)
        return -1;
    session->pidfd = steal_fd(&pidfd);
    session->lifeline_fd = steal_fd(&sock);
    session->init_pid = peer.pid;
    return 1;
}

/* Under the user's lock: joins the user's namespace, or starts it when none is alive. */
static int join_or_start(const struct pu_options *opts, int dir, uid_t uid,
                         struct pu_session *session, struct pu_failure *why)
{
    char socket_name[64], socket_path[128];
    int rc;

    snprintf(socket_name, sizeof socket_name, "user-%u.sock", (unsigned)uid);
    snprintf(socket_path, sizeof socket_path, STATE_DIR "/%s", socket_name);
    rc = join_user_namespace(socket_path, session, why);
    if (rc != 0)
        return rc < 0 ? -1 : 0;
    /* None alive: whatever socket is left belongs to a namespace that died. */
    if (unlinkat(dir, socket_name, 0) < 0 && errno != ENOENT)
        return fail(why, "removing the stale socket of the user's namespace", errno);
    return start_namespace(opts, socket_path, -1, session, why);
}

/* Two logins of one user at once must end in one namespace: find-or-create under a lock (released
 * when LOCK is closed). */
static int start_user_locked(const struct pu_options *opts, uid_t uid, struct pu_session *session,
                             struct pu_failure *why)
{
    char lock_name[64];
    autoclose int dir = -1, lock = -1;
    int rc;

    snprintf(lock_name, sizeof lock_name, "user-%u.lock", (unsigned)uid);
    if ((dir = open_state_dir(why)) < 0)
        return -1;
    lock = openat(dir, lock_name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (lock < 0)
        return fail(why, "opening the lock of the user's namespace", errno);
    while ((rc = flock(lock, LOCK_EX)) < 0 && errno == EINTR)
        ;
    if (rc < 0)
        return fail(why, "locking the user's namespace", errno);
    return join_or_start(opts, dir, uid, session, why);
}

int pu_session_start_user(const struct pu_options *opts, uid_t uid, struct pu_session *session,
                          struct pu_failure *why)
{
    return start_within_limits(start_user_locked, opts, uid, session, why);
}

int pu_session_end(struct pu_session *session, struct pu_failure *why)
{
    int rc = 0;

    if (session->pidfd < 0 || getpid() != session->opener) {
        pu_session_release(session);
        return 0;
    }
    /* Kill without waiting: PID 1's exit kills everything in the namespace, but completes only
     * once all of it has been reaped, and a caller like sudo (its monitor) or sshd (its session
     * child) reaps its own child in the namespace only after pam_close_session returns. */
    if (session->kill_on_close &&
        syscall(SYS_pidfd_send_signal, session->pidfd, SIGKILL, NULL, 0) < 0 && errno != ESRCH)
        rc = fail(why, "killing the session init (pidfd_send_signal)", errno);
    /* Otherwise closing the lifeline is the whole message: PID 1 leaves once no session holds
     * one and (linger) the namespace is empty. */
    pu_session_release(session);
    return rc;
}

void pu_session_release(struct pu_session *session)
{
    close_if_open(&session->lifeline_fd);
    close_if_open(&session->pidfd);
}
