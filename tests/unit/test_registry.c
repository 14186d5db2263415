/* Unit tests for src/gateway/registry.c: admission of a request (each verdict),
 * redeem and logout, resolve by alias or name, ownership on remove and link,
 * an agent's routes across a reconnect (attach, detach, orphan by name, the
 * full tunnel), reaping, and the revocation counter. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "registry.h"

#define ME ((uid_t)1000)
#define OTHER ((uid_t)2000)

struct fx {
    char dir[64];
    struct jg_config cfg;
    struct registry *reg;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    char err[256];
    memcpy(f->dir, "/tmp/jg-reg-XXXXXX", sizeof("/tmp/jg-reg-XXXXXX"));
    if (!mkdtemp(f->dir))
        return -1;
    f->cfg.state_dir = f->dir;
    f->cfg.domain = (char *)"localhost";
    f->cfg.public_port = 8443;
    f->cfg.link_ttl = 600;
    f->cfg.quota_routes = 256;
    f->cfg.quota_links = 1024;
    f->cfg.quota_held = 64;
    f->cfg.session_ttl = 3600;
    f->cfg.grace = 0; /* an agent away is reaped at the next tick */
    f->reg = registry_open(&f->cfg, err, sizeof(err));
    if (!f->reg)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char p[128];
    registry_close(f->reg);
    const char *files[] = {"jobgate.db", "jobgate.db-wal", "jobgate.db-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/%s", f->dir, files[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static struct route unix_route(uid_t uid, const char *name)
{
    struct route r;
    memset(&r, 0, sizeof(r));
    r.uid = uid;
    r.kind = ROUTE_UNIX;
    snprintf(r.name, sizeof(r.name), "%s", name);
    snprintf(r.path, sizeof(r.path), "/tmp/%s.sock", name);
    return r;
}

/* A session cookie for alias, through a link as a browser would get it. */
static void session(struct fx *f, const char *alias, uid_t owner, char cookie[TOKEN_STR_LEN + 1])
{
    struct registry_link l;
    assert_int_equal(registry_link(f->reg, alias, owner, 0, 60, &l), 0);
    const char *tok = strrchr(l.link, '/') + 1;
    assert_int_equal(registry_redeem(f->reg, alias, tok, strlen(tok), cookie), 0);
}

static struct http1_str str(const char *s)
{
    struct http1_str v = {s, strlen(s)};
    return v;
}

static void test_admission_verdicts(void **state)
{
    struct fx *f = *state;
    struct admission a;
    char cookie[TOKEN_STR_LEN + 1];
    struct route r = unix_route(ME, "lab");
    assert_int_equal(registry_route_add(f->reg, &r), 0);
    assert_true(strlen(r.alias) > 0);

    struct http1_str none[1] = {str("not-a-token")};
    assert_int_equal(registry_admit(f->reg, "no-such-app", none, 1, &a), ADMIT_UNKNOWN);
    assert_int_equal(registry_admit(f->reg, r.alias, none, 0, &a), ADMIT_FORBIDDEN);
    assert_int_equal(registry_admit(f->reg, r.alias, none, 1, &a), ADMIT_FORBIDDEN);

    session(f, r.alias, ME, cookie);
    struct http1_str vals[2] = {str("junk"), str(cookie)};
    assert_int_equal(registry_admit(f->reg, r.alias, vals, 2, &a), ADMIT_OK);
    assert_int_equal(a.uid, ME);
    assert_string_equal(a.route.alias, r.alias);
    assert_int_equal(registry_session_live(f->reg, r.alias, a.sess_hash), 1);

    /* Another app's cookie is no session here (I1). */
    struct route r2 = unix_route(ME, "other");
    assert_int_equal(registry_route_add(f->reg, &r2), 0);
    assert_int_equal(registry_admit(f->reg, r2.alias, vals, 2, &a), ADMIT_FORBIDDEN);

    struct route st;
    st.job = 99;
    assert_int_equal(registry_status(f->reg, r.alias, vals, 2, &st), 0);
    assert_int_equal(st.job, 0);
    assert_false(st.starting);
    assert_string_equal(st.alias, r.alias);
    assert_int_equal(registry_status(f->reg, r2.alias, vals, 2, &st), -EACCES);
    assert_int_equal(registry_status(f->reg, "no-such-app", vals, 2, &st), -ENXIO);
}

static void test_starting_then_ready(void **state)
{
    struct fx *f = *state;
    struct admission a;
    char cookie[TOKEN_STR_LEN + 1];
    struct route r = unix_route(ME, "slow");
    r.starting = 1;
    assert_int_equal(registry_route_add(f->reg, &r), 0);
    session(f, r.alias, ME, cookie);
    struct http1_str v = str(cookie);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_STARTING);
    assert_int_equal(registry_route_ready(f->reg, r.alias, OTHER), -ENOENT);
    assert_int_equal(registry_route_ready(f->reg, r.alias, ME), 0);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_OK);
}

