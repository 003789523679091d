/* libFuzzer target: the module's option parser and list helpers (csrc/options.c), the only code of
 * the module that reads input it does not control (the arguments of its PAM line, and user and
 * group names matched against the lists). Built with ASan and UBSan by `make -C csrc fuzz`.
 *
 * Input: the arguments, separated by NUL bytes. The last piece doubles as a user name to look up
 * in the lists the parser accepted, and the first byte picks a buffer size for pu_list_next.
 *
 * Besides memory and undefined-behaviour errors, it aborts when a documented property breaks:
 *  - a rejected argument changes nothing and says why;
 *  - settings stay within their enums; accepted lists point into the argument that set them and
 *    hold only names a reimplementation of the documented rules accepts;
 *  - pu_name_in_list agrees with a plain reference on every accepted list;
 *  - pu_list_next never writes past its buffer and always returns a prefix of the element.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "options.h"

#define MAX_ARGS 64

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static int name_char(char c, int last, size_t len)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    if (c == '_' || c == '.' || c == '-' || c == '@')
        return 1;
    return c == '$' && last && len > 1;
}

/* The documented list rules, written independently of options.c. */
static int valid_list(const char *list, int allow_empty)
{
    size_t start = 0, n = strlen(list);
    if (n == 0)
        return allow_empty;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && list[i] != ',')
            continue;
        size_t len = i - start;
        if (len == 0 || len > PU_NAME_MAX || list[start] == '-')
            return 0;
        for (size_t j = start; j < i; j++) {
            if (!name_char(list[j], j == i - 1, len))
                return 0;
        }
        start = i + 1;
    }
    return 1;
}

static int reference_in_list(const char *list, const char *name)
{
    size_t nlen = strlen(name);
    if (list == NULL)
        return 0;
    for (const char *p = list;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == nlen && memcmp(p, name, len) == 0 && len > 0)
            return 1;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

static int points_into(const char *p, const char *arg)
{
    return p >= arg && p <= arg + strlen(arg);
}

static void check_lists(const struct pu_options *opts, const char *name)
{
    const char *lists[3] = {opts->exempt_users, opts->exempt_groups, opts->only_groups};
    for (int i = 0; i < 3; i++) {
        if (lists[i] == NULL)
            continue;
        CHECK(valid_list(lists[i], i != 2));
        CHECK(pu_name_in_list(lists[i], name) == reference_in_list(lists[i], name));
    }
}

static void walk(const char *list, unsigned long size)
{
    char *buf = malloc(size ? size : 1);
    const char *rest = list;
    CHECK(buf != NULL);
    while ((rest = pu_list_next(rest, buf, size)) != NULL) {
        CHECK(strlen(buf) < size);
        CHECK(strchr(buf, ',') == NULL);
    }
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size + 1);
    char *args[MAX_ARGS];
    int argc = 0;
    struct pu_options opts, before;
    const char *name;

    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    for (size_t i = 0, start = 0; i <= size && argc < MAX_ARGS; i++) {
        if (i == size || copy[i] == '\0') {
            args[argc++] = copy + start;
            start = i + 1;
        }
    }
    name = args[argc - 1];

    pu_options_init(&opts);
    CHECK(opts.onerr == PU_ONERR_FAIL && opts.scope == PU_SCOPE_SESSION &&
          opts.on_logout == PU_ON_LOGOUT_LINGER && opts.propagation == PU_PROPAGATION_SLAVE &&
          !opts.debug && opts.exempt_groups == NULL && opts.only_groups == NULL &&
          strcmp(opts.exempt_users, "root") == 0);
    for (int i = 0; i < argc; i++) {
        memcpy(&before, &opts, sizeof opts);
        const char *why = pu_option_apply(&opts, args[i]);
        if (why != NULL) {
            CHECK(*why != '\0');
            CHECK(memcmp(&before, &opts, sizeof opts) == 0);
            continue;
        }
        CHECK(opts.onerr == PU_ONERR_FAIL || opts.onerr == PU_ONERR_SUCCEED);
        CHECK(opts.scope == PU_SCOPE_SESSION || opts.scope == PU_SCOPE_USER);
        CHECK(opts.on_logout == PU_ON_LOGOUT_LINGER || opts.on_logout == PU_ON_LOGOUT_KILL);
        CHECK(opts.propagation == PU_PROPAGATION_SLAVE ||
              opts.propagation == PU_PROPAGATION_PRIVATE);
        CHECK(opts.debug == 0 || opts.debug == 1);
        if (opts.exempt_users != before.exempt_users)
            CHECK(points_into(opts.exempt_users, args[i]));
        if (opts.exempt_groups != before.exempt_groups)
            CHECK(points_into(opts.exempt_groups, args[i]));
        if (opts.only_groups != before.only_groups)
            CHECK(points_into(opts.only_groups, args[i]));
    }
    CHECK(pu_option_apply(&opts, NULL) != NULL);
    check_lists(&opts, name);
    CHECK(pu_name_in_list(NULL, name) == 0);
    CHECK(pu_name_in_list(opts.exempt_users, NULL) == 0);
    /* Arbitrary bytes as a list, for memory safety: with the first byte as the buffer size. */
    walk(args[0], size ? (unsigned long)data[0] % 300 + 1 : 1);
    walk(name, PU_NAME_MAX + 1);
    CHECK(pu_list_next(name, (char[1]){0}, 0) == NULL);
    (void)pu_name_in_list(args[0], name);
    free(copy);
    return 0;
}
