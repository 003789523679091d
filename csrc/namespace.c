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
#include <sys/statfs.h>
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
/* listmount(2) and statmount(2), Linux 6.8: the same numbers on every architecture. The build
 * host's headers may predate them; the ABI below is the kernel's (include/uapi/linux/mount.h). */
#ifndef SYS_statmount
#define SYS_statmount 457
#endif
#ifndef SYS_listmount
#define SYS_listmount 458
#endif
/* The 32-bit id calls where the architecture has both (i386, arm): the plain ones take 16 bits.
 * Called raw: glibc's wrappers in a process that ever had a second thread broadcast the change to
 * every thread, under a lock that the suspended caller (see clone_init) may be needed to free. */
#ifdef SYS_setresuid32
#define PU_SYS_SETRESUID SYS_setresuid32
#define PU_SYS_SETRESGID SYS_setresgid32
#define PU_SYS_SETGROUPS SYS_setgroups32
#else
#define PU_SYS_SETRESUID SYS_setresuid
#define PU_SYS_SETRESGID SYS_setresgid
#define PU_SYS_SETGROUPS SYS_setgroups
#endif
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x4000U
#endif
#define PU_LSMT_ROOT 0xffffffffffffffffULL
#define PU_STATMOUNT_SB_BASIC 0x1U
#define PU_STATMOUNT_MNT_POINT 0x10U
#define PU_PROC_SUPER_MAGIC 0x9fa0

struct pu_mnt_id_req {
    uint32_t size, spare;
    uint64_t mnt_id, param;
};

struct pu_statmount {
    uint32_t size, mnt_opts;
    uint64_t mask;
    uint32_t sb_dev_major, sb_dev_minor;
    uint64_t sb_magic;
    uint32_t sb_flags, fs_type;
    uint64_t mnt_id, mnt_parent_id;
    uint32_t mnt_id_old, mnt_parent_id_old;
    uint64_t mnt_attr, mnt_propagation, mnt_peer_group, mnt_master, propagate_from;
    uint32_t mnt_root, mnt_point;
    uint64_t spare2[50];
    char str[];
};
_Static_assert(sizeof(struct pu_statmount) == 512, "struct statmount of the kernel's ABI");
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
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

/* The host's procfs mounts outside /proc a session can cover: far more than a host has (chroots,
 * binds of /proc); beyond it the session fails rather than leave one uncovered. */
#define MAX_OTHER_PROCFS 64
/* The longest start of a mountinfo line the child reads whole: ID to type, with two paths of
 * PATH_MAX escaped four bytes to one. */
#define MOUNTINFO_LINE_MAX (40 * 1024)
/* The clone child's stack: the mountinfo buffer and a few frames. */
#define CHILD_STACK_SIZE (96 * 1024)

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
    STEP_PROCFS_HIDDEN,
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
    [STEP_PROCFS_HIDDEN] = "covering a procfs mount hidden under another mount",
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
    int32_t step; /* enum child_step, or CHILD_NEEDS_TIMEOUT */
    int32_t err;
};

#define CHILD_NEEDS_TIMEOUT (-1)

static int fail(struct pu_failure *why, const char *step, int err)
{
    *why = pu_failure_of(step, err);
    return -1;
}

