/*
 * run_publish — how `jobgate run` publishes its app, behind one table of
 * operations (struct publish_ops in run.h), so that cmd_run() never asks
 * which: publish_local talks to jobgated on this host through its control
 * socket (ctl.h), one request per step; publish_tunnel keeps a tunnel to a
 * remote gateway open (agent_tunnel.h) and registers through it;
 * publish_callback (--callback, in a --jobgate job) starts the job's own TLS
 * endpoint (callback.h), registers a direct route through a tunnel and lets
 * the tunnel go, and opens another at the end to take the route back.
 *
 * Main thread, except on_tunnel_event, which the tunnel's thread calls; it
 * only reads struct run and prints through run.c's locked output.
 */
#include "run.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "agent_tunnel.h"
#include "callback.h"
#include "cmd.h"
#include "ctl.h"
#include "util.h"

static int local_open(struct run *r)
{
    r->control = cli_control_socket();
    if (!r->control)
        return -1;
    json_t *req = json_pack("{s:s}", "op", "hello");
    if (!req) {
        cli_error("cannot build the request");
        return -1;
    }
    json_t *reply = cli_call(r->control, req);
    if (!reply)
        return -1;
    json_decref(reply);
    return 0;
}

/* Registers the app; returns the answer (caller frees) or NULL after
 * printing why. */
static json_t *local_add(struct run *r)
{
    json_t *req = json_pack("{s:s,s:s}", "op", "register", "name", r->name);
    int bad = !req;

    if (!bad && r->tcp)
        bad = json_object_set_new(req, "port", json_integer(r->port)) < 0;
    else if (!bad)
        bad = json_object_set_new(req, "socket", json_string(r->sock)) < 0;
    if (!bad)
        bad = json_object_set_new(req, "pid", json_integer(getpid())) < 0;
    if (!bad && r->cross_site)
        bad = json_object_set_new(req, "cross_site", json_true()) < 0;
    if (!bad && r->ttl > 0)
        bad = json_object_set_new(req, "ttl", json_integer(r->ttl)) < 0;
    if (bad) {
        /* json_string fails on a path that is not UTF-8. */
        json_decref(req);
        cli_error("cannot build the register request (is %s valid UTF-8?)", r->where);
        return NULL;
    }
    json_t *reply = cli_call(r->control, req);
    if (!reply)
        return NULL;
    if (!json_is_string(json_object_get(reply, "alias")) ||
        !json_is_string(json_object_get(reply, "url")) ||
        !json_is_string(json_object_get(reply, "link"))) {
        cli_error("bad answer from the gateway: no alias, url or link");
        /* Without an alias we cannot take the route back; the gateway drops
         * it anyway when this process is gone (it knows our pid). */
        json_decref(reply);
        return NULL;
    }
    return reply;
}

static void local_remove(struct run *r, const json_t *reg)
{
    const char *alias = json_string_value(json_object_get(reg, "alias"));
    char err[512];
    json_t *reply;
    json_t *req = json_pack("{s:s,s:s}", "op", "remove", "alias", alias);
    if (!req)
        return;
    int rc = ctl_call(r->control, req, &reply, err, sizeof(err));
    json_decref(req);
    /* not_found: the gateway already dropped it (restart, rm, pid check). */
    if (rc == -EREMOTEIO && strcmp(ctl_error_code(reply), "not_found") == 0)
        rc = 0;
    json_decref(reply);
    if (rc < 0)
        cli_error("could not remove %s from the gateway: %s", alias, err);
}

/* From the tunnel's thread (or run_shared's): reconnects on stderr (or as
 * JSON events), an app registered anew like the first ready. */
