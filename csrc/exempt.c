#include "exempt.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct user_groups {
    gid_t *gids;
    int count;
};

/* Its failures, and those of the group lookups below, are refused whatever onerr says
 * (pu_refusal_of): the caller has just resolved this user to open the session, so a lookup that
 * fails now is passing, and a user can make it fail (under a squeezed memory cgroup nss_files
 * cannot open /etc/passwd, and getpwnam_r says "not found"). */
int pu_lookup_user(const char *user, uid_t *uid, gid_t *gid)
{
    /* Entries from LDAP or sssd can be long: grow the buffer rather than refuse the login. */
    for (size_t size = 4096; size <= (16u << 20); size *= 4) {
        struct passwd pw, *found = NULL;
        char *buf = malloc(size);
        int err;
        if (buf == NULL)
            return -1;
        err = getpwnam_r(user, &pw, buf, size, &found);
        if (found) {
            *uid = pw.pw_uid;
            *gid = pw.pw_gid;
        }
        free(buf);
        if (err == ERANGE)
            continue;
        if (found)
            return 0;
        errno = err ? err : ENOENT;
        return -1;
    }
    errno = ERANGE;
    return -1;
}

static int load_groups(const char *user, struct user_groups *groups, struct pu_failure *why)
{
    uid_t uid;
    gid_t gid;
    int count = 32;

    if (pu_lookup_user(user, &uid, &gid) < 0) {
        *why = pu_refusal_of("looking up the user for group exemptions", errno);
        return -1;
    }
    for (;;) {
        gid_t *gids = calloc((size_t)count, sizeof *gids);
        int want = count;
        if (gids == NULL) {
            *why = pu_failure_of("allocating the user's group list", ENOMEM);
            return -1;
        }
        if (getgrouplist(user, gid, gids, &want) >= 0) {
            groups->gids = gids;
            groups->count = want;
            return 0;
        }
        free(gids);
        if (want <= count || want > 65536) {
            *why = pu_refusal_of("looking up the user's groups", EOVERFLOW);
            return -1;
        }
        count = want;
    }
}

/* 1 with *GID set when group NAME exists, 0 when it does not, -1 with errno when the lookup
 * itself failed (large groups need a large buffer: grow it rather than miss the group). */
static int lookup_gid(const char *name, gid_t *gid)
{
    for (size_t size = 16384; size <= (16u << 20); size *= 4) {
        struct group gr, *found = NULL;
        char *buf = malloc(size);
        int err;
        if (buf == NULL)
            return -1;
        err = getgrnam_r(name, &gr, buf, size, &found);
        if (found)
            *gid = gr.gr_gid;
        free(buf);
        if (err == ERANGE)
            continue;
        if (err != 0 && err != ENOENT && err != ESRCH) {
            errno = err;
            return -1;
        }
        return found != NULL;
    }
    errno = ERANGE;
    return -1;
}

/* 1 when the user is in any group named in LIST, 0 when in none, -1 with *WHY set when a lookup
 * failed. A name that is no group matches nobody, unless UNKNOWN_FAILS: for only_groups a typo or
 * a directory outage would otherwise exempt everyone, so it is a failure that onerr decides (an
 * admin's typo and a group that cannot be read look the same here). A lookup that fails with an
 * error is refused (pu_lookup_user). */
static int member_of_any(const struct user_groups *groups, const char *list, int unknown_fails,
                         struct pu_failure *why)
{
    char name[PU_NAME_MAX + 1];

    while ((list = pu_list_next(list, name, sizeof name)) != NULL) {
        gid_t gid;
        int known = lookup_gid(name, &gid);
        if (known < 0) {
            *why = pu_refusal_of("looking up a group named in the options", errno);
            return -1;
        }
        if (!known && unknown_fails) {
            *why = pu_failure_of("looking up a group named in only_groups (no such group)", ENOENT);
            return -1;
        }
        for (int i = 0; known && i < groups->count; i++) {
            if (groups->gids[i] == gid)
                return 1;
        }
    }
    return 0;
}

int pu_user_exempt(const struct pu_options *opts, const char *user, int *exempt,
                   struct pu_failure *why)
{
    struct user_groups groups = {NULL, 0};
    int in_exempt = 0, in_only = 0;

    *exempt = 0;
    if (pu_name_in_list(opts->exempt_users, user)) {
        *exempt = 1;
        return 0;
    }
    if (opts->exempt_groups == NULL && opts->only_groups == NULL)
        return 0;
    if (load_groups(user, &groups, why) < 0)
        return -1;
    if (opts->exempt_groups)
        in_exempt = member_of_any(&groups, opts->exempt_groups, 0, why);
    if (in_exempt >= 0 && opts->only_groups)
        in_only = member_of_any(&groups, opts->only_groups, 1, why);
    free(groups.gids);
    if (in_exempt < 0 || in_only < 0)
        return -1;
    *exempt = in_exempt == 1 || (opts->only_groups && in_only == 0);
    return 0;
}
