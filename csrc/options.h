/* Module arguments -> settings. Pure C: no PAM, no I/O, no allocation, so the same code
 * validates options in the module and, through the cffi binding, in the Python CLI. */
#ifndef PAM_UNSHARE_OPTIONS_H
#define PAM_UNSHARE_OPTIONS_H

enum pu_onerr { PU_ONERR_FAIL = 0, PU_ONERR_SUCCEED = 1 };
enum pu_propagation { PU_PROPAGATION_SLAVE = 0, PU_PROPAGATION_PRIVATE = 1 };
enum pu_on_logout { PU_ON_LOGOUT_LINGER = 0, PU_ON_LOGOUT_KILL = 1 };
enum pu_scope { PU_SCOPE_SESSION = 0, PU_SCOPE_USER = 1 };

/* Lists are comma-separated names that point into the argument strings, which PAM keeps alive
 * for the whole call. A NULL list means "not given". */
struct pu_options {
    int debug;
    int onerr;        /* enum pu_onerr */
    int propagation;  /* enum pu_propagation */
    int on_logout;    /* enum pu_on_logout */
    int scope;        /* enum pu_scope */
    int max_sessions; /* live sessions one user may hold; 0: no limit */
    const char *exempt_users;
    const char *exempt_groups;
    const char *only_groups;
};

/* max_sessions: the default, and the highest value (the init's table of joined sessions). */
#define PU_DEFAULT_MAX_SESSIONS 256
#define PU_MAX_SESSIONS_LIMIT 1024

/* Longest user or group name a list may hold. */
#define PU_NAME_MAX 256

/* The safe defaults: fail closed, slave propagation, linger, a namespace per session, root
 * exempt. */
void pu_options_init(struct pu_options *opts);

/* Applies one module argument. Returns NULL when accepted, otherwise a static text saying why it
 * was rejected; a rejected argument changes nothing, so its setting keeps the safe default. */
const char *pu_option_apply(struct pu_options *opts, const char *arg);

/* Walks a comma-separated list: copies the next element into BUF (NUL-terminated, truncated to
 * SIZE - 1) and returns where the rest of the list starts, or NULL when the list is used up. */
const char *pu_list_next(const char *list, char *buf, unsigned long size);

/* 1 when NAME is an element of the comma-separated LIST, 0 otherwise (also for a NULL list). */
int pu_name_in_list(const char *list, const char *name);

#endif