static void test_logout_and_remove_revoke(void **state)
{
    struct fx *f = *state;
    struct admission a;
    char cookie[TOKEN_STR_LEN + 1];
    struct route r = unix_route(ME, "lab");
    assert_int_equal(registry_route_add(f->reg, &r), 0);
    session(f, r.alias, ME, cookie);
    struct http1_str v = str(cookie);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_OK);

    unsigned before = registry_revocations(f->reg);
    registry_logout(f->reg, "some-other-app", &v, 1); /* not this app's: nothing ends */
    assert_int_equal(registry_revocations(f->reg), before);
    registry_logout(f->reg, r.alias, &v, 1);
    assert_int_equal(registry_revocations(f->reg), before + 1);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_FORBIDDEN);
    assert_int_equal(registry_session_live(f->reg, r.alias, a.sess_hash), 0);

    session(f, r.alias, ME, cookie);
    v = str(cookie);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_OK);
    assert_int_equal(registry_route_remove(f->reg, r.alias, OTHER, 0, OTHER, "test"), -ENOENT);
    assert_int_equal(registry_route_remove(f->reg, r.alias, ME, ROUTE_TUNNEL, ME, "test"),
                     -ENOENT);
    assert_int_equal(registry_route_remove(f->reg, r.alias, ME, 0, ME, "test"), 0);
    assert_int_equal(registry_revocations(f->reg), before + 2);
    assert_int_equal(registry_session_live(f->reg, r.alias, a.sess_hash), 0);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_UNKNOWN);
}

static void test_redeem_errors(void **state)
{
    struct fx *f = *state;
    char cookie[TOKEN_STR_LEN + 1];
    struct registry_link l;
    struct route r = unix_route(ME, "lab"), r2 = unix_route(ME, "two");
    assert_int_equal(registry_route_add(f->reg, &r), 0);
    assert_int_equal(registry_route_add(f->reg, &r2), 0);
    assert_int_equal(registry_link(f->reg, r.alias, OTHER, 0, 60, &l), -ENOENT);
    assert_int_equal(registry_link(f->reg, r.alias, ME, 0, 60, &l), 0);
    char url[REGISTRY_URL_MAX];
    snprintf(url, sizeof(url), "https://%s.localhost:8443/", r.alias);
    assert_string_equal(l.url, url);
    assert_true(strncmp(l.link, url, strlen(url)) == 0);
    const char *tok = strrchr(l.link, '/') + 1;
    assert_int_equal(registry_redeem(f->reg, "no-such-app", tok, strlen(tok), cookie), -ENXIO);
    assert_true(registry_redeem(f->reg, r2.alias, tok, strlen(tok), cookie) < 0); /* other app's */
    assert_int_equal(registry_redeem(f->reg, r.alias, tok, strlen(tok), cookie), 0);
    assert_true(registry_redeem(f->reg, r.alias, tok, strlen(tok), cookie) < 0); /* used */
}

/* [quota] routes and links bound a user; removing frees the slot; root and
 * the gateway's own user are outside them. */
static void test_quotas(void **state)
{
    struct fx *f = *state;
    struct registry_link l;
    f->cfg.quota_routes = 2;
    f->cfg.quota_links = 1;
    struct route a = unix_route(ME, "a"), b = unix_route(ME, "b"), c = unix_route(ME, "c");
    struct route o = unix_route(OTHER, "o");
    assert_int_equal(registry_route_add(f->reg, &a), 0);
    assert_int_equal(registry_route_add(f->reg, &b), 0);
    assert_int_equal(registry_route_add(f->reg, &c), -EDQUOT);
    assert_int_equal(registry_route_add(f->reg, &o), 0); /* another user's own count */
    assert_int_equal(registry_route_remove(f->reg, a.alias, ME, 0, ME, "test"), 0);
    assert_int_equal(registry_route_add(f->reg, &c), 0);
    assert_int_equal(registry_link(f->reg, b.alias, ME, 0, 60, &l), 0);
    assert_int_equal(registry_link(f->reg, c.alias, ME, 0, 60, &l), -EDQUOT);
    /* Removing b takes its unredeemed link with it. */
    assert_int_equal(registry_route_remove(f->reg, b.alias, ME, 0, ME, "test"), 0);
    assert_int_equal(registry_link(f->reg, c.alias, ME, 0, 60, &l), 0);
    uid_t self = getuid();
    for (int i = 0; i < 4; i++) {
        struct route s = unix_route(self, "mine");
        assert_int_equal(registry_route_add(f->reg, &s), 0);
        assert_int_equal(registry_link(f->reg, s.alias, self, 0, 60, &l), 0);
    }
}

