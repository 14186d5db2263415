/*
 * libFuzzer target for the parsers of what jobgate reads from files and
 * commands: the gateway's config (src/lib/config.c), the connection policy
 * (src/agent/policy.c), the grid-mapfile (src/gateway/gridmap.c) and the
 * scheduler's output (jobwatch_parse, src/gateway/jobwatch.c). The first
 * byte picks the parser, the rest is the text. Each must accept or refuse
 * with a sentence, never crash, hang or leak.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "config.h"
#include "gridmap.h"
#include "jobwatch.h"
#include "policy.h"
#include "registry.h"
#include "tunnel.h"


/* jobwatch.c's calls into the registry and the tunnel hub: never reached
 * from jobwatch_parse. */
#define NEVER(decl)                                                                                \
    decl { abort(); }
NEVER(int registry_job_adopt(struct registry *reg, const struct job *j))
NEVER(int registry_job_end(struct registry *reg, uint32_t id, uid_t by, const char *why))
NEVER(int registry_job_get(struct registry *reg, uint32_t id, struct job *out))
NEVER(int registry_jobs_running(struct registry *reg, uint32_t **ids))
NEVER(void registry_sched_set(struct registry *reg, struct registry_sched_job *v, size_t n))
NEVER(void tunnel_job_verdict(struct tunnel_hub *hub, uint64_t tunnel, int ok, const char *why))

static void config(const char *text, size_t len)
{
    int fd = memfd_create("fuzz.conf", MFD_CLOEXEC);
    if (fd < 0)
        return;
    if (write(fd, text, len) == (ssize_t)len) {
        char path[64], err[512];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        struct jg_config c;
        memset(&c, 0, sizeof(c));
        setenv("HOME", "/nonexistent", 0);
        if (config_defaults(&c) == 0) {
            err[0] = '\0';
            if (config_load(&c, path, err, sizeof(err)) < 0)
                CHECK(err[0] != '\0');
        }
        config_free(&c);
    }
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    char err[512] = "";
    switch (data[0] % 4) {
    case 0:
        config(text, len);
        break;
    case 1: {
        struct policy_file f;
        memset(&f, 0, sizeof(f));
        if (policy_parse(&f, "fuzz", text, len, err, sizeof(err)) < 0)
            CHECK(err[0] != '\0');
        policy_file_free(&f);
        break;
    }
    case 2:
        if (gridmap_parse_check(text, len, err, sizeof(err)) < 0)
            CHECK(err[0] != '\0');
        break;
    default: {
        struct watched_job *jobs = NULL;
        int n = jobwatch_parse(text, len, &jobs, err, sizeof(err));
        if (n < 0)
            CHECK(err[0] != '\0');
        free(jobs);
        break;
    }
    }
    return 0;
}
