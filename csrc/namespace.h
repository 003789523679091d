/* The session's namespaces: creating them with their PID 1, joining them, ending them. */
#ifndef PAM_UNSHARE_NAMESPACE_H
#define PAM_UNSHARE_NAMESPACE_H

#include <sys/types.h>

#include "options.h"

/* What failed and the errno it failed with; the module turns it into one syslog line. */
struct pu_failure {
    const char *step;
    int err;
};

struct pu_session {
    int pidfd;        /* the session's PID 1 */
    int lifeline_fd;  /* the only write end of PID 1's lifeline; closing it ends the session */
    pid_t opener;     /* the process that opened the session; only it may end it */
    pid_t init_pid;   /* PID 1's number in the caller's namespace, for logs only */
    int on_logout;    /* enum pu_on_logout */
};

/* Starts a PID 1 in new PID and mount namespaces (propagation set, fresh /proc mounted), waits
 * until it runs, then moves the calling process into its mount namespace and makes the caller's
 * future children members of its PID namespace. Either all of that happens, or nothing does: on
 * failure the caller is left as it was, no process remains, and *WHY says what failed. */
int pu_session_start(const struct pu_options *opts, struct pu_session *session,
                     struct pu_failure *why);

/* At session close, in the opening process: "linger" lets PID 1 go once the namespace is empty;
 * "kill" SIGKILLs PID 1, and so the kernel kills everything in the namespace. */
int pu_session_end(struct pu_session *session, struct pu_failure *why);

/* Closes the descriptors without ending anything: for forked copies and PAM data cleanup. */
void pu_session_release(struct pu_session *session);

#endif