static void test_resolve_by_alias_or_name(void **state)
{
    struct fx *f = *state;
    struct route out, a = unix_route(ME, "lab"), b = unix_route(ME, "lab"), c = unix_route(OTHER, "mine");
    assert_int_equal(registry_route_add(f->reg, &a), 0);
    assert_int_equal(registry_route_resolve(f->reg, ME, "lab", &out), 0);
    assert_string_equal(out.alias, a.alias);
    assert_int_equal(registry_route_add(f->reg, &b), 0);
    assert_int_equal(registry_route_resolve(f->reg, ME, "lab", &out), -ENOTUNIQ);
    assert_int_equal(registry_route_resolve(f->reg, ME, b.alias, &out), 0);
    assert_string_equal(out.alias, b.alias);
    assert_int_equal(registry_route_add(f->reg, &c), 0);
    /* Someone else's app is not found, by alias or by name (I1). */
    assert_int_equal(registry_route_resolve(f->reg, ME, c.alias, &out), -ENOENT);
    assert_int_equal(registry_route_resolve(f->reg, ME, "mine", &out), -ENOENT);

    struct route *v;
    assert_int_equal(registry_routes(f->reg, ME, 0, &v), 2);
    free(v);
    assert_int_equal(registry_routes(f->reg, ME, 1, &v), 3);
    free(v);
}

static int mine_none(void *arg, const char *alias)
{
    return 0;
}

static int mine_all(void *arg, const char *alias)
{
    return 1;
}

/* A tunnel that sleeps (docs/policy.md): its routes are asleep, requests for
 * them are held (bounded per route), the agent hears at its next poll that
 * it was wanted, and a lost tunnel without reconnect ends its routes. */
static void test_tunnel_sleep_hold_wanted(void **state)
{
    struct fx *f = *state;
    struct route r, again;
    struct admission a;
    char cookie[TOKEN_STR_LEN + 1];
    struct tunnel_claim c = {.uid = ME, .tunnel = 21, .name = "poller", .local = "p",
                             .mine = mine_none, .poll = 30, .checkin = 30};
    assert_int_equal(registry_tunnel_attach(f->reg, &c, &r), 0);
    assert_int_equal(r.wanted, 0);
    session(f, r.alias, ME, cookie);
    struct http1_str v = str(cookie);
    /* Not asleep: nothing to hold. */
    assert_int_equal(registry_hold(f->reg, r.alias, ME, 1, 4), -ENOENT);

    const char *aliases[1] = {r.alias};
    registry_tunnel_detach(f->reg, 21, aliases, 1, 1);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_ASLEEP);
    assert_true(a.route.asleep);
    assert_string_equal(route_state(&a.route), "asleep");
    char reach[64];
    route_reach(&a.route, reach, sizeof(reach));
    assert_string_equal(reach, "poll 30s");
    assert_int_equal(registry_hold(f->reg, r.alias, ME, 1, 2), 0);
    assert_int_equal(registry_hold(f->reg, r.alias, ME, 1, 2), 0);
    assert_int_equal(registry_hold(f->reg, r.alias, ME, 1, 2), -EBUSY);
    assert_int_equal(registry_route_get(f->reg, r.alias, &again), 0);
    assert_int_equal(again.held, 2);
    /* [quota] held bounds the owner's held requests over all its apps. */
    f->cfg.quota_held = 2;
    assert_int_equal(registry_hold(f->reg, r.alias, ME, 1, 10), -EBUSY);
    f->cfg.quota_held = 3;
    assert_int_equal(registry_hold(f->reg, r.alias, ME, 1, 10), 0);
    assert_int_equal(registry_hold(f->reg, r.alias, ME, -1, 0), 0);

    /* The poll: same route, told that it was wanted, the count kept for the
     * requests that still wait; once told, not again. */
    struct tunnel_claim back = c;
    back.tunnel = 22;
    back.alias = r.alias;
    assert_int_equal(registry_tunnel_attach(f->reg, &back, &again), 0);
    assert_int_equal(again.wanted, 1);
    assert_int_equal(again.held, 2);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_OK);
    assert_int_equal(registry_hold(f->reg, r.alias, ME, -1, 0), 0);
    assert_int_equal(registry_hold(f->reg, r.alias, ME, -1, 0), 0);
    assert_int_equal(registry_hold(f->reg, r.alias, ME, -1, 0), 0); /* not below zero */
    assert_int_equal(registry_route_get(f->reg, r.alias, &again), 0);
    assert_int_equal(again.held, 0);
    back.tunnel = 23;
    assert_int_equal(registry_tunnel_attach(f->reg, &back, &again), 0);
    assert_int_equal(again.wanted, 0);

    /* No reconnect: a lost tunnel (not a sleep) ends the route at once. */
    struct tunnel_claim once = c;
    once.tunnel = 24;
    once.name = "once";
    once.once = 1;
    assert_int_equal(registry_tunnel_attach(f->reg, &once, &r), 0);
    aliases[0] = r.alias;
    registry_tunnel_detach(f->reg, 24, aliases, 1, 0);
    assert_int_equal(registry_route_get(f->reg, r.alias, &again), -ENOENT);
}