/* The same for what the user caused (see pu_failure.refuse_always): refused whatever onerr says. */
static int refuse(struct pu_failure *why, const char *step, int err)
{
    *why = pu_refusal_of(step, err);
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

/* Hands FD over to a new owner: the cleanup attribute of its old home then closes nothing. */
static int steal_fd(int *fd)
{
    int stolen = *fd;
    *fd = -1;
    return stolen;
}

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

/* A suspended caller (see clone_init) waits for the child without a timeout, so the child must
 * not do anything that can block for good. Covering another procfs walks its path, which can
 * (a stalled NFS or FUSE mount on the way): the child that finds one asks to be started again
 * unsuspended, where the caller's timeout applies. */
__attribute__((noreturn)) static void child_needs_timeout(int ready_fd)
{
    struct child_report report = {.step = CHILD_NEEDS_TIMEOUT, .err = 0};
    ssize_t ignored = write(ready_fd, &report, sizeof report);
    (void)ignored;
    _exit(126);
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

/* /proc and what lies below it: the session's own /proc covers those. */
static int under_proc(const char *point)
{
    return strcmp(point, "/proc") == 0 || strncmp(point, "/proc/", 6) == 0;
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
    if (under_proc(fields[4]))
        return 0;
    *id = strtoul(fields[0], NULL, 10);
    *point = fields[4];
    return 1;
}

/* "/proc/self/fd/N" for descriptor FD, without stdio: the clone child calls nothing that may
 * take a lock of the caller's. */
static void fd_path(char out[32], int fd)
{
    char digits[12];
    int n = 0;
    const char prefix[] = "/proc/self/fd/";

    memcpy(out, prefix, sizeof prefix - 1);
    do {
        digits[n++] = (char)('0' + fd % 10);
        fd /= 10;
    } while (fd > 0);
    for (int i = 0; i < n; i++)
        out[sizeof prefix - 1 + i] = digits[n - 1 - i];
    out[sizeof prefix - 1 + n] = '\0';
}

/* The procfs mounts found so far, pinned; covered once the whole table is read. */
struct procfs_pins {
    int fds[MAX_OTHER_PROCFS];
    int count;
    int may_walk; /* 0: the caller is suspended; only say whether there is one (found) */
    int found;
    int hidden; /* a listed procfs that its path does not lead to: see pin_into */
};

/* Pins the procfs mount with ID, reached through POINT, by an O_PATH descriptor. The path was
 * read a moment ago and a user may own a directory on it: the descriptor counts only if its mount
 * ID is ID. The descriptor, or -1 with errno; EXDEV: the path leads to another mount. */
static int pin_procfs_mount(uint64_t id, unsigned int id_kind, const char *point)
{
    struct statx where;
    autoclose int fd = open(point, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

    if (fd < 0)
        return -1;
    if (statx(fd, "", AT_EMPTY_PATH, id_kind, &where) < 0)
        return -1;
    if (!(where.stx_mask & id_kind) || where.stx_mnt_id != id) {
        errno = EXDEV;
        return -1;
    }
    return steal_fd(&fd);
}

/* Whether the mount with unique ID is still in the session's table (statmount, Linux 6.8). */
static int mount_listed(uint64_t id)
{
    struct pu_mnt_id_req which = {.size = sizeof which, .mnt_id = id,
                                  .param = PU_STATMOUNT_SB_BASIC};
    struct pu_statmount info;

    return syscall(SYS_statmount, &which, &info, sizeof info, 0) == 0 || errno != ENOENT;
}

/* Pins the procfs at POINT with mount ID of kind ID_KIND into PINS (see pin_procfs_mount): 0, or
 * -1 with errno. */
static int pin_into(struct procfs_pins *pins, uint64_t id, unsigned int id_kind,
                    const char *point)
{
    int fd;

    pins->found = 1;
    if (!pins->may_walk)
        return 0;
    fd = pin_procfs_mount(id, id_kind, point);
    if (fd < 0) {
        /* Gone since it was listed: nothing to cover. Only statmount can tell (mountinfo has no
         * lookup by ID): there, a procfs out of reach is taken for hidden. */
        if (id_kind == STATX_MNT_ID_UNIQUE && !mount_listed(id))
            return 0;
        /* Still there, yet the path does not lead to it: something is mounted over it (a user's
         * FUSE mount on a directory above it), or the walk was refused or failed. Left as it is,
         * the user unmounts the cover inside the session and reads the host's processes; a
         * stalled walk is the caller's timeout (see await_ready). */
        pins->hidden = 1;
        return -1;
    }
    if (pins->count == MAX_OTHER_PROCFS) {
        close(fd);
        errno = E2BIG;
        return -1;
    }
    pins->fds[pins->count++] = fd;
    return 0;
}

/* Whether the (cut) mountinfo LINE holds its separator and the whole file system type after it. */
static int type_is_whole(const char *line)
{
    const char *separator = strstr(line, " - ");
    return separator != NULL && strchr(separator + 3, ' ') != NULL;
}

/* A procfs could not be pinned: hidden (see pin_into), or another failure. */
__attribute__((noreturn)) static void procfs_failed(int ready_fd, const struct procfs_pins *pins)
{
    child_failed(ready_fd, pins->hidden ? STEP_PROCFS_HIDDEN : STEP_COVER_PROCFS);
}

/* One mountinfo line (NUL-terminated, possibly only its start: see cover_other_procfs): pinned
 * when it is another procfs. 0, or -1 with errno. */
static int consider_mount(char *line, struct procfs_pins *pins)
{
    unsigned long id;
    char *point;

    if (!other_procfs(line, &id, &point))
        return 0;
    return pin_into(pins, id, STATX_MNT_ID, point);
}

/* Finds and pins the procfs mounts outside /proc through /proc/self/mountinfo (kernels before
 * 6.8). The table is streamed through a buffer on the child's stack (no allocator: see
 * clone_init). Of a line longer than the buffer only its start is kept:
 * every field needed (ID, mount point, type) comes before the long ones (mount source and super
 * options: overlayfs layers), and a mount point that does not fit fails the session rather than
 * go unchecked. */
static void find_procfs_in_mountinfo(int ready_fd, struct procfs_pins *pins)
{
    _Static_assert(MOUNTINFO_LINE_MAX > 2 * 4 * PATH_MAX + 1024, "two escaped paths must fit");
    char buffer[MOUNTINFO_LINE_MAX + 1];
    size_t start = 0, end = 0;
    int skipping = 0, eof = 0;
    autoclose int table = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);

    if (table < 0)
        child_failed(ready_fd, STEP_COVER_PROCFS);
    for (;;) {
        char *line = buffer + start;
        char *newline = memchr(line, '\n', end - start);
        if (newline != NULL || (eof && end > start)) {
            size_t length = newline ? (size_t)(newline - line) : end - start;
            line[length] = '\0';
            if (!skipping && consider_mount(line, pins) < 0)
                procfs_failed(ready_fd, pins);
            skipping = 0;
            start += newline ? length + 1 : length;
            continue;
        }
        if (eof)
            break;
        if (start == 0 && end == MOUNTINFO_LINE_MAX) {
            /* A line longer than the buffer: judged by its start, the rest of it skipped. */
            buffer[end] = '\0';
            /* The type must be there whole, with the blank after it: a start cut inside it
             * (a user can size a path for that) would pass a procfs for something else. */
            if (!skipping && !type_is_whole(buffer)) {
                errno = ENAMETOOLONG;
                child_failed(ready_fd, STEP_COVER_PROCFS);
            }
            if (!skipping && consider_mount(buffer, pins) < 0)
                procfs_failed(ready_fd, pins);
            skipping = 1;
            end = 0;
        } else if (start > 0) {
            memmove(buffer, buffer + start, end - start);
            end -= start;
            start = 0;
        }
        for (;;) {
            ssize_t got = read(table, buffer + end, MOUNTINFO_LINE_MAX - end);
            if (got < 0 && errno == EINTR)
                continue;
            if (got < 0)
                child_failed(ready_fd, STEP_COVER_PROCFS);
            eof = got == 0;
            end += (size_t)got;
            break;
        }
    }
}

/* The same through listmount(2) and statmount(2) (Linux 6.8): no text to make and parse, and no
 * walk through the session's fresh /proc, which is most of the mountinfo way's cost. 0, or -1
 * with errno ENOSYS before anything was pinned: the kernel has neither, use mountinfo. */
static int find_procfs_by_listmount(int ready_fd, struct procfs_pins *pins)
{
    enum { BATCH = 256 };
    uint64_t ids[BATCH];
    struct pu_mnt_id_req list = {.size = sizeof list, .mnt_id = PU_LSMT_ROOT, .param = 0};
    union {
        struct pu_statmount info;
        char bytes[sizeof(struct pu_statmount) + PATH_MAX];
    } mount;

    for (;;) {
        long count = syscall(SYS_listmount, &list, ids, BATCH, 0);
        if (count < 0 && errno == ENOSYS && list.param == 0)
            return -1;
        if (count < 0)
            child_failed(ready_fd, STEP_COVER_PROCFS);
        for (long i = 0; i < count; i++) {
            struct pu_mnt_id_req which = {.size = sizeof which, .mnt_id = ids[i]};
            /* The type first: the mount point is made only for the few procfs mounts. */
            which.param = PU_STATMOUNT_SB_BASIC;
            if (syscall(SYS_statmount, &which, &mount, sizeof mount, 0) < 0) {
                if (errno == ENOENT)
                    continue; /* unmounted meanwhile */
                child_failed(ready_fd, STEP_COVER_PROCFS);
            }
            if (mount.info.sb_magic != PU_PROC_SUPER_MAGIC)
                continue;
            which.param = PU_STATMOUNT_MNT_POINT;
            if (syscall(SYS_statmount, &which, &mount, sizeof mount, 0) < 0) {
                if (errno == ENOENT)
                    continue;
                child_failed(ready_fd, STEP_COVER_PROCFS);
            }
            if (!(mount.info.mask & PU_STATMOUNT_MNT_POINT)) {
                errno = EOPNOTSUPP;
                child_failed(ready_fd, STEP_COVER_PROCFS);
            }
            if (under_proc(mount.info.str + mount.info.mnt_point))
                continue;
            if (pin_into(pins, ids[i], STATX_MNT_ID_UNIQUE,
                         mount.info.str + mount.info.mnt_point) < 0)
                procfs_failed(ready_fd, pins);
        }
        if (count < BATCH)
            return 0;
        list.param = ids[count - 1];
    }
}

/* The session inherits every procfs the host has mounted elsewhere (a chroot's /proc, a bind of
 * /proc): each would list the host's processes. A procfs of the session's own goes on top of
 * each: all are found and pinned first, and covered after, since the new mounts would join the
 * table being read. */
static void cover_other_procfs(int ready_fd, int may_walk)
{
    struct procfs_pins pins = {.count = 0, .may_walk = may_walk, .found = 0};

    if (find_procfs_by_listmount(ready_fd, &pins) < 0)
        find_procfs_in_mountinfo(ready_fd, &pins);
    if (pins.found && !may_walk)
        child_needs_timeout(ready_fd);
    for (int i = 0; i < pins.count; i++) {
        char through[32];
        fd_path(through, pins.fds[i]);
        if (mount("proc", through, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            child_failed(ready_fd, STEP_COVER_PROCFS);
        close(pins.fds[i]);
    }
}

/* The descriptors the init gets, at the numbers of protocol.h; -1: none. */
struct init_fds {
    int lifeline, ready, listener, program, slot;
};

/* What the clone child needs to become PID 1. The child runs on the caller's memory (CLONE_VM):
 * this lives in the caller's frame, which stays put while the caller is suspended (CLONE_VFORK),
 * and everything in it is made by the caller, so that the child formats and allocates nothing. */
struct child_start {
    const struct pu_options *opts;
    struct init_fds fds;
    const char *listen_path;
    char max_joined[16]; /* argv[3] of the init */
    struct sockaddr_un listen_address; /* of listen_path */
    int suspended;       /* the caller waits in clone_init, without a timeout */
    /* Written by the child (shared memory when suspended): when each phase ended. */
    long phase_end_us[PU_PHASE_COUNT];
};

/* The names of the phases in the debug line, in the order they run. */
static const char *const PHASE_NAMES[PU_PHASE_COUNT] = {
    [PU_PHASE_CLONE] = "clone",         [PU_PHASE_IDENTITY] = "identity",
    [PU_PHASE_MOUNTS] = "mounts",
    [PU_PHASE_PROCFS] = "procfs",       [PU_PHASE_PROGRAM] = "program",
    [PU_PHASE_DESCRIPTORS] = "fds",     [PU_PHASE_PRIVILEGES] = "privileges",
    [PU_PHASE_EXEC] = "exec",
};

static void phase_done(struct child_start *start, enum pu_phase phase)
{
    start->phase_end_us[phase] = monotonic_us();
}

/* Closes every inherited descriptor but the ones in FDS (-1: none): first, so that what the
 * child opens next gets a low number whatever the user's RLIMIT_NOFILE, and the caller's socket,
 * pty and pipes are never kept alive by PID 1. */
static int keep_only(const struct init_fds *given, unsigned int how)
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
        if ((unsigned int)keep[i] > next &&
            syscall(SYS_close_range, next, keep[i] - 1, how) < 0)
            return -1;
        next = (unsigned int)keep[i] + 1;
    }
    return syscall(SYS_close_range, next, ~0U, how) < 0 ? -1 : 0;
}

/* File systems where closing a descriptor cannot wait on anyone (no ->flush that asks a server
 * or a daemon): pipes, sockets, terminals, memory and local disks. */
static int closes_without_waiting(int fd)
{
    static const unsigned long LOCAL[] = {
        0x50495045, /* pipefs */   0x534F434B, /* sockfs */   0x09041934, /* anon_inode */
        0x1cd1,     /* devpts */   0x01021994, /* tmpfs, devtmpfs */ 0x858458f6, /* ramfs */
        0x9fa0,     /* proc */     0x62656572, /* sysfs */    0x6e736673, /* nsfs */
        0x50494446, /* pidfs */    0xEF53,     /* ext2-4 */   0x58465342, /* xfs */
        0x9123683E, /* btrfs */    0xF2F52010, /* f2fs */     0x73717368, /* squashfs */
    };
    struct statfs where;

    if (fstatfs(fd, &where) < 0)
        return 0;
    for (size_t i = 0; i < sizeof LOCAL / sizeof LOCAL[0]; i++)
        if ((unsigned long)where.f_type == LOCAL[i])
            return 1;
    return 0;
}

/* Whether FD is one of the init's own (GIVEN), not one of the caller's. */
static int owned_by_init(const struct init_fds *given, int fd)
{
    return fd == given->lifeline || fd == given->ready || fd == given->listener ||
           fd == given->program || fd == given->slot;
}

/* Moves each of FDS (unsuspended, nothing else is open: keep_only) to the number of protocol.h. A descriptor
 * sitting on another's number is moved out of the way to the lowest free one, which exists below
 * PU_INIT_LAST_FD + 1 (five descriptors, eight numbers): no RLIMIT_NOFILE above that is needed. */
static void arrange_fds(struct init_fds *given, int suspended)
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
        /* dup3 closes a caller's descriptor sitting on the number (suspended, they are still
         * open): only where closing cannot wait (see keep_only's caller). */
        if (suspended && fcntl(targets[i], F_GETFD) >= 0 && !owned_by_init(given, targets[i]) &&
            !closes_without_waiting(targets[i]))
            child_needs_timeout(given->ready);
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

static int listen_for_joiners(const struct sockaddr_un *addr, int ready_fd)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (const struct sockaddr *)addr, sizeof *addr) < 0 ||
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

    if (syscall(PU_SYS_SETGROUPS, 0, NULL) < 0)
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
    if (syscall(PU_SYS_SETRESGID, 0, 0, 0) < 0 || syscall(PU_SYS_SETRESUID, 0, 0, 0) < 0)
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

__attribute__((noreturn)) static void become_init(struct child_start *start)
{
    const struct pu_options *opts = start->opts;
    unsigned long propagation = opts->propagation == PU_PROPAGATION_PRIVATE ? MS_PRIVATE : MS_SLAVE;
    char *const argv[] = {PU_INIT_ARGV0,
                          opts->on_logout == PU_ON_LOGOUT_KILL ? PU_INIT_KILL : PU_INIT_LINGER,
                          start->listen_path ? PU_INIT_USER : NULL, start->max_joined, NULL};
    char *const envp[] = {NULL};
    struct init_fds fds = start->fds;
    int ready = fds.ready;

    phase_done(start, PU_PHASE_CLONE);
    take_identity(ready);
    if (start->suspended) {
        /* Closing a descriptor may wait on whoever serves its file (FLUSH to a user's FUSE
         * daemon, which the user can stop): the suspended child only marks the caller's close-on-
         * exec. The exec closes them after it has let the caller go, and a stall there is the
         * caller's timeout. The caller's descriptors stay open until then, so the child wants the
         * room of its own descriptor limit; held to less (the user's ulimit -n), it asks for an
         * unsuspended start, which closes them first. */
        struct rlimit nofile;
        if (getrlimit(RLIMIT_NOFILE, &nofile) < 0 || nofile.rlim_cur < PU_INIT_NOFILE)
            child_needs_timeout(ready);
        if (keep_only(&fds, CLOSE_RANGE_CLOEXEC) < 0) {
            if (errno == EINVAL) /* before Linux 5.11 */
                child_needs_timeout(ready);
            child_failed(ready, STEP_CLOSE_FDS);
        }
    } else if (keep_only(&fds, 0) < 0) {
        child_failed(ready, STEP_CLOSE_FDS);
    }
    phase_done(start, PU_PHASE_IDENTITY);
    /* Before any mount: with / shared (every systemd host) a mount or unmount here would
     * otherwise propagate back to the host. */
    if (mount("none", "/", NULL, MS_REC | propagation, NULL) < 0)
        child_failed(ready, STEP_PROPAGATION);
    /* Mounted on top of the old /proc rather than in its place: under systemd /proc has mounts
     * below it and cannot be unmounted, and the old one stays out of reach underneath. */
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        child_failed(ready, STEP_MOUNT_PROC);
    phase_done(start, PU_PHASE_MOUNTS);
    cover_other_procfs(ready, !start->suspended);
    phase_done(start, PU_PHASE_PROCFS);
    fds.program = create_init_program(ready);
    phase_done(start, PU_PHASE_PROGRAM);
    if (chdir("/") < 0)
        child_failed(ready, STEP_CHDIR);
    if (start->listen_path)
        fds.listener = listen_for_joiners(&start->listen_address, ready);
    arrange_fds(&fds, start->suspended);
    phase_done(start, PU_PHASE_DESCRIPTORS);
    drop_privileges(PU_INIT_READY_FD);
    phase_done(start, PU_PHASE_PRIVILEGES);
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

/* 0: the init runs; 1: the SUSPENDED child asks for a start unsuspended (child_needs_timeout);
 * -1: failed, *WHY says why. */
static int await_ready(int ready_fd, int suspended, struct pu_failure *why)
{
    struct child_report report;
    ssize_t got;

    if (wait_readable(ready_fd, READY_TIMEOUT_MS) < 0) {
        /* A user can stall what the child or the init-to-be waits on: the walk to a procfs
         * below their FUSE mount, or the close of a FUSE file they gave su as a descriptor
         * (FLUSH to a daemon they stopped). ETIMEDOUT is refused (pu_resource_ran_out). */
        return fail(why, "waiting for the session init to start", errno);
    }
    do {
        got = read(ready_fd, &report, sizeof report);
    } while (got < 0 && errno == EINTR);
    if (got == 1 && ((const char *)&report)[0] == PU_INIT_READY)
        return 0;
    if (got == (ssize_t)sizeof report && report.step == CHILD_NEEDS_TIMEOUT && suspended)
        return 1;
    /* A procfs to cover that cannot be covered, or the table of mounts that cannot be read
     * whole: a user may have arranged it (their FUSE mount over a directory above a procfs, a
     * mount point buried past what the buffers hold), so whatever onerr says, no session goes
     * without every procfs covered. */
    if (got == (ssize_t)sizeof report &&
        (report.step == STEP_PROCFS_HIDDEN || report.step == STEP_COVER_PROCFS))
        return refuse(why, CHILD_STEP_NAMES[report.step], report.err);
    if (got == (ssize_t)sizeof report && report.step >= 0 && report.step < STEP_COUNT)
        return fail(why, CHILD_STEP_NAMES[report.step], report.err);
    if (got < 0)
        return fail(why, "reading the session init's ready signal", errno);
    /* Dead without a word: killed, since every failure it sees it reports. The user cannot
     * signal it (it is uid 0 from birth), but the kernel kills on the user's behalf: the OOM
     * killer in a memory cgroup the user controls. No more onerr's to decide than ENOMEM is. */
    return refuse(why, "starting the session init (it exited before it was ready)", ECHILD);
}

static int child_main(void *start)
{
    become_init(start);
}

/* A new process in new PID and mount namespaces, with a pidfd for it, running on STACK.
 *
 * START->suspended: it shares the caller's memory until it execs the init (CLONE_VM |
 * CLONE_VFORK, as posix_spawn does), with no copy of the caller's page tables at the clone and
 * no teardown of that copy at the exec: most of what a login cost before. The caller is suspended
 * meanwhile, so the child touches nothing the caller uses at the same time; it calls no
 * allocator and nothing that takes a lock, and it does nothing that can block for good (see
 * child_needs_timeout): the caller cannot time it out.
 *
 * Otherwise, like fork(): the child works on a copy, and the caller waits with a timeout.
 *
 * All signals are blocked around the clone: no handler of the caller's may run in the child. */
static long clone_init(struct child_start *start, char *stack, size_t stack_size, int *pidfd)
{
    const int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_PIDFD |
                      (start->suspended ? CLONE_VM | CLONE_VFORK : 0);
    sigset_t all, saved;
    uid_t real, effective, saved_uid;
    int borrowed_real_uid = 0;
    long pid;
    int err;

    /* su and sudo run setuid from the user's shell, so the caller's real uid is the user's, and
     * a child born with it can be killed or stopped by that user until it takes uid 0: killed,
     * the session falls to onerr (with onerr=succeed, no namespace). The child is born root's:
     * the calling thread alone (the raw system call, not glibc's process-wide setresuid) holds
     * real uid 0 across the clone. */
    if (getresuid(&real, &effective, &saved_uid) == 0 && real != 0 && effective == 0)
        borrowed_real_uid = syscall(PU_SYS_SETRESUID, 0, -1, -1) == 0;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    /* Exit signal 0 (the low byte of FLAGS); CLONE_PIDFD stores the pidfd through parent_tid. */
    pid = clone(child_main, stack + stack_size, flags, start, pidfd, NULL, NULL);
    err = errno;
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    /* Cannot fail: the effective uid is 0. */
    if (borrowed_real_uid)
        syscall(PU_SYS_SETRESUID, real, -1, -1);
    errno = err;
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

/* The clone child's stack. Mapped for each login and unmapped once the child is done with it:
 * only the few pages the child touches are ever allocated, and the caller (su lives as long as
 * the session) keeps none of them; a guard page below catches an overflow, which would otherwise
 * write into the caller's memory. Under AddressSanitizer the stack is an array in the caller's
 * frame instead: ASan knows that one, and a noreturn call on a stack it does not know (the
 * child's _exit) makes it print a warning and drop its checks. */
struct child_stack {
    char *base;
    size_t size;
#if defined(__SANITIZE_ADDRESS__)
    char frame[CHILD_STACK_SIZE] __attribute__((aligned(16)));
#endif
};

static int child_stack_map(struct child_stack *stack)
{
#if defined(__SANITIZE_ADDRESS__)
    stack->base = stack->frame;
    stack->size = sizeof stack->frame;
    return 0;
#else
    long page = sysconf(_SC_PAGESIZE);
    size_t total = CHILD_STACK_SIZE + (size_t)page;
    char *mapped = mmap(NULL, total, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);

    if (mapped == MAP_FAILED)
        return -1;
    if (mprotect(mapped, (size_t)page, PROT_NONE) < 0) {
        int err = errno;
        munmap(mapped, total);
        errno = err;
        return -1;
    }
    stack->base = mapped + page;
    stack->size = CHILD_STACK_SIZE;
    return 0;
#endif
}

static void child_stack_unmap(struct child_stack *stack)
{
#if !defined(__SANITIZE_ADDRESS__)
    if (stack->base != NULL) {
        long page = sysconf(_SC_PAGESIZE);
        munmap(stack->base - page, stack->size + (size_t)page);
    }
#endif
    stack->base = NULL;
}

/* Whether the caller's address space or data size is limited (rlimits the user may have set). */
static int user_limits_memory(void)
{
    struct rlimit as, data;

    return (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) ||
           (getrlimit(RLIMIT_DATA, &data) == 0 && data.rlim_cur != RLIM_INFINITY);
}

/* One try of start_namespace, with the caller suspended during the child's work or not (see
 * clone_init). 0: started and joined; 1: the child asks for a try unsuspended; -1: failed. */
static int try_start(const struct pu_options *opts, const char *listen_path, int slot,
                     int suspended, struct pu_session *session, struct pu_failure *why)
{
    autoclose int lifeline_read = -1, lifeline_write = -1, ready_read = -1, ready_write = -1;
    autoclose int pidfd = -1;
    int fds[2], rc;
    long pid, started, cloned, ready;
    struct child_stack stack;
    struct child_start start;

    if (pipe2(fds, O_CLOEXEC) < 0)
        return fail(why, "creating the session lifeline pipe", errno);
    lifeline_read = fds[0];
    lifeline_write = fds[1];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return fail(why, "creating the session ready pipe", errno);
    ready_read = fds[0];
    ready_write = fds[1];
    memset(&start, 0, sizeof start);
    start.opts = opts;
    start.fds = (struct init_fds){.lifeline = lifeline_read, .ready = ready_write, .listener = -1,
                                  .program = -1, .slot = slot};
    start.listen_path = listen_path;
    if (listen_path)
        socket_address(&start.listen_address, listen_path);
    start.suspended = suspended;
    snprintf(start.max_joined, sizeof start.max_joined, "%d",
             opts->max_sessions > 0 ? opts->max_sessions : PU_INIT_MAX_JOINED);

    /* A fresh child in fresh namespaces: the caller itself changes only at the very end, in one
     * atomic setns(), so a failure anywhere before leaves it untouched. exit_signal 0 keeps the
     * init out of callers' SIGCHLD handlers and waitpid(-1) loops. */
    started = monotonic_us();
    if (child_stack_map(&stack) < 0) {
        /* The caller's RLIMIT_AS and RLIMIT_DATA are the user's (ulimit -v, -d before su): a
         * limit that leaves no room for the stack must not hand the session to onerr. */
        if (errno == ENOMEM && user_limits_memory())
            return refuse(why, "mapping the stack of the clone child (the user's limits)",
                          ENOMEM);
        return fail(why, "mapping the stack of the clone child", errno);
    }
    pid = clone_init(&start, stack.base, stack.size, &pidfd);
    if (pid < 0) {
        child_stack_unmap(&stack);
        /* EAGAIN (a pids limit of the caller's cgroup, which the user sets where systemd
         * delegates it) and ENOMEM are refused (pu_resource_ran_out). */
        return fail(why, "creating the PID and mount namespaces", errno);
    }
    cloned = monotonic_us();
    /* Suspended, the child has exec'd or died by now; otherwise it runs on a copy. */
    child_stack_unmap(&stack);
    close_if_open(&lifeline_read);
    close_if_open(&ready_write);

    rc = await_ready(ready_read, suspended, why);
    if (rc != 0) {
        discard_init(pidfd);
        return rc;
    }
    ready = monotonic_us();
    if (join_namespaces(pidfd, why) < 0) {
        discard_init(pidfd);
        return -1;
    }
    session->clone_us = cloned - started;
    session->suspended = suspended;
    if (suspended) {
        for (int phase = 0; phase < PU_PHASE_EXEC; phase++)
            session->phase_us[phase] = start.phase_end_us[phase] -
                                       (phase == 0 ? started : start.phase_end_us[phase - 1]);
        session->phase_us[PU_PHASE_EXEC] = cloned - start.phase_end_us[PU_PHASE_EXEC - 1];
    }
    session->ready_us = ready - cloned;
    session->join_us = monotonic_us() - ready;
    session->pidfd = steal_fd(&pidfd);
    session->lifeline_fd = steal_fd(&lifeline_write);
    session->init_pid = (pid_t)pid;
    return 0;
}

/* Starts PID 1 in new namespaces and joins them; LISTEN_PATH (NULL: none) is the socket on which
 * it accepts later sessions of the same user, SLOT (-1: none) the quota slot it holds. The
 * caller is suspended while the child works, unless the child must walk paths that can block
 * (procfs mounts to cover): then it starts again, and the caller waits with a timeout. */
static int start_namespace(const struct pu_options *opts, const char *listen_path, int slot,
                           struct pu_session *session, struct pu_failure *why)
{
    int rc = try_start(opts, listen_path, slot, 1, session, why);

    if (rc == 1)
        rc = try_start(opts, listen_path, slot, 0, session, why);
    return rc;
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
        return refuse(why, "checking the caller's RLIMIT_NOFILE (the user's limit)", EMFILE);
    }
    if (getrlimit(RLIMIT_FSIZE, &fsize) == 0 && fsize.rlim_max < init_size) {
        /* The child raises it when it may: probe whether it may, and put it back. */
        struct rlimit raised = {fsize.rlim_cur, RLIM_INFINITY};
        if (setrlimit(RLIMIT_FSIZE, &raised) < 0)
            return refuse(why, "checking the caller's RLIMIT_FSIZE (the user's limit)", EFBIG);
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
    return refuse(why, "counting the user's sessions (max_sessions reached)", EUSERS);
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
    long joining;

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
    if (got == 1 && answer == PU_INIT_FULL)
        return refuse(why, "joining the user's namespace (max_sessions reached)", EUSERS);
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
    joining = monotonic_us();
    if (join_namespaces(pidfd, why) < 0)
        return -1;
    session->join_us = monotonic_us() - joining;
    session->pidfd = steal_fd(&pidfd);
    session->lifeline_fd = steal_fd(&sock);
    session->init_pid = peer.pid;
    return 1;
}

/* Under the user's lock: joins the user's namespace, or starts it when none is alive. */
static int join_or_start(const struct pu_options *opts, int dir, uid_t uid,
                         struct pu_session *session, struct pu_failure *why)
{
    /* No longer than a socket address holds (108 bytes): then nothing is cut when it is bound. */
    char socket_name[64], socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
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

void pu_session_timing(const struct pu_session *session, char *text, size_t size)
{
    size_t used = 0;
    int n;

    if (session->clone_us == 0) { /* scope=user: joined a namespace that runs */
        snprintf(text, size, "joined the user's namespace, join %ld us", session->join_us);
        return;
    }
    if (!session->suspended) { /* procfs mounts to cover: a copy, no timing of its phases */
        snprintf(text, size, "child %ld us (not suspended: procfs mounts to cover), "
                 "init ready %ld us, join %ld us", session->clone_us, session->ready_us,
                 session->join_us);
        return;
    }
    n = snprintf(text, size, "child %ld us (", session->clone_us);

    for (int phase = 0; phase < PU_PHASE_COUNT && n >= 0 && (size_t)n < size - used; phase++) {
        used += (size_t)n;
        n = snprintf(text + used, size - used, "%s%s %ld", phase ? ", " : "", PHASE_NAMES[phase],
                     session->phase_us[phase]);
    }
    if (n >= 0 && (size_t)n < size - used) {
        used += (size_t)n;
        snprintf(text + used, size - used, "), init ready %ld us, join %ld us",
                 session->ready_us, session->join_us);
    }
}

void pu_session_release(struct pu_session *session)
{
    close_if_open(&session->lifeline_fd);
    close_if_open(&session->pidfd);
}
