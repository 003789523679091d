#include "namespace.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
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

/* The fds PID 1 finds at exec (see init/init.c). */
enum { INIT_LIFELINE_FD = 3, INIT_READY_FD = 4, INIT_LISTEN_FD = 5, INIT_PROGRAM_FD = 6 };

/* scope=user: where a user's namespace can be found. Root-only, and in /run so that a reboot
 * forgets it. */
#define STATE_DIR "/run/pam_unshare"
#define LISTEN_BACKLOG 128

/* Steps of the child before it becomes the init; their index crosses the ready pipe. */
enum child_step {
    STEP_PROPAGATION,
    STEP_MOUNT_PROC,
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
    [STEP_PROPAGATION] = "setting mount propagation of / in the session",
    [STEP_MOUNT_PROC] = "mounting the session's /proc",
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
    why->step = step;
    why->err = err;
    return -1;
}

static void close_if_open(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
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

/* Puts LIFELINE, READY, LISTENER (-1: none) and PROGRAM at the numbers the init expects and
 * closes everything else: the caller's socket, pty and pipes must not be kept alive by PID 1. */
static void arrange_fds(int lifeline, int ready, int listener, int program)
{
    int fds[4] = {lifeline, ready, listener, program};
    const int targets[4] = {INIT_LIFELINE_FD, INIT_READY_FD, INIT_LISTEN_FD, INIT_PROGRAM_FD};

    /* Above every target first, so that no dup2 overwrites a source. */
    for (int i = 0; i < 4; i++) {
        if (fds[i] < 0)
            continue;
        fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
        if (fds[i] < 0)
            child_failed(ready, STEP_MOVE_FDS);
    }
    ready = fds[1];
    if (syscall(SYS_close_range, 0, 9, 0) < 0)
        child_failed(ready, STEP_CLOSE_FDS);
    for (int i = 0; i < 4; i++) {
        /* The program is exec'd through its fd and needs no copy in the init. */
        if (fds[i] >= 0 && dup3(fds[i], targets[i], i == 3 ? O_CLOEXEC : 0) < 0)
            child_failed(ready, STEP_MOVE_FDS);
    }
    ready = INIT_READY_FD;
    if (syscall(SYS_close_range, INIT_PROGRAM_FD + 1, ~0U, 0) < 0)
        child_failed(ready, STEP_CLOSE_FDS);
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

__attribute__((noreturn)) static void become_init(const struct pu_options *opts, int lifeline,
                                                  int ready, const char *listen_path)
{
    unsigned long propagation = opts->propagation == PU_PROPAGATION_PRIVATE ? MS_PRIVATE : MS_SLAVE;
    char *const argv[] = {"pam_unshare-init",
                          opts->on_logout == PU_ON_LOGOUT_KILL ? "kill" : "linger",
                          listen_path ? "user" : NULL, NULL};
    char *const envp[] = {NULL};
    int listener = -1;
    int program;

    /* Before any mount: with / shared (every systemd host) a mount or unmount here would
     * otherwise propagate back to the host. */
    if (mount("none", "/", NULL, MS_REC | propagation, NULL) < 0)
        child_failed(ready, STEP_PROPAGATION);
    /* Mounted on top of the old /proc rather than in its place: under systemd /proc has mounts
     * below it and cannot be unmounted, and the old one stays out of reach underneath. */
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        child_failed(ready, STEP_MOUNT_PROC);
    program = create_init_program(ready);
    if (chdir("/") < 0)
        child_failed(ready, STEP_CHDIR);
    if (listen_path)
        listener = listen_for_joiners(listen_path, ready);
    arrange_fds(lifeline, ready, listener, program);
    drop_privileges(INIT_READY_FD);
    syscall(SYS_execveat, INIT_PROGRAM_FD, "", argv, envp, AT_EMPTY_PATH);
    child_failed(INIT_READY_FD, STEP_EXEC_INIT);
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
    if (got == 1 && ((const char *)&report)[0] == 'R')
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
    int have_cwd = getcwd(cwd, sizeof cwd) != NULL;

    if (setns(pidfd, CLONE_NEWPID | CLONE_NEWNS) < 0)
        return fail(why, "joining the session's namespaces (setns)", errno);
    /* setns() into a mount namespace moves the working directory to its root; the namespace is
     * a copy of the caller's, so the same path leads back. */
    if (!have_cwd || chdir(cwd) < 0) {
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

/* Starts PID 1 in new namespaces and joins them; LISTEN_PATH (NULL: none) is the socket on which
 * it accepts later sessions of the same user. */
static int start_namespace(const struct pu_options *opts, const char *listen_path,
                           struct pu_session *session, struct pu_failure *why)
{
    int lifeline[2] = {-1, -1};
    int ready[2] = {-1, -1};
    int pidfd = -1;
    long pid;

    if (pipe2(lifeline, O_CLOEXEC) < 0)
        return fail(why, "creating the session lifeline pipe", errno);
    if (pipe2(ready, O_CLOEXEC) < 0) {
        int err = errno;
        close(lifeline[0]);
        close(lifeline[1]);
        return fail(why, "creating the session ready pipe", err);
    }

    /* A fresh child in fresh namespaces: the caller itself changes only at the very end, in one
     * atomic setns(), so a failure anywhere before leaves it untouched. exit_signal 0 keeps the
     * init out of callers' SIGCHLD handlers and waitpid(-1) loops. */
    pid = clone_init(&pidfd);
    if (pid == 0) {
        close(lifeline[1]);
        close(ready[0]);
        become_init(opts, lifeline[0], ready[1], listen_path);
    }
    if (pid < 0) {
        int err = errno;
        close(lifeline[0]);
        close(lifeline[1]);
        close(ready[0]);
        close(ready[1]);
        return fail(why, "creating the PID and mount namespaces", err);
    }
    close(lifeline[0]);
    close(ready[1]);

    if (await_ready(ready[0], why) < 0 || join_namespaces(pidfd, why) < 0) {
        close(ready[0]);
        close(lifeline[1]);
        discard_init(pidfd);
        close(pidfd);
        return -1;
    }
    close(ready[0]);
    session->pidfd = pidfd;
    session->lifeline_fd = lifeline[1];
    session->init_pid = (pid_t)pid;
    return 0;
}

int pu_session_start(const struct pu_options *opts, struct pu_session *session,
                     struct pu_failure *why)
{
    init_session(session, opts);
    return start_namespace(opts, NULL, session, why);
}

/* ---- scope=user ------------------------------------------------------------------------------ */

/* The state directory, made if missing; refused unless it is a root-owned directory that nobody
 * else may write, since whoever could plant a socket there could hand out namespaces. */
static int open_state_dir(struct pu_failure *why)
{
    struct stat st;
    int fd;

    if (mkdir(STATE_DIR, 0700) < 0 && errno != EEXIST)
        return fail(why, "creating " STATE_DIR, errno);
    fd = open(STATE_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return fail(why, "opening " STATE_DIR, errno);
    if (fstat(fd, &st) < 0 || st.st_uid != 0 || (st.st_mode & 077) != 0) {
        close(fd);
        return fail(why, "checking that " STATE_DIR " is root-only", EPERM);
    }
    return fd;
}

/* Tries to join the running namespace of the user behind SOCKET_PATH. 1: joined; 0: there is
 * none (no socket, nobody listening, or its PID 1 is on its way out); -1: failure. */
static int join_user_namespace(const char *socket_path, struct pu_session *session,
                               struct pu_failure *why)
{
    struct sockaddr_un addr;
    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    struct pollfd still_there;
    char answer = 0;
    int sock, pidfd;
    ssize_t got;

    socket_address(&addr, socket_path);
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return fail(why, "creating a socket to join the user's namespace", errno);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int err = errno;
        close(sock);
        if (err == ENOENT || err == ECONNREFUSED)
            return 0;
        return fail(why, "connecting to the user's namespace", err);
    }
    /* PID 1 answers once it has counted us: from then on it stays while we hold the socket. */
    if (wait_readable(sock, READY_TIMEOUT_MS) < 0) {
        int err = errno;
        close(sock);
        return fail(why, "waiting for the user's namespace to accept the session", err);
    }
    do {
        got = read(sock, &answer, 1);
    } while (got < 0 && errno == EINTR);
    /* Only an answer that never comes (EOF, reset: PID 1 is on its way out) means "none". Any
     * other error is a failure: taken for "none", it would start a second namespace. */
    if (got < 0 && errno != ECONNRESET) {
        int err = errno;
        close(sock);
        return fail(why, "reading the answer of the user's namespace", err);
    }
    if (got != 1 || answer != 'J') {
        close(sock);
        return 0;
    }
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) < 0 || peer.uid != 0) {
        int err = errno ? errno : EPERM;
        close(sock);
        return fail(why, "checking who answers on the user's namespace socket", err);
    }
    pidfd = (int)syscall(SYS_pidfd_open, peer.pid, 0);
    if (pidfd < 0) {
        int err = errno;
        close(sock);
        if (err == ESRCH)
            return 0;
        return fail(why, "taking a pidfd of the user's namespace init", err);
    }
    /* The peer still holds the connection after the pidfd was taken, so the pidfd is that
     * process and not a newcomer that reused its number. */
    still_there = (struct pollfd){.fd = sock, .events = POLLRDHUP};
    got = poll(&still_there, 1, 0);
    if (got != 0) {
        int err = errno;
        close(pidfd);
        close(sock);
        if (got > 0)
            return 0;
        return fail(why, "checking that the user's namespace init is still there", err);
    }
    if (join_namespaces(pidfd, why) < 0) {
        close(pidfd);
        close(sock);
        return -1;
    }
    session->pidfd = pidfd;
    session->lifeline_fd = sock;
    session->init_pid = peer.pid;
    return 1;
}

int pu_session_start_user(const struct pu_options *opts, uid_t uid, struct pu_session *session,
                          struct pu_failure *why)
{
    char socket_name[64], socket_path[128], lock_name[64];
    int dir, lock, rc;

    init_session(session, opts);
    snprintf(socket_name, sizeof socket_name, "user-%u.sock", (unsigned)uid);
    snprintf(socket_path, sizeof socket_path, STATE_DIR "/%s", socket_name);
    snprintf(lock_name, sizeof lock_name, "user-%u.lock", (unsigned)uid);
    if ((dir = open_state_dir(why)) < 0)
        return -1;
    lock = openat(dir, lock_name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (lock < 0) {
        close(dir);
        return fail(why, "opening the lock of the user's namespace", errno);
    }
    /* Two logins of one user at once must end in one namespace: find-or-create under a lock. */
    while ((rc = flock(lock, LOCK_EX)) < 0 && errno == EINTR)
        ;
    if (rc < 0) {
        rc = fail(why, "locking the user's namespace", errno);
    } else if ((rc = join_user_namespace(socket_path, session, why)) == 0) {
        /* None alive: whatever socket is left belongs to a namespace that died. */
        if (unlinkat(dir, socket_name, 0) < 0 && errno != ENOENT)
            rc = fail(why, "removing the stale socket of the user's namespace", errno);
        else
            rc = start_namespace(opts, socket_path, session, why);
    } else if (rc == 1) {
        rc = 0;
    }
    close(lock); /* also releases the flock */
    close(dir);
    return rc;
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
