/* The PAM entry points: each a short list of steps. */
#define PAM_SM_SESSION

#include <errno.h>
#include <security/pam_ext.h>
#include <security/pam_modules.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "exempt.h"
#include "log.h"
#include "namespace.h"
#include "options.h"

/* The build passes pyproject.toml's version (setup.py, debian/rules); a bare `make` has none. */
#ifndef PU_VERSION
#define PU_VERSION "unknown"
#endif

static const char SESSION_DATA[] = "pam_unshare_session";

static void parse_options(pam_handle_t *pamh, struct pu_options *opts, int argc, const char **argv,
                          int report_rejected)
{
    pu_options_init(opts);
    for (int i = 0; i < argc; i++) {
        const char *why = pu_option_apply(opts, argv[i]);
        if (why && report_rejected)
            pam_syslog(pamh, LOG_ERR, "ignoring option \"%s\": %s (its safe default stays)",
                       argv[i], why);
    }
}

/* One line saying what failed and why; then the onerr policy decides. PAM_SYSTEM_ERR, not
 * PAM_SESSION_ERR: sudo runs the command anyway after PAM_SESSION_ERR. */
static int session_failed(pam_handle_t *pamh, const struct pu_options *opts, const char *user,
                          const struct pu_failure *why)
{
    errno = why->err;
    if (why->refuse_always) {
        pam_syslog(pamh, LOG_ERR,
                   "%s failed for user %s: %m; refusing the session (a user can cause this: "
                   "onerr does not apply)",
                   why->step, user ? user : "(unknown)");
        return PAM_SYSTEM_ERR;
    }
    if (opts->onerr == PU_ONERR_SUCCEED) {
        pam_syslog(pamh, LOG_ERR,
                   "%s failed for user %s: %m; session continues without a namespace "
                   "(onerr=succeed)",
                   why->step, user ? user : "(unknown)");
        return PAM_SUCCESS;
    }
    pam_syslog(pamh, LOG_ERR, "%s failed for user %s: %m; refusing the session", why->step,
               user ? user : "(unknown)");
    return PAM_SYSTEM_ERR;
}

static void free_session(pam_handle_t *pamh, void *data, int error_status)
{
    (void)pamh;
    (void)error_status;
    pu_session_release(data);
    free(data);
}

/* scope=session: a namespace of its own; scope=user: the user's one, made if needed. Either way
 * counted against the user's max_sessions, which needs the uid. */
static int start_or_join(const struct pu_options *opts, const char *user,
                         struct pu_session *session, struct pu_failure *why)
{
    uid_t uid = (uid_t)-1;
    gid_t gid;

    if ((opts->scope == PU_SCOPE_USER || opts->max_sessions > 0) &&
        pu_lookup_user(user, &uid, &gid) < 0) {
        *why = pu_refusal_of("looking up the user's uid", errno);
        return -1;
    }
    if (opts->scope == PU_SCOPE_SESSION)
        return pu_session_start(opts, uid, session, why);
    return pu_session_start_user(opts, uid, session, why);
}

/* PID 1 opens these services' sessions in the very process that then execs the user manager or
 * run0's command. The module moves a caller's future children into the namespace, never the
 * caller, so that process would run outside it under the session's /proc and fail (measured:
 * user@.service 203/EXEC): better one clear line and the onerr policy. */
static int caller_runs_program_itself(pam_handle_t *pamh)
{
    static const char *const services[] = {"systemd-user", "systemd-run0"};
    const void *item = NULL;

    if (pam_get_item(pamh, PAM_SERVICE, &item) != PAM_SUCCESS || item == NULL)
        return 0;
    for (size_t i = 0; i < sizeof services / sizeof services[0]; i++)
        if (strcmp(item, services[i]) == 0)
            return 1;
    return 0;
}

static struct pu_session *open_session_of(pam_handle_t *pamh)
{
    const void *data = NULL;
    if (pam_get_data(pamh, SESSION_DATA, &data) != PAM_SUCCESS)
        return NULL;
    return (struct pu_session *)data;
}

