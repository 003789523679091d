/* The contract between the module (namespace.c) and the session init (init/init.c), written once.
 * The init is built without libc, so this header holds only macros and plain constants. */
#ifndef PAM_UNSHARE_INIT_PROTOCOL_H
#define PAM_UNSHARE_INIT_PROTOCOL_H

/* The descriptors the init finds at exec. */
#define PU_INIT_LIFELINE_FD 3 /* read end of the lifeline: EOF once the session is closed */
#define PU_INIT_READY_FD 4    /* write end of the ready pipe */
#define PU_INIT_LISTEN_FD 5   /* scope=user: the listening socket of the user's namespace */
#define PU_INIT_PROGRAM_FD 6  /* the init program itself (close-on-exec, gone in the init) */
#define PU_INIT_SLOT_FD 7     /* a flock'ed slot of the user's session quota (max_sessions) */
#define PU_INIT_LAST_FD PU_INIT_SLOT_FD

/* What the init's argv holds: name, logout mode, then "user" and the join limit for scope=user.
 * Its comm is PU_INIT_COMM. */
#define PU_INIT_ARGV0 "pam_unshare-init"
#define PU_INIT_COMM "pam_unshare"
#define PU_INIT_LINGER "linger"
#define PU_INIT_KILL "kill"
#define PU_INIT_USER "user"

/* Bytes on the ready pipe and on a joiner's connection. */
#define PU_INIT_READY 'R'   /* the init runs */
#define PU_INIT_JOINED 'J'  /* the joiner is counted and may enter */
#define PU_INIT_FULL 'F'    /* the user's namespace holds max_sessions sessions already */

/* The highest join limit (and max_sessions) the init accepts: its table is this size. */
#define PU_INIT_MAX_JOINED 1024

/* Descriptors the init may hold at once: its own few, a watch per tracked process and one per
 * joined session. The module sets RLIMIT_NOFILE of the init to this, whatever the user chose. */
#define PU_INIT_MAX_WATCHED 32
#define PU_INIT_NOFILE (16 + PU_INIT_MAX_WATCHED + PU_INIT_MAX_JOINED)

#endif
