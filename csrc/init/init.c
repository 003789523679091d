/* The session's PID 1, built without libc so that it costs a few pages per session.
 *
 * The module starts it with (the numbers and words are in protocol.h):
 *   fd 3  the read end of the lifeline; it reaches EOF when the session is closed or its caller
 *         died (the caller holds the only write end)
 *   fd 4  the ready pipe; one byte on it tells the module that PID 1 runs
 *   fd 5  with scope=user only: a listening unix socket; each later session of the user connects
 *         to it, and that connection is its lifeline
 *   fd 7  a slot of the user's session quota, locked with flock: held as long as PID 1 lives
 *   argv[1] "linger" or "kill": what to do once no lifeline is left
 *   argv[2] "user" when fd 5 is there, and argv[3] how many sessions may join at once
 *
 * Checklist, in the order it runs:
 *   1. name itself, refuse ptrace by the session's user, block every signal
 *   2. receive SIGCHLD through a signalfd (PID 1 ignores signals it has no handler for, and a
 *      handler would need a restorer; a blocked, queued signal needs neither)
 *   3. say ready
 *   4. loop, blocked in poll(): reap every exited child; accept joining sessions and answer each
 *      with one byte, so a joiner knows it was counted (or that the namespace is full) before it
 *      enters; once no lifeline is left, exit at once ("kill") or when no live process is left in
 *      the namespace ("linger"). Processes that are not our children (the caller's own children,
 *      whose parent lives outside) are watched through pidfds, so the exit is noticed without
 *      polling.
 *   5. when the kernel refuses a resource (a descriptor for a joiner, a pidfd, /proc itself), wait
 *      RETRY_MS in poll() and try again: never spin, and never take "cannot tell" for "empty".
 * Its exit makes the kernel kill whatever is left in the namespace. */

#include <asm/unistd.h>
#include <linux/fcntl.h>
#include <linux/poll.h>
#include <linux/prctl.h>
#include <linux/signal.h>
#include <linux/signalfd.h>
#include <linux/types.h>
#include <linux/wait.h>

#include "protocol.h"

#define LIFELINE_FD PU_INIT_LIFELINE_FD
#define READY_FD PU_INIT_READY_FD
#define LISTEN_FD PU_INIT_LISTEN_FD
#define MAX_WATCHED PU_INIT_MAX_WATCHED
/* Sessions of one user that can share a namespace at once (argv[3], at most this); a joiner past
 * the limit hears PU_INIT_FULL and its login fails rather than landing outside. */
#define MAX_JOINED PU_INIT_MAX_JOINED
/* How long to wait before trying again what the kernel refused for lack of resources. */
#define RETRY_MS 200
#define EAGAIN_ 11
#define EINTR_ 4
#define ESRCH_ 3

struct linux_dirent64 {
    __u64 d_ino;
    __s64 d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

#if defined(__x86_64__)
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  xor %rbp, %rbp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call init_main\n"
        "  hlt\n");

static long syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  mov x29, #0\n"
        "  mov x30, #0\n"
        "  mov x0, sp\n"
        "  and sp, x0, #-16\n"
        "  bl init_main\n"
        "  brk #0\n");

static long syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc #0"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
                     : "memory");
    return x0;
}
#else
#error "pam_unshare-init: unsupported architecture"
#endif

#define sys0(n) syscall6(n, 0, 0, 0, 0, 0, 0)
#define sys1(n, a) syscall6(n, (long)(a), 0, 0, 0, 0, 0)
#define sys2(n, a, b) syscall6(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define sys3(n, a, b, c) syscall6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define sys4(n, a, b, c, d) syscall6(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)

#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif

#define SOCK_NONBLOCK_ 04000
#define SOCK_CLOEXEC_ 02000000

__attribute__((noreturn)) static void exit_now(int status)
{
    for (;;)
        sys1(__NR_exit_group, status);
}

