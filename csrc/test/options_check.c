/* Applies each argument with the module's parser and prints the outcome, one line each, then the
 * resulting settings: lets the tests drive the parser under ASan/UBSan with hostile input. */
#include <stdio.h>

#include "options.h"

int main(int argc, char **argv)
{
    struct pu_options opts;
    int rejected = 0;

    pu_options_init(&opts);
    for (int i = 1; i < argc; i++) {
        const char *why = pu_option_apply(&opts, argv[i]);
        printf("%s\t%s\n", why ? "rejected" : "accepted", why ? why : argv[i]);
        rejected += why != NULL;
    }
    printf("debug=%d onerr=%d propagation=%d on_logout=%d scope=%d\n", opts.debug, opts.onerr,
           opts.propagation, opts.on_logout, opts.scope);
    printf("exempt_users=%s\n", opts.exempt_users ? opts.exempt_users : "(unset)");
    printf("exempt_groups=%s\n", opts.exempt_groups ? opts.exempt_groups : "(unset)");
    printf("only_groups=%s\n", opts.only_groups ? opts.only_groups : "(unset)");
    return rejected ? 1 : 0;
}