static void test_tunnel_reconnect_keeps_alias(void **state)
{
    struct fx *f = *state;
    struct route r, again;
    struct admission a;
    char cookie[TOKEN_STR_LEN + 1];
    struct tunnel_claim c = {.uid = ME, .tunnel = 7, .name = "lab", .local = "app-1",
                             .mine = mine_none};
    assert_int_equal(registry_tunnel_attach(f->reg, &c, &r), 0);
    assert_int_equal(r.kind, ROUTE_TUNNEL);
    assert_int_equal(r.tunnel, 7);
    session(f, r.alias, ME, cookie);
    struct http1_str v = str(cookie);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_OK);

    const char *aliases[1] = {r.alias};
    registry_tunnel_detach(f->reg, 8, aliases, 1, 0); /* not its tunnel: nothing happens */
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_OK);
    registry_tunnel_detach(f->reg, 7, aliases, 1, 0);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_RECONNECTING);

    /* Back with its alias on a new tunnel: same route, same session. */
    struct tunnel_claim back = c;
    back.tunnel = 9;
    back.alias = r.alias;
    assert_int_equal(registry_tunnel_attach(f->reg, &back, &again), 0);
    assert_string_equal(again.alias, r.alias);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_OK);
    assert_int_equal(a.route.tunnel, 9);

    /* Another user may not claim it. */
    struct tunnel_claim thief = back;
    thief.uid = OTHER;
    assert_int_equal(registry_tunnel_attach(f->reg, &thief, &again), -EPERM);
    assert_string_equal(again.alias, r.alias);

    /* A restarted agent (no alias) takes the only orphan of that name. */
    registry_tunnel_detach(f->reg, 9, aliases, 1, 0);
    struct tunnel_claim fresh = c;
    fresh.tunnel = 11;
    assert_int_equal(registry_tunnel_attach(f->reg, &fresh, &again), 0);
    assert_string_equal(again.alias, r.alias);

    /* A full tunnel registers nothing new, but may re-register its own. */
    struct tunnel_claim full = c;
    full.tunnel = 11;
    full.name = "another";
    full.full = 1;
    assert_int_equal(registry_tunnel_attach(f->reg, &full, &again), -EMLINK);
    full.alias = r.alias;
    full.mine = mine_all;
    assert_int_equal(registry_tunnel_attach(f->reg, &full, &again), 0);
}

