/*
 * plugconf — the arguments of spank_jobgate.so in plugstack.conf:
 *
 *     required /usr/lib/jobgate/spank_jobgate.so gateway=https://login.example dir=/run/jobgate
 *
 * One parser, no state: slurm_spank_init() parses them once per process into
 * a struct plugconf, and every hook reads that copy. An unknown or bad
 * argument is an error that names it (slurmd's log shows it); whether it
 * fails the job is plugstack.conf's choice (required or optional).
 */
#ifndef JG_PLUGCONF_H
#define JG_PLUGCONF_H

#include <stddef.h>

#define PLUGCONF_VALUE_MAX 1024      /* bytes of one value, NUL included */

struct plugconf {
    char gateway[PLUGCONF_VALUE_MAX];       /* https://HOST[:PORT], no path */
    char dir[PLUGCONF_VALUE_MAX];           /* base of the job directories */
    char munge_socket[PLUGCONF_VALUE_MAX];  /* "" = libmunge's default */
    char ca[PLUGCONF_VALUE_MAX];            /* the gateway's CA ("" = system store) */
};

/* The directory under which job directories are made when dir= is not given. */
#define PLUGCONF_DEFAULT_DIR "/run/jobgate/jobs"

/* Parses argv (argc strings "key=value"). On success 0, c filled (defaults
 * where an argument is absent); else -EINVAL and a message in err naming
 * the argument. gateway= is required. */
int plugconf_parse(int argc, char *const argv[], struct plugconf *c, char *err, size_t errlen);

#endif
