#include "options.h"

#include <string.h>

static const char DEFAULT_EXEMPT_USERS[] = "root";

void pu_options_init(struct pu_options *opts)
{
    opts->debug = 0;
    opts->onerr = PU_ONERR_FAIL;
    opts->propagation = PU_PROPAGATION_SLAVE;
    opts->on_logout = PU_ON_LOGOUT_LINGER;
    opts->scope = PU_SCOPE_SESSION;
    opts->max_sessions = PU_DEFAULT_MAX_SESSIONS;
    opts->exempt_users = DEFAULT_EXEMPT_USERS;
    opts->exempt_groups = NULL;
    opts->only_groups = NULL;
}

static int is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-' || c == '@';
}

/* Accepts what useradd, sssd and winbind produce (letters, digits, "_.-@", a trailing "$" for
 * machine accounts) and nothing that could be read two ways: no spaces, no separators. */
static const char *check_name(const char *name, size_t len)
{
    if (len == 0)
        return "empty name in list";
    if (len > PU_NAME_MAX)
        return "name in list too long";
    if (name[0] == '-')
        return "name in list starts with '-'";
    for (size_t i = 0; i < len; i++) {
        if (name[i] == '$' && i == len - 1 && len > 1)
            continue;
        if (!is_name_char(name[i]))
            return "invalid character in name list";
    }
    return NULL;
}

static const char *check_list(const char *list, int allow_empty)
{
    if (*list == '\0')
        return allow_empty ? NULL : "empty list";
    for (;;) {
        const char *comma = strchr(list, ',');
        size_t len = comma ? (size_t)(comma - list) : strlen(list);
        const char *why = check_name(list, len);
        if (why)
            return why;
        if (!comma)
            return NULL;
        list = comma + 1;
    }
}

struct choice {
    const char *word;
    int value;
};

static const struct choice ONERR_CHOICES[] = {
    {"fail", PU_ONERR_FAIL}, {"succeed", PU_ONERR_SUCCEED}, {NULL, 0}};
static const struct choice PROPAGATION_CHOICES[] = {
    {"slave", PU_PROPAGATION_SLAVE}, {"private", PU_PROPAGATION_PRIVATE}, {NULL, 0}};
static const struct choice ON_LOGOUT_CHOICES[] = {
    {"linger", PU_ON_LOGOUT_LINGER}, {"kill", PU_ON_LOGOUT_KILL}, {NULL, 0}};
static const struct choice SCOPE_CHOICES[] = {
    {"session", PU_SCOPE_SESSION}, {"user", PU_SCOPE_USER}, {NULL, 0}};

static const char *pick(const struct choice *choices, const char *word, int *out,
                        const char *rejection)
{
    for (; choices->word; choices++) {
        if (strcmp(choices->word, word) == 0) {
            *out = choices->value;
            return NULL;
        }
    }
    return rejection;
}

/* A decimal count from 0 to MAX, digits only: no sign, no blanks, no other base. */
static const char *parse_count(const char *text, int max, int *out)
{
    long value = 0;

    if (*text == '\0')
        return "max_sessions must be a number from 0 to 1024";
    for (; *text; text++) {
        if (*text < '0' || *text > '9')
            return "max_sessions must be a number from 0 to 1024";
        value = value * 10 + (*text - '0');
        if (value > max)
            return "max_sessions must be a number from 0 to 1024";
    }
    *out = (int)value;
    return NULL;
}

/* Returns the value when ARG is "KEY=value", NULL otherwise. */
static const char *value_of(const char *arg, const char *key)
{
    size_t len = strlen(key);
    if (strncmp(arg, key, len) == 0 && arg[len] == '=')
        return arg + len + 1;
    return NULL;
}

const char *pu_option_apply(struct pu_options *opts, const char *arg)
{
    const char *value;
    const char *why;

    if (arg == NULL)
        return "missing argument";
    if (strcmp(arg, "debug") == 0) {
        opts->debug = 1;
        return NULL;
    }
    if ((value = value_of(arg, "onerr")))
        return pick(ONERR_CHOICES, value, &opts->onerr, "onerr must be fail or succeed");
    if ((value = value_of(arg, "propagation")))
        return pick(PROPAGATION_CHOICES, value, &opts->propagation,
                    "propagation must be slave or private");
    if ((value = value_of(arg, "on_logout")))
        return pick(ON_LOGOUT_CHOICES, value, &opts->on_logout,
                    "on_logout must be linger or kill");
    if ((value = value_of(arg, "scope")))
        return pick(SCOPE_CHOICES, value, &opts->scope, "scope must be session or user");
    if ((value = value_of(arg, "max_sessions")))
        return parse_count(value, PU_MAX_SESSIONS_LIMIT, &opts->max_sessions);
    if ((value = value_of(arg, "exempt_users"))) {
        if ((why = check_list(value, 1)))
            return why;
        opts->exempt_users = value;
        return NULL;
    }
    if ((value = value_of(arg, "exempt_groups"))) {
        if ((why = check_list(value, 1)))
            return why;
        opts->exempt_groups = value;
        return NULL;
    }
    if ((value = value_of(arg, "only_groups"))) {
        /* An empty only_groups would exempt everyone: refuse it rather than guess. */
        if ((why = check_list(value, 0)))
            return why;
        opts->only_groups = value;
        return NULL;
    }
    return "unknown option";
}

const char *pu_list_next(const char *list, char *buf, unsigned long size)
{
    const char *comma;
    size_t len;

    if (list == NULL || *list == '\0' || size == 0)
        return NULL;
    comma = strchr(list, ',');
    len = comma ? (size_t)(comma - list) : strlen(list);
    if (len >= size)
        len = size - 1;
    memcpy(buf, list, len);
    buf[len] = '\0';
    return comma ? comma + 1 : list + strlen(list);
}

int pu_name_in_list(const char *list, const char *name)
{
    char element[PU_NAME_MAX + 1];

    if (name == NULL)
        return 0;
    while ((list = pu_list_next(list, element, sizeof element)) != NULL) {
        if (strcmp(element, name) == 0)
            return 1;
    }
    return 0;
}
