/*
 * rendezvous — where the `jobgate run`s of one user on one node find the
 * tunnel that one of them started to a gateway (docs/policy.md, "One tunnel
 * per user, node and gateway"): a UNIX socket in the user's runtime
 * directory, named by a hash of what makes tunnels interchangeable (the
 * gateway, the job, the policy, the identity), and the lock that makes one
 * holder per name. Both ends check the other's uid (SO_PEERCRED).
 *
 * The messages are JSON objects, one per line (at most RDV_LINE_MAX bytes),
 * over a blocking socket, each read bounded by a timeout:
 *   run -> holder: {"op":"register","name":..,"sock":..|"port":..,"ttl":..,
 *                   "callback_port":..,"alias":..}, {"op":"unregister"}
 *   holder -> run: {"type":"open"} once the tunnel is up (or an error),
 *                  {"type":"registered",...}, {"type":"unregistered"},
 *                  {"type":"error","error":..,"code":..},
 *                  {"type":"event","event":..,"message":..,...} (agent_tunnel.h)
 * A run's connection is its app's registration: when it closes, the holder
 * takes the app's route back; when the holder's last run is gone, it closes
 * the tunnel and exits.
 *
 * No globals: any thread, one reader per socket.
 */
#ifndef JG_RENDEZVOUS_H
#define JG_RENDEZVOUS_H

#include <stddef.h>

#include <jansson.h>

#define RDV_LINE_MAX (64 * 1024)

struct rdv_paths {
    char dir[256];
    char sock[108];   /* sun_path */
    char lock[128];
};

#define RDV_KEY_LEN 16

/* The key of a tunnel's name (ident: what makes two runs' tunnels one): hex
 * of its SHA-256, what the holder is given on its command line (the ident
 * may hold a proxy's credentials; `ps` shows everyone the key only). */
int rdv_key(const char *ident, char key[RDV_KEY_LEN + 1]);

/* The directory ($XDG_RUNTIME_DIR/jobgate, else /tmp/jobgate-UID: made 0700,
 * and refused unless it is ours and nobody else's) and the names for key.
 * 0, or -errno with err. */
int rdv_paths(const char *key, struct rdv_paths *p, char *err, size_t errlen);

/* Connects to the holder at path: the fd (blocking, close-on-exec), or
 * -ENOENT / -ECONNREFUSED when there is none, -EPERM when its peer is not
 * this user, -errno otherwise (with err). */
int rdv_connect(const char *path, char *err, size_t errlen);

/* For the holder: takes the lock, to be held until it exits: its fd, or
 * -EBUSY when another holder has it, or -errno with err. */
int rdv_lock(const struct rdv_paths *p, char *err, size_t errlen);
/* With the lock held: binds and listens at p->sock (a stale socket is
 * replaced). The listening fd, or -errno with err. */
int rdv_listen(const struct rdv_paths *p, char *err, size_t errlen);

/* 1 when the peer of a connected UNIX socket is this user. */
int rdv_peer_is_me(int fd);

/* Sends msg as one line (takes it). 0 or -errno (a peer that went away:
 * -EPIPE, never SIGPIPE). */
int rdv_send(int fd, json_t *msg);

/* As rdv_send, but never waits: a peer whose buffer is full gets -EAGAIN
 * (and possibly part of the line: the caller ends that connection). */
int rdv_send_nowait(int fd, json_t *msg);

/* A line reader over one socket. */
struct rdv_reader {
    int fd;
    char *buf;
    size_t len;
};
void rdv_reader_init(struct rdv_reader *r, int fd);
void rdv_reader_free(struct rdv_reader *r);
/* The next message within timeout_ms (-1: no limit) into *msg: 0; -ETIMEDOUT;
 * -ECONNRESET at the end of the stream; -EPROTO (too long, not a JSON
 * object); -errno. */
int rdv_recv(struct rdv_reader *r, json_t **msg, int timeout_ms);

#endif
