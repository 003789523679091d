/* The session's namespaces: creating them with their PID 1, joining them, ending them. */
#ifndef PAM_UNSHARE_NAMESPACE_H
#define PAM_UNSHARE_NAMESPACE_H

#include <errno.h>
#include <stddef.h>
#include <sys/types.h>

#include "options.h"

/* What failed and the errno it failed with; the module turns it into one syslog line. */
struct pu_failure {
    const char *step;
    int err;
    /* The user can cause it (a resource ran out, a procfs that cannot be covered, max_sessions):
     * refused even under onerr=succeed, so that no choice of the user's can decide that a
     * session runs without a namespace. */
    int refuse_always;
};

/* A resource ran out. A user can run one out on purpose (their rlimits, which setuid su and sudo
 * inherit; a memory or pids limit in a cgroup that systemd delegates to them; their own processes
 * filling the system), so onerr never decides these: with onerr=succeed, the user could choose
 * when a session runs without a namespace. onerr is for what says the machine cannot isolate
 * (EPERM, ENOSYS, EINVAL: a container without the capability, a kernel without namespaces). */
static inline int pu_resource_ran_out(int err)
{
    switch (err) {
    case ENOMEM:
    case EAGAIN:
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
    case ENOBUFS:
    case EFBIG: /* RLIMIT_FSIZE */
    case E2BIG: /* the init's argv is a few bytes: exec says this when it found no memory */
    case EUSERS:
    case ETIMEDOUT:
        return 1;
    default:
        return 0;
    }
}

/* The one way to say what failed: STEP and ERR, for onerr to decide unless a resource ran out. */
static inline struct pu_failure pu_failure_of(const char *step, int err)
{
    return (struct pu_failure){.step = step, .err = err, .refuse_always = pu_resource_ran_out(err)};
}

/* What a user can cause beyond a resource that ran out (a procfs that cannot be covered,
 * max_sessions, a lookup that fails: see pu_lookup_user): refused whatever onerr says. */
static inline struct pu_failure pu_refusal_of(const char *step, int err)
{
    struct pu_failure failure = pu_failure_of(step, err);
    failure.refuse_always = 1;
    return failure;
}

/* The clone child's phases, timed for the debug line (pu_session_timing). */
enum pu_phase {
    PU_PHASE_CLONE,       /* the clone itself: new PID namespace, copy of the mount table */
    PU_PHASE_IDENTITY,    /* uid, gid, limits, inherited descriptors closed */
    PU_PHASE_MOUNTS,      /* propagation of /, the session's /proc */
    PU_PHASE_PROCFS,      /* the other procfs mounts found and covered */
    PU_PHASE_PROGRAM,     /* the init program opened */
    PU_PHASE_DESCRIPTORS, /* the init's directory, socket and descriptors */
    PU_PHASE_PRIVILEGES,  /* groups, securebits, bounding set, no_new_privs */
    PU_PHASE_EXEC,        /* the exec, until the caller runs again */
    PU_PHASE_COUNT
};

struct pu_session {
    int pidfd;        /* the session's PID 1 */
    int lifeline_fd;  /* the only write end of PID 1's lifeline; closing it ends the session */
    pid_t opener;     /* the process that opened the session; only it may end it */
    pid_t init_pid;   /* PID 1's number in the caller's namespace, for logs only */
    int on_logout;     /* enum pu_on_logout */
    int kill_on_close; /* on_logout=kill with scope=session: close SIGKILLs PID 1 */
    /* Where a login's time went, for the debug line (microseconds): the clone into new
     * namespaces with the child's work until it execs the init (the caller is suspended
     * meanwhile), split into phases; the init's start until it is ready; the caller's setns. */
    long clone_us, ready_us, join_us;
    long phase_us[PU_PHASE_COUNT];
    int suspended; /* the caller was suspended during the child's phases (their times are known) */
};

/* Starts a PID 1 in new PID and mount namespaces (propagation set, fresh /proc mounted), waits
 * until it runs, then moves the calling process into its mount namespace and makes the caller's
 * future children members of its PID namespace. Either all of that happens, or nothing does: on
 * failure the caller is left as it was, no process remains, and *WHY says what failed. The
 * session counts against user UID's max_sessions for as long as its PID 1 lives. */
int pu_session_start(const struct pu_options *opts, uid_t uid, struct pu_session *session,
                     struct pu_failure *why);

/* scope=user: joins the running namespace of user UID if there is one, otherwise starts it as
 * pu_session_start does, with PID 1 accepting up to max_sessions of the user's sessions. Safe
 * against two logins at once (one namespace, never two) and against stale records, reused PIDs
 * and dead PID 1s. */
int pu_session_start_user(const struct pu_options *opts, uid_t uid, struct pu_session *session,
                          struct pu_failure *why);

/* At session close, in the opening process: with scope=session and on_logout=kill, SIGKILLs PID 1
 * (so the kernel kills everything in the namespace); otherwise lets go of the lifeline, and PID 1
 * leaves once no session holds one and (linger) the namespace is empty. */
int pu_session_end(struct pu_session *session, struct pu_failure *why);

/* The debug line's account of where the start of SESSION went, into TEXT. */
void pu_session_timing(const struct pu_session *session, char *text, size_t size);

/* Closes the descriptors without ending anything: for forked copies and PAM data cleanup. */
void pu_session_release(struct pu_session *session);

#endif