static int same_text(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

/* Parses a /proc entry name; 0 for anything that is not a process. */
static long pid_of_name(const char *name)
{
    long pid = 0;
    if (*name == '\0')
        return 0;
    for (; *name; name++) {
        if (*name < '0' || *name > '9' || pid > 100000000)
            return 0;
        pid = pid * 10 + (*name - '0');
    }
    return pid;
}

static void reap_children(void)
{
    /* __WALL: children started with clone() and any exit signal count too. */
    while (sys4(__NR_wait4, -1, 0, WNOHANG | __WALL, 0) > 0)
        ;
}

static void drain(int fd, char *buf, unsigned long size)
{
    long n;
    do {
        n = sys3(__NR_read, fd, buf, size);
    } while (n > 0 || n == -EINTR_);
}

static void close_all(int *fds, int count)
{
    for (int i = 0; i < count; i++)
        sys1(__NR_close, fds[i]);
}

/* Counts the live processes in this PID namespace other than ourselves and watches up to
 * MAX_WATCHED of them through pidfds (stored in WATCHED, count in *N_WATCHED). A process that
 * has exited but not yet been reaped by its parent outside the namespace is not live: its pidfd
 * is readable at once. A process whose pidfd the kernel refuses (EMFILE, ENOMEM) is live and
 * sets *UNSURE: only a fresh scan can tell when it is gone. Returns -1 when /proc cannot be
 * read. */
static long scan_namespace(int *watched, int *n_watched, int *unsure)
{
    char buf[4096] __attribute__((aligned(8)));
    long live = 0;
    long dir = sys4(__NR_openat, AT_FDCWD, "/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);

    *n_watched = 0;
    if (dir < 0)
        return -1;
    for (;;) {
        long got = sys3(__NR_getdents64, dir, buf, sizeof buf);
        if (got <= 0)
            break;
        for (long off = 0; off < got;) {
            struct linux_dirent64 *entry = (struct linux_dirent64 *)(buf + off);
            long pid = pid_of_name(entry->d_name);
            off += entry->d_reclen;
            if (pid <= 1)
                continue;
            long pidfd = sys2(__NR_pidfd_open, pid, 0);
            if (pidfd == -ESRCH_)
                continue; /* gone since the directory was read */
            if (pidfd < 0) {
                live++;
                *unsure = 1;
                continue;
            }
            struct pollfd probe = {.fd = (int)pidfd, .events = POLLIN};
            if (sys3(__NR_poll, &probe, 1, 0) == 0) {
                live++;
                if (*n_watched < MAX_WATCHED) {
                    watched[(*n_watched)++] = (int)pidfd;
                    continue;
                }
            }
            sys1(__NR_close, pidfd);
        }
    }
    sys1(__NR_close, dir);
    return live;
}

static int joined[MAX_JOINED];
static int n_joined;
/* Set at start: an initialised static would give the program a file-backed data page, which every
 * exec maps and copies on write. */
static int max_joined;

/* Takes every pending joiner: each is counted (its connection is a lifeline) before it hears the
 * byte that lets it enter; past the limit (max_sessions, the first session included while its
 * lifeline is open) it hears that the namespace is full. Returns 0 when
 * the queue is empty, -1 when the kernel refused a descriptor and the rest must wait. */
static int accept_joiners(int lifeline_open)
{
    for (;;) {
        long fd = sys4(__NR_accept4, LISTEN_FD, 0, 0, SOCK_NONBLOCK_ | SOCK_CLOEXEC_);
        if (fd == -EAGAIN_)
            return 0;
        if (fd == -EINTR_)
            continue;
        if (fd < 0)
            return -1; /* EMFILE, ENFILE, ENOMEM, ENOBUFS: the joiner stays queued */
        /* The session that started the namespace holds the lifeline and counts too. */
        if (n_joined + lifeline_open >= max_joined) {
            sys3(__NR_write, fd, (char[]){PU_INIT_FULL}, 1);
            sys1(__NR_close, fd);
            continue;
        }
        if (sys3(__NR_write, fd, (char[]){PU_INIT_JOINED}, 1) != 1) {
            sys1(__NR_close, fd);
            continue;
        }
        joined[n_joined++] = (int)fd;
    }
}

/* Drops the joined sessions whose connection has been closed. */
static void drop_closed(const struct pollfd *fds, int count)
{
    char byte;
    for (int i = 0; i < count; i++) {
        if (!fds[i].revents)
            continue;
        long n = sys3(__NR_read, fds[i].fd, &byte, 1);
        if (n > 0 || n == -EAGAIN_ || n == -EINTR_)
            continue;
        sys1(__NR_close, fds[i].fd);
        for (int j = 0; j < n_joined; j++) {
            if (joined[j] == fds[i].fd) {
                joined[j] = joined[--n_joined];
                break;
            }
        }
    }
}

long init_main(long *stack);

long init_main(long *stack)
{
    long argc = stack[0];
    char **argv = (char **)(stack + 1);
    int linger = !(argc > 1 && same_text(argv[1], PU_INIT_KILL));
    int listening = argc > 2 && same_text(argv[2], PU_INIT_USER);
    int lifeline_open = 1;
    unsigned long all_signals = ~0UL;
    unsigned long sigchld = 1UL << (SIGCHLD - 1);
    char buf[sizeof(struct signalfd_siginfo) * 4];
    int watched[MAX_WATCHED];
    int n_watched = 0;
    static struct pollfd fds[3 + MAX_WATCHED + MAX_JOINED];

    max_joined = MAX_JOINED;
    if (listening && argc > 3) {
        long limit = pid_of_name(argv[3]);
        if (limit > 0 && limit <= MAX_JOINED)
            max_joined = (int)limit; /* sessions in all: the first and the joiners */
    }
    sys2(__NR_prctl, PR_SET_NAME, PU_INIT_COMM);
    /* Root-owned and not dumpable: the session's user can neither ptrace nor read us. */
    sys2(__NR_prctl, PR_SET_DUMPABLE, 0);
    sys4(__NR_rt_sigprocmask, SIG_SETMASK, &all_signals, 0, sizeof all_signals);
    long sigfd = sys4(__NR_signalfd4, -1, &sigchld, sizeof sigchld, O_NONBLOCK | O_CLOEXEC);
    if (sigfd < 0)
        exit_now(1);
    if (sys3(__NR_write, READY_FD, (char[]){PU_INIT_READY}, 1) != 1)
        exit_now(1);
    sys1(__NR_close, READY_FD);

    for (;;) {
        int nfds = 0;
        int first_joined;
        /* Set when something must be tried again later: poll then wakes after RETRY_MS. */
        int retry = 0;
        int backlog_waits = 0;

        drain((int)sigfd, buf, sizeof buf);
        reap_children();
        if (listening && accept_joiners(lifeline_open) < 0)
            backlog_waits = retry = 1;
        close_all(watched, n_watched);
        n_watched = 0;
        if (!lifeline_open && n_joined == 0) {
            if (!linger)
                exit_now(0);
            /* Two empty scans in a row: a process forked while the first scan was reading the
             * directory may have been listed before the scan reached its slot. */
            int unsure = 0;
            long live = scan_namespace(watched, &n_watched, &unsure);
            if (live == 0) {
                live = scan_namespace(watched, &n_watched, &unsure);
                if (live == 0) {
                    /* A joiner that connected meanwhile keeps the namespace alive, and so does
                     * one still queued because the kernel refused its descriptor. */
                    if (listening && accept_joiners(lifeline_open) < 0)
                        backlog_waits = retry = 1;
                    if (n_joined == 0 && !backlog_waits)
                        exit_now(0);
                    if (n_joined > 0)
                        continue;
                }
            }
            /* /proc unreadable or a pidfd refused: whether the namespace is empty cannot be
             * told now, and leaving would kill whatever lingers. */
            if (live < 0 || unsure)
                retry = 1;
        }
        fds[nfds++] = (struct pollfd){.fd = (int)sigfd, .events = POLLIN};
        int lifeline_slot = nfds;
        if (lifeline_open)
            fds[nfds++] = (struct pollfd){.fd = LIFELINE_FD, .events = POLLIN};
        /* A queued joiner we could not take keeps the socket readable: leave it out until the
         * retry, or poll would return at once, forever. */
        if (listening && !backlog_waits)
            fds[nfds++] = (struct pollfd){.fd = LISTEN_FD, .events = POLLIN};
        for (int i = 0; i < n_watched; i++)
            fds[nfds++] = (struct pollfd){.fd = watched[i], .events = POLLIN};
        first_joined = nfds;
        for (int i = 0; i < n_joined; i++)
            fds[nfds++] = (struct pollfd){.fd = joined[i], .events = POLLIN};
        long ready = sys3(__NR_poll, fds, nfds, retry ? RETRY_MS : -1);
        if (ready < 0 && ready != -EINTR_)
            exit_now(3);
        if (lifeline_open && fds[lifeline_slot].revents) {
            long n = sys3(__NR_read, LIFELINE_FD, buf, sizeof buf);
            if (n == 0 || (n < 0 && n != -EAGAIN_ && n != -EINTR_)) {
                lifeline_open = 0;
                sys1(__NR_close, LIFELINE_FD);
            }
        }
        drop_closed(fds + first_joined, nfds - first_joined);
    }
}

/* The compiler may emit calls to these for struct copies even in a freestanding build. */
void *memset(void *dest, int c, unsigned long n);
void *memcpy(void *dest, const void *src, unsigned long n);

void *memset(void *dest, int c, unsigned long n)
{
    unsigned char *d = dest;
    while (n--)
        *d++ = (unsigned char)c;
    return dest;
}

void *memcpy(void *dest, const void *src, unsigned long n)
{
    unsigned char *d = dest;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dest;
}
