/* Logging through pam_syslog: one line per failure, with the errno text. */
#ifndef PAM_UNSHARE_LOG_H
#define PAM_UNSHARE_LOG_H

#include <security/pam_ext.h>
#include <syslog.h>

#define pu_debug(pamh, opts, ...)                                                                  \
    do {                                                                                           \
        if ((opts)->debug)                                                                         \
            pam_syslog((pamh), LOG_DEBUG, __VA_ARGS__);                                            \
    } while (0)

#endif