void publish_tunnel_event(void *arg, const struct agent_tunnel_event *ev)
{
    const struct run *r = arg;

    if (strcmp(ev->event, "ready") == 0 && ev->reply) {
        run_print_ready(r, ev->reply);
    } else if (r->json && strcmp(ev->event, "reconnecting") == 0) {
        json_t *j = json_pack("{s:s,s:s,s:f,s:i}", "event", "reconnecting", "reason",
                              ev->reason ? ev->reason : "", "retry_in", ev->retry_in, "attempt",
                              (int)ev->attempt);
        run_emit_json(j);
    } else if (r->json && strcmp(ev->event, "reconnected") == 0) {
        run_emit_json(json_pack("{s:s}", "event", "reconnected"));
    } else if (strcmp(ev->event, "sleeping") == 0) {
        if (r->json)
            run_emit_json(json_pack("{s:s,s:f}", "event", "sleeping", "next_poll", ev->retry_in));
    } else if (strcmp(ev->event, "lost") == 0) {
        /* No reconnect: the app ends with its tunnel (run.c says so). */
        atomic_store(&((struct run *)arg)->lost, 1);
        if (r->json)
            run_emit_json(json_pack("{s:s,s:s}", "event", "lost", "reason",
                                    ev->reason ? ev->reason : ""));
        cli_error("%s", ev->message ? ev->message : "lost the connection to the gateway");
        app_end();
    } else if (ev->message) {
        cli_error("%s", ev->message);
    }
}

int publish_resolve_policy(struct run *r)
{
    char host[256], err[1024], text[160];
    struct policy_result pr;
    if (cli_gateway_host(r->gateway ? r->gateway : r->via, host, sizeof(host), err,
                         sizeof(err)) < 0 ||
        policy_for_gateway(host, r->policy_opt, &pr, err, sizeof(err)) < 0) {
        cli_error("%s", err);
        return -1;
    }
    r->policy = pr.p;
    if (r->policy.callback && (!getenv("JOBGATE_DIR") || !*getenv("JOBGATE_DIR") || r->via)) {
        /* The gateway proves the endpoint by the job's certificate. */
        cli_error("the connection policy's callback needs a Slurm job started with --jobgate "
                  "and -g (the job's certificate); without it: %s",
                  r->policy.poll ? "poll only" : "the tunnel stays open");
        r->policy.callback = 0;
    }
    policy_format(&r->policy, text, sizeof(text));
    if (r->json)
        run_emit_json(json_pack("{s:s,s:s}", "event", "policy", "policy", text));
    return 0;
}

static int tunnel_open_with(struct run *r, const struct policy *policy)
{
    struct agent_tunnel_opts o;
    char err[1024];

    memset(&o, 0, sizeof(o));
    o.policy = policy;
    o.gateway = r->gateway;
    o.via = r->via;
    o.ca_file = r->ca;
    o.cert_file = r->cert;
    o.key_file = r->key;
    o.ping_interval_ms = r->ping_interval * 1000;
    o.ping_timeout_ms = r->ping_timeout * 1000;
    o.on_event = publish_tunnel_event;
    o.event_arg = r;
    if (agent_tunnel_open(&o, &r->tunnel, err, sizeof(err)) < 0) {
        cli_error("%s", err);
        return -1;
    }
    return 0;
}

static int tunnel_open(struct run *r)
{
    return tunnel_open_with(r, NULL);
}

static int policy_tunnel_open(struct run *r)
{
    if (publish_resolve_policy(r) < 0)
        return -1;
    return tunnel_open_with(r, &r->policy);
}

#define DIRECT_WAIT_MS 20000 /* for the node to report our port as the job's destination */

static void signal_ready(void);

/* The policy's callback: the job's own endpoint, started before the app is
 * registered; its port in *bound. 0, or -1 after saying why (the app is then
 * registered without it). */
static int start_callback(struct run *r, unsigned *bound)
{
    char err[1024];
    r->cb = callback_start(getenv("JOBGATE_DIR"), r->tcp ? NULL : r->sock, r->port,
                           r->callback_port, bound, err, sizeof(err));
    if (!r->cb) {
        cli_error("no callback endpoint (%s): the app is reached through the tunnel%s", err,
                  r->policy.poll ? " and by poll" : "");
        return -1;
    }
    signal_ready();
    return 0;
}

json_t *publish_register(struct run *r, int (*reg)(struct run *r, const struct agent_app *app,
                                                  json_t **reply, char *err, size_t errlen))
{
    char err[1024];
    json_t *reply = NULL;
    unsigned bound = 0;
    if (r->policy.callback && start_callback(r, &bound) < 0)
        bound = 0;
    int64_t deadline = now_mono_ms() + DIRECT_WAIT_MS;
    for (;;) {
        struct agent_app app = {.name = r->name, .sock = r->tcp ? NULL : r->sock,
                                .port = r->port, .ttl = r->ttl, .callback_port = bound,
                                .cross_site = r->cross_site};
        int rc = reg(r, &app, &reply, err, sizeof(err));
        if (rc == 0)
            break;
        if (bound && rc == -EREMOTEIO && strstr(err, "not a destination") &&
            now_mono_ms() > deadline) {
            cli_error("%s: registering without the callback", err);
            callback_stop(r->cb);
            r->cb = NULL;
            bound = 0;
            continue;
        }
        if (!bound || rc != -EREMOTEIO || !strstr(err, "not a destination")) {
            cli_error("%s", err);
            return NULL;
        }
        struct timespec ts = {0, 250 * 1000 * 1000};
        nanosleep(&ts, NULL); /* the node's report is on its way */
    }
    if (bound)
        json_object_set_new(reply, "callback_port", json_integer(bound));
    return reply;
}

