/* Who is left out: exempt_users, exempt_groups, only_groups. */
#ifndef PAM_UNSHARE_EXEMPT_H
#define PAM_UNSHARE_EXEMPT_H

#include "namespace.h"
#include "options.h"

/* Sets *EXEMPT to 1 when USER's session must stay outside any namespace. Returns -1 with *WHY
 * set when that cannot be decided (the user or their groups cannot be looked up): deciding
 * "exempt" on a lookup failure would weaken isolation, so the caller treats it as a failure. */
int pu_user_exempt(const struct pu_options *opts, const char *user, int *exempt,
                   struct pu_failure *why);

/* Looks USER up, growing the buffer as long entries need: 0 with *UID and *GID set, or -1 with
 * errno (ENOENT: no such user). */
int pu_lookup_user(const char *user, uid_t *uid, gid_t *gid);

#endif