PAM_EXTERN int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct pu_options opts;
    struct pu_failure why = pu_failure_of(NULL, 0);
    struct pu_session *session;
    const void *item = NULL;
    const char *user;
    int exempt;

    (void)flags;
    parse_options(pamh, &opts, argc, argv, 1);

    if (pam_get_item(pamh, PAM_USER, &item) != PAM_SUCCESS || item == NULL ||
        *(const char *)item == '\0') {
        why = pu_failure_of("reading PAM_USER (no user is set)", EINVAL);
        return session_failed(pamh, &opts, NULL, &why);
    }
    user = item;
    /* Which build answered: a debug log then says which version to compare with the docs. */
    pu_debug(pamh, &opts, "pam_unshare %s: opening a session for user %s", PU_VERSION, user);

    if (pu_user_exempt(&opts, user, &exempt, &why) < 0)
        return session_failed(pamh, &opts, user, &why);
    if (exempt) {
        pu_debug(pamh, &opts, "user %s is exempt: session left as it is", user);
        return PAM_SUCCESS;
    }

    if (caller_runs_program_itself(pamh)) {
        why = pu_failure_of("namespacing a session whose caller execs the program itself "
                            "(PID 1's user manager: `pam-unshare enable systemd-user` covers it "
                            "with a unit drop-in; run0: see the README)",
                            EOPNOTSUPP);
        return session_failed(pamh, &opts, user, &why);
    }

    /* A stack that reaches us twice (su-l includes su, both enabled) is already namespaced:
     * a second namespace would only nest, and refusing would lock users out. */
    if (open_session_of(pamh) != NULL) {
        pu_debug(pamh, &opts, "user %s: session already namespaced by an earlier line", user);
        return PAM_SUCCESS;
    }
    session = calloc(1, sizeof *session);
    if (session == NULL) {
        why = pu_failure_of("allocating the session state", ENOMEM);
        return session_failed(pamh, &opts, user, &why);
    }
    session->pidfd = -1;
    session->lifeline_fd = -1;
    /* Registered before the namespaces exist: once the caller has joined them nothing may
     * fail, and pam_set_data can. */
    if (pam_set_data(pamh, SESSION_DATA, session, free_session) != PAM_SUCCESS) {
        free(session);
        why = pu_failure_of("storing the session state (pam_set_data)", ENOMEM);
        return session_failed(pamh, &opts, user, &why);
    }

    pu_debug(pamh, &opts, "starting a PID namespace for user %s", user);
    if (start_or_join(&opts, user, session, &why) < 0) {
        pam_set_data(pamh, SESSION_DATA, NULL, NULL);
        return session_failed(pamh, &opts, user, &why);
    }
    if (opts.debug) {
        char timing[256];
        pu_session_timing(session, timing, sizeof timing);
        pu_debug(pamh, &opts, "user %s: session init runs as pid %d, /proc mounted, caller joined (%s)",
                 user, (int)session->init_pid, timing);
    }
    return PAM_SUCCESS;
}

PAM_EXTERN int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
    struct pu_options opts;
    struct pu_failure why = pu_failure_of(NULL, 0);
    struct pu_session *session;
    int rc = PAM_SUCCESS;

    (void)flags;
    parse_options(pamh, &opts, argc, argv, 0);
    session = open_session_of(pamh);
    if (session == NULL) {
        pu_debug(pamh, &opts, "no namespaced session to close");
        return PAM_SUCCESS;
    }
    pu_debug(pamh, &opts, "closing the session of init pid %d (%s%s)", (int)session->init_pid,
             session->on_logout == PU_ON_LOGOUT_KILL ? "kill" : "linger",
             session->kill_on_close || session->on_logout != PU_ON_LOGOUT_KILL
                 ? ""
                 : " once the user's last session closes");
    if (pu_session_end(session, &why) < 0) {
        errno = why.err;
        pam_syslog(pamh, LOG_ERR, "%s failed at session close: %m", why.step);
        rc = PAM_SESSION_ERR;
    }
    pam_set_data(pamh, SESSION_DATA, NULL, NULL);
    return rc;
}