static int tunnel_reg(struct run *r, const struct agent_app *app, json_t **reply, char *err,
                      size_t errlen)
{
    return agent_tunnel_add(r->tunnel, app, reply, err, errlen);
}

static json_t *tunnel_add(struct run *r)
{
    return publish_register(r, tunnel_reg);
}

static void tunnel_close(struct run *r)
{
    agent_tunnel_close(r->tunnel);
    r->tunnel = NULL;
    callback_stop(r->cb);
    r->cb = NULL;
}

/* Closing the tunnel unregisters every app on it (and waits, bounded). */
static void tunnel_remove(struct run *r, const json_t *reg)
{
    (void)reg;
    tunnel_close(r);
}

/* The gateway drops a local route of ours when this process is gone (it
 * knows our pid): nothing to free. */
static void local_close(struct run *r)
{
    (void)r;
}

const struct publish_ops publish_local = {
    .open = local_open,
    .add = local_add,
    .remove = local_remove,
    .close = local_close,
};

const struct publish_ops publish_tunnel = {
    .open = policy_tunnel_open,
    .add = tunnel_add,
    .remove = tunnel_remove,
    .close = tunnel_close,
};

/* ---- --callback: a direct route, no tunnel held ------------------------------------ */

/* Tells the plugin (JOBGATE_READY_FD) that we listen: it reports our port to the gateway. */
static void signal_ready(void)
{
    const char *v = getenv("JOBGATE_READY_FD");
    uint64_t fd;
    if (v && parse_uint(v, 0, 1023, &fd) == 0 && write((int)fd, "ready\n", 6) != 6)
        cli_error("cannot write to JOBGATE_READY_FD %s: %s", v, strerror(errno));
}

static json_t *callback_add(struct run *r)
{
    char err[1024];
    unsigned bound = 0;
    r->cb = callback_start(getenv("JOBGATE_DIR"), r->tcp ? NULL : r->sock, r->port,
                           r->callback_port, &bound, err, sizeof(err));
    if (!r->cb) {
        cli_error("%s", err);
        return NULL;
    }
    signal_ready();
    json_t *reply = NULL;
    int64_t deadline = now_mono_ms() + DIRECT_WAIT_MS;
    for (;;) {
        int rc = agent_tunnel_register_direct(r->tunnel, r->name, bound, r->ttl, &reply, err,
                                              sizeof(err));
        if (rc == 0)
            break;
        if (rc != -EREMOTEIO || !strstr(err, "not a destination") || now_mono_ms() > deadline) {
            cli_error("%s", err);
            return NULL;
        }
        struct timespec ts = {0, 250 * 1000 * 1000};
        nanosleep(&ts, NULL); /* the node's report is on its way */
    }
    json_object_set_new(reply, "callback_port", json_integer(bound));
    /* The route does not need the tunnel: let it go. */
    agent_tunnel_close(r->tunnel);
    r->tunnel = NULL;
    return reply;
}

/* The app has ended: one short tunnel to take the direct route back. */
static void callback_remove(struct run *r, const json_t *reg)
{
    const char *alias = json_string_value(json_object_get(reg, "alias"));
    callback_stop(r->cb);
    r->cb = NULL;
    if (!alias || tunnel_open(r) < 0)
        return;
    agent_tunnel_unregister_at_close(r->tunnel, r->name, alias);
    agent_tunnel_close(r->tunnel);
    r->tunnel = NULL;
}

static void callback_close(struct run *r)
{
    callback_stop(r->cb);
    r->cb = NULL;
    tunnel_close(r);
}

const struct publish_ops publish_callback = {
    .open = tunnel_open,
    .add = callback_add,
    .remove = callback_remove,
    .close = callback_close,
};