/* A job's routes: only its own tunnels register them, and they end with it. */
static void test_job_routes_end_with_the_job(void **state)
{
    struct fx *f = *state;
    struct job j = {.id = 77, .uid = ME, .user = "me", .node = "cn1", .not_after = INT64_MAX / 2};
    struct job rec, other = j;
    struct route r, again;
    struct admission a;
    char cookie[TOKEN_STR_LEN + 1];
    assert_int_equal(registry_job_start(f->reg, &j, &rec), 0);
    assert_int_equal(rec.id, 77);
    assert_true(rec.started > 0);
    assert_int_equal(rec.ended, 0);
    assert_int_equal(registry_job_start(f->reg, &j, &rec), 0); /* a second node: the same */
    other.uid = OTHER;
    assert_int_equal(registry_job_start(f->reg, &other, &rec), -EEXIST);

    struct tunnel_claim c = {.uid = ME, .job = 77, .tunnel = 3, .name = "nb", .local = "a",
                             .mine = mine_none};
    assert_int_equal(registry_tunnel_attach(f->reg, &c, &r), 0);
    assert_int_equal(r.job, 77);
    session(f, r.alias, ME, cookie);
    struct http1_str v = str(cookie);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_OK);

    /* The same user without the job, or with another job, may not take it. */
    struct tunnel_claim thief = c;
    thief.job = 0;
    thief.alias = r.alias;
    assert_int_equal(registry_tunnel_attach(f->reg, &thief, &again), -EPERM);
    thief.job = 78; /* unknown job */
    assert_int_equal(registry_tunnel_attach(f->reg, &thief, &again), -ESTALE);
    /* An orphan of the job is not another job's, nor a jobless agent's. */
    const char *aliases[1] = {r.alias};
    registry_tunnel_detach(f->reg, 3, aliases, 1, 0);
    struct tunnel_claim plain = {.uid = ME, .tunnel = 4, .name = "nb", .local = "a",
                                 .mine = mine_none};
    assert_int_equal(registry_tunnel_attach(f->reg, &plain, &again), 0);
    assert_string_not_equal(again.alias, r.alias);
    assert_int_equal(again.job, 0);

    unsigned rev = registry_revocations(f->reg);
    assert_int_equal(registry_job_end(f->reg, 77, 0, "test"), 1);
    assert_true(registry_revocations(f->reg) != rev);
    assert_int_equal(registry_admit(f->reg, r.alias, &v, 1, &a), ADMIT_UNKNOWN);
    assert_int_equal(registry_route_get(f->reg, again.alias, &again), 0); /* not the job's */
    assert_int_equal(registry_job_get(f->reg, 77, &rec), 0);
    assert_true(rec.ended > 0);
    assert_int_equal(registry_tunnel_attach(f->reg, &c, &r), -ESTALE);
    assert_int_equal(registry_job_start(f->reg, &j, &rec), -ESTALE);
    assert_int_equal(registry_job_end(f->reg, 78, 0, "test"), -ENOENT);
    assert_int_equal(registry_job_end(f->reg, 77, 0, "again"), 0);
}

static void test_reap_dead_owner_and_orphan(void **state)
{
    struct fx *f = *state;
    struct route r = unix_route(ME, "lab"), out;
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    assert_true(child > 0);
    while (waitpid(child, NULL, 0) < 0)
        ;
    r.pid = child; /* gone, and reaped: kill(pid, 0) says ESRCH */
    assert_int_equal(registry_route_add(f->reg, &r), 0);
    struct route alive = unix_route(ME, "alive");
    alive.pid = getpid();
    assert_int_equal(registry_route_add(f->reg, &alive), 0);

    struct tunnel_claim c = {.uid = ME, .tunnel = 5, .name = "t", .local = "x", .mine = mine_none};
    struct route t;
    assert_int_equal(registry_tunnel_attach(f->reg, &c, &t), 0);
    const char *aliases[1] = {t.alias};
    registry_tunnel_detach(f->reg, 5, aliases, 1, 0);
    usleep(2000); /* grace 0: away longer than the grace time */

    unsigned before = registry_revocations(f->reg);
    registry_reap(f->reg);
    assert_int_equal(registry_route_get(f->reg, r.alias, &out), -ENOENT);
    assert_int_equal(registry_route_get(f->reg, t.alias, &out), -ENOENT);
    assert_int_equal(registry_route_get(f->reg, alive.alias, &out), 0);
    assert_int_equal(registry_revocations(f->reg), before + 2);
}

static void test_routes_survive_reopen(void **state)
{
    struct fx *f = *state;
    char err[256];
    struct route r = unix_route(ME, "lab"), out;
    assert_int_equal(registry_route_add(f->reg, &r), 0);
    registry_close(f->reg);
    f->reg = registry_open(&f->cfg, err, sizeof(err));
    assert_non_null(f->reg);
    assert_int_equal(registry_route_get(f->reg, r.alias, &out), 0);
    assert_string_equal(out.path, r.path);
    assert_int_equal(registry_route_count(f->reg), 1);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_admission_verdicts),     T(test_starting_then_ready),
        T(test_logout_and_remove_revoke), T(test_redeem_errors),
        T(test_resolve_by_alias_or_name), T(test_tunnel_sleep_hold_wanted),
        T(test_tunnel_reconnect_keeps_alias),
        T(test_reap_dead_owner_and_orphan), T(test_routes_survive_reopen),
        T(test_job_routes_end_with_the_job), T(test_quotas),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
