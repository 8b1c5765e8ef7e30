// The agent's event loop: one poll() over the control socket, a signalfd for
// SIGCHLD, and every running exec's pipes. Single-threaded; a command's
// process is the spare made ahead of time (sp_agent_spare.c) or a vfork()
// child, and only makes syscalls before execve() (sp_agent_exec.c).
#define _GNU_SOURCE
#include "sp_agent.h"
#include "sp_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_EXECS 1024
#define DRAIN_GRACE_NS (100LL * 1000 * 1000)
// A spare process is forked once nothing happened for this long: no frame in
// or out, no command ended. Calls back to back spawn while the cgroup lock is
// hot and need none; and a step's checkpoint, which freezes the sandbox's
// cgroup right after its command ended or its cell answered, must not find
// the spare in the middle of its attach (uninterruptible, so unfreezable,
// for a grace period). After a failed fork, again only this much later:
#define SPARE_DELAY_NS (5LL * 1000 * 1000)
#define SPARE_RETRY_NS (1000LL * 1000 * 1000)

struct exec {
    int used;
    uint32_t id;
    pid_t pid;
    int out_fd, err_fd, in_fd;
    int exited;
    int status;
    int64_t drain_deadline;
    char *inbuf;
    size_t inlen, inoff, incap;
    int in_close_pending;
    int pty;            // out_fd is a PTY master (stream 3); in_fd a second descriptor of it
    uint64_t in_total;  // STDIN bytes written to the command (acknowledged to the daemon)
    char group[24];     // its cgroup (sp_agent_groups.c): a kept one, or one made for it
    int32_t oom_base;   // that group's OOM count when the command took it (-1: unknown)
};

// Groups of ended commands that still hold processes (they left them
// running): a later SIGNAL for the exec reaches them through this.
#define LEFT_GROUPS 256
static struct { uint32_t id; char group[24]; } left_groups[LEFT_GROUPS];
static unsigned left_next;

static void group_of(uint32_t id, char *out, size_t len);

static struct exec execs[MAX_EXECS];
static int ctrl = -1;
static const struct sp_agent_config *config;
static int64_t last_activity_ns;   // the last frame in or out, or command ended

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void send_or_die(unsigned type, unsigned stream, unsigned id, const void *a, size_t alen, const void *b, size_t blen) {
    last_activity_ns = now_ns();
    // The daemon is gone or broken: exiting as PID 1 takes the whole sandbox with us.
    if (sp_send_frame(ctrl, type, stream, id, a, alen, b, blen) != 0) _exit(0);
}

static struct exec *find_id(uint32_t id) {
    for (int i = 0; i < MAX_EXECS; i++) if (execs[i].used && execs[i].id == id) return &execs[i];
    return NULL;
}

static struct exec *find_pid(pid_t pid) {
    for (int i = 0; i < MAX_EXECS; i++) if (execs[i].used && !execs[i].exited && execs[i].pid == pid) return &execs[i];
    return NULL;
}

static int live_execs(void) {
    int n = 0;
    for (int i = 0; i < MAX_EXECS; i++) n += execs[i].used;
    return n;
}

static void fill_stats(struct sp_stats *st) {
    memset(st, 0, sizeof *st);
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "re");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
        fclose(f);
    }
    st->rss_bytes = (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
    st->live_execs = (uint32_t)live_execs();
}

static void spawn_error(uint32_t id, int err, const char *what) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
    int32_t e = err;
    send_or_die(SP_FRAME_SPAWN_ERROR, 0, id, &e, sizeof e, msg, (size_t)(n < 0 ? 0 : n));
}

// Finds an executable for argv[0] on the PATH from the exec's own environment.
static int resolve(const char *name, char *const *envp, char *out, size_t outlen) {
    if (strchr(name, '/')) {
        if (strlen(name) >= outlen) { errno = ENAMETOOLONG; return -1; }
        strcpy(out, name);
        return 0;
    }
    const char *path = "/usr/local/bin:/usr/bin:/bin";
    for (char *const *e = envp; *e; e++) if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
    int saw_eacces = 0;
    const char *p = path;
    while (*p) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        int n = snprintf(out, outlen, "%.*s/%s", (int)(dlen ? dlen : 1), dlen ? p : ".", name);
        if (n > 0 && (size_t)n < outlen) {
            struct stat st;
            if (stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
                if (st.st_mode & 0111) return 0;
                saw_eacces = 1;
            }
        }
        if (!colon) break;
        p = colon + 1;
    }
    errno = saw_eacces ? EACCES : ENOENT;
    return -1;
}

// Moves *fd above the standard descriptors (close-on-exec); 0 on success.
static int lift_fd(int *fd) {
    if (*fd > 2) return 0;
    int hi = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
    if (hi < 0) return -1;
    close(*fd);
    *fd = hi;
    return 0;
}

static void do_spawn(uint32_t id, const char *payload, size_t len) {
    struct sp_spawn_header h;
    if (len < sizeof h || find_id(id)) { spawn_error(id, EINVAL, "malformed spawn request"); return; }
    memcpy(&h, payload, sizeof h);
    const char *p = payload + sizeof h, *end = payload + len;
    size_t nstr = 1 + (size_t)h.argc + (size_t)h.envc;
    if (h.argc == 0 || h.argc > 65536 || h.envc > 65536) { spawn_error(id, EINVAL, "malformed spawn request"); return; }
    const char **strs = calloc(nstr + 2, sizeof *strs);
    if (!strs) { spawn_error(id, ENOMEM, "spawn"); return; }
    for (size_t i = 0; i < nstr; i++) {
        const char *z = memchr(p, 0, (size_t)(end - p));
        if (!z) { free(strs); spawn_error(id, EINVAL, "malformed spawn request"); return; }
        strs[i] = p;
        p = z + 1;
    }
    const char *cwd = strs[0];
    char **argv = calloc(h.argc + 1, sizeof *argv);
    char **envp = calloc(h.envc + 1, sizeof *envp);
    if (!argv || !envp) { free(strs); free(argv); free(envp); spawn_error(id, ENOMEM, "spawn"); return; }
    for (uint32_t i = 0; i < h.argc; i++) argv[i] = (char *)strs[1 + i];
    for (uint32_t i = 0; i < h.envc; i++) envp[i] = (char *)strs[1 + h.argc + i];

    struct exec *x = NULL;
    for (int i = 0; i < MAX_EXECS; i++) if (!execs[i].used) { x = &execs[i]; break; }
    char path[4096];
    int out[2] = { -1, -1 }, err[2] = { -1, -1 }, in[2] = { -1, -1 }, ep[2] = { -1, -1 };
    if (!x) { spawn_error(id, EAGAIN, "too many concurrent execs in this sandbox"); goto done; }
    int placeholder = (h.flags & SP_SPAWN_PLACEHOLDER) != 0;
    if (!placeholder && resolve(argv[0], envp, path, sizeof path) != 0) {
        char what[300];
        snprintf(what, sizeof what, "exec \"%.256s\"", argv[0]);
        spawn_error(id, errno, what);
        goto done;
    }
    int pty = (h.flags & SP_SPAWN_PTY) != 0;
    if (pty) {
        // A terminal of the sandbox's own devpts instance: out[0] is the master
        // (read by this loop), in[1] a second descriptor of it (typed into),
        // and the child's stdin, stdout and stderr are the slave.
        if (sp_agent_open_pty(h.winsize >> 16, h.winsize & 0xffff, &out[0], &out[1]) != 0) { spawn_error(id, errno, "open a pseudo-terminal"); goto fail; }
        in[1] = fcntl(out[0], F_DUPFD_CLOEXEC, 3);
        in[0] = fcntl(out[1], F_DUPFD_CLOEXEC, 3);
        err[1] = fcntl(out[1], F_DUPFD_CLOEXEC, 3);
        if (in[1] < 0 || in[0] < 0 || err[1] < 0) { spawn_error(id, errno, "dup"); goto fail; }
    } else if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
        spawn_error(id, errno, "pipe");
        goto fail;
    } else if (h.flags & SP_SPAWN_STDIN) {
        if (pipe2(in, O_CLOEXEC)) { spawn_error(id, errno, "pipe"); goto fail; }
    } else {
        in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (in[0] < 0) { spawn_error(id, errno, "open /dev/null"); goto fail; }
    }
    // The child reports a failure before exec on this pipe after it has put
    // its stdio in place: neither end may be one of fds 0-2.
    if (pipe2(ep, O_CLOEXEC) || lift_fd(&ep[0]) || lift_fd(&ep[1])) { spawn_error(id, errno, "pipe"); goto fail; }
    // Each command's whole process tree lives in its own cgroup
    // (sp_agent_groups.c). The spare (sp_agent_spare.c) is already in one;
    // else the child joins one kept from an ended command or made ahead of
    // time, after the previous spawn. A placeholder's is named for its id:
    // the daemon moves the interpreter into it.
    char group[24] = "";
    int32_t oom_base = -1;
    struct sp_launch l = {
        .in = in[0], .out = out[1], .err = err[1], .ep = ep[1], .procs_fd = -1, .setsid = 1,
        .pty = pty, .placeholder = placeholder, .root_caps = (h.flags & SP_SPAWN_ROOT_CAPS) != 0,
        .nofile = config->nofile, .uid = h.uid, .gid = h.gid,
        .path = path, .cwd = cwd, .argv = argv, .envp = envp, .argc = (int)h.argc, .envc = (int)h.envc,
    };
    pid_t pid = -1;
    if (!placeholder && config->cgroup_fd >= 0) pid = sp_agent_spare_launch(group, sizeof group, &oom_base, &l);
    if (pid < 0) {
        if (config->cgroup_fd >= 0) {
            char named[24];
            snprintf(named, sizeof named, "ex_%u", id);
            if ((!placeholder && sp_group_take(group, sizeof group, &oom_base)) ||
                sp_group_make(group, sizeof group, named, &oom_base) == 0) {
                char procs[48];
                snprintf(procs, sizeof procs, "%s/cgroup.procs", group);
                l.procs_fd = openat(config->cgroup_fd, procs, O_WRONLY | O_CLOEXEC);
            } else group[0] = 0;
        }
        // A placeholder runs no program, so it cannot be a vfork child (which
        // would hold this loop until it execs); the agent is single-threaded.
        pid = placeholder ? fork() : vfork();
        if (pid == 0) sp_agent_become(&l);
        if (l.procs_fd >= 0) close(l.procs_fd);
    }
    if (pid < 0) { spawn_error(id, errno, "fork"); (void)sp_group_release(group, oom_base); goto fail; }
    close(ep[1]); ep[1] = -1;
    struct sp_child_err ce;
    ssize_t r = read(ep[0], &ce, sizeof ce);
    if (r == (ssize_t)sizeof ce) {
        // The child never ran the command; reap it here so it is not mistaken for an exec exit.
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        (void)sp_group_release(group, oom_base);
        static const char *steps[SP_STEP_COUNT] = {
            [SP_STEP_SPAWN] = "spawn", [SP_STEP_SETSID] = "setsid", [SP_STEP_STDIO] = "redirect stdio",
            [SP_STEP_CREDENTIALS] = "set credentials", [SP_STEP_CWD] = "", [SP_STEP_EXEC] = "exec",
            [SP_STEP_NOFILE] = "set open-file limit", [SP_STEP_CGROUP] = "join exec cgroup", [SP_STEP_TERMINAL] = "take the terminal",
            [SP_STEP_CAPABILITIES] = "keep root's capabilities",
        };
        char what[4400];
        if (ce.step == SP_STEP_CWD) snprintf(what, sizeof what, "working directory \"%.1024s\"", cwd);
        else if (ce.step == SP_STEP_EXEC) snprintf(what, sizeof what, "exec \"%.1024s\"", path);
        else snprintf(what, sizeof what, "%s", steps[ce.step > 0 && ce.step < SP_STEP_COUNT ? ce.step : 0]);
        spawn_error(id, ce.err, what);
        goto fail;
    }
    memset(x, 0, sizeof *x);
    x->used = 1;
    x->id = id;
    x->pid = pid;
    x->pty = pty;
    memcpy(x->group, group, sizeof x->group);
    x->oom_base = oom_base;
    x->out_fd = out[0];
    x->err_fd = err[0];
    x->in_fd = (pty || (h.flags & SP_SPAWN_STDIN)) ? in[1] : -1;
    fcntl(x->out_fd, F_SETFL, O_NONBLOCK);
    if (x->err_fd >= 0) fcntl(x->err_fd, F_SETFL, O_NONBLOCK);
    if (x->in_fd >= 0) fcntl(x->in_fd, F_SETFL, O_NONBLOCK);
    out[0] = err[0] = -1;
    if (x->in_fd >= 0) in[1] = -1;
    int32_t p32 = pid;
    send_or_die(SP_FRAME_STARTED, 0, id, &p32, sizeof p32, NULL, 0);
    sp_group_prepare();   // for the next spawn
fail:
    for (int i = 0; i < 2; i++) {
        if (out[i] >= 0) close(out[i]);
        if (err[i] >= 0) close(err[i]);
        if (in[i] >= 0) close(in[i]);
        if (ep[i] >= 0) close(ep[i]);
    }
done:
    free(strs);
    free(argv);
    free(envp);
}

static void close_fd(int *fd) { if (*fd >= 0) { close(*fd); *fd = -1; } }

static void finish(struct exec *x) {
    close_fd(&x->out_fd);
    close_fd(&x->err_fd);
    close_fd(&x->in_fd);
    free(x->inbuf);
    // The status, and how many of the command's processes the OOM killer
    // took (-1: unknown, no memory controller for its group).
    int32_t ooms = x->group[0] ? sp_group_oom_kills(x->group) : -1;
    int32_t ended[2] = { x->status, ooms >= 0 && x->oom_base >= 0 ? ooms - x->oom_base : -1 };
    uint32_t id = x->id;
    char group[sizeof x->group];
    memcpy(group, x->group, sizeof group);
    memset(x, 0, sizeof *x);
    send_or_die(SP_FRAME_EXITED, 0, id, ended, sizeof ended, NULL, 0);
    // After the reply, off the request's path. Kept for the next command, or
    // removed; fails (EBUSY) while processes the command left running are in
    // it, and teardown removes it then.
    if (sp_group_release(group, ooms) != 0) {
        unsigned i = left_next++ % LEFT_GROUPS;
        left_groups[i].id = id;
        memcpy(left_groups[i].group, group, sizeof group);
    }
}

static void group_of(uint32_t id, char *out, size_t len) {
    struct exec *x = find_id(id);
    if (x) { snprintf(out, len, "%s", x->group); return; }
    for (unsigned i = 0; i < LEFT_GROUPS; i++) {
        if (left_groups[i].id == id && left_groups[i].group[0]) { snprintf(out, len, "%s", left_groups[i].group); return; }
    }
    snprintf(out, len, "ex_%u", id);
}

// End of input. A pipe is closed; a terminal gets its EOF character
// (^D at the start of a line), as a person would type it: closing the master
// would hang the terminal up.
static void end_input(struct exec *x) {
    if (x->pty) {
        static const char eot = 4;
        if (x->in_fd >= 0) (void)!write(x->in_fd, &eot, 1);
        x->in_close_pending = 0;
        return;
    }
    close_fd(&x->in_fd);
}

static void do_stdin(uint32_t id, const char *data, size_t len) {
    struct exec *x = find_id(id);
    if (!x || x->in_fd < 0) return;
    if (len == 0) {
        if (x->inlen == x->inoff) end_input(x);
        else x->in_close_pending = 1;
        return;
    }
    if (x->inoff == x->inlen) x->inoff = x->inlen = 0;
    if (x->inlen + len > x->incap) {
        size_t cap = x->incap ? x->incap : 65536;
        while (cap < x->inlen + len) cap *= 2;
        char *nb = realloc(x->inbuf, cap);
        if (!nb) return;
        x->inbuf = nb;
        x->incap = cap;
    }
    memcpy(x->inbuf + x->inlen, data, len);
    x->inlen += len;
}

// Sends sig to every process in the exec's cgroup. For SIGKILL, repeats a few
// passes to catch children forked while the list was being read.
static void signal_tree(uint32_t id, int sig) {
    if (config->cgroup_fd < 0) return;
    char group[24], name[48], buf[4096];
    group_of(id, group, sizeof group);
    snprintf(name, sizeof name, "%s/cgroup.procs", group);
    for (int pass = 0; pass < (sig == SIGKILL ? 8 : 1); pass++) {
        int fd = openat(config->cgroup_fd, name, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return;
        int found = 0;
        ssize_t n;
        char carry[16];
        size_t clen = 0;
        while ((n = read(fd, buf, sizeof buf)) > 0) {
            for (ssize_t i = 0; i < n; i++) {
                if (buf[i] == '\n') {
                    carry[clen] = 0;
                    long pid = strtol(carry, NULL, 10);
                    if (pid > 1) { kill((pid_t)pid, sig); found = 1; }
                    clen = 0;
                } else if (clen < sizeof carry - 1) {
                    carry[clen++] = buf[i];
                }
            }
        }
        close(fd);
        if (!found) return;
    }
}

// Reaps every child that has ended; an exec whose main process it was is
// marked exited (its EXITED goes once its pipes drain).
static void reap_children(void) {
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        struct exec *x = find_pid(pid);
        // A spare that died at once could not be made (its group refused it): not again at once.
        if (!x && sp_agent_spare_reaped(pid) == 2) last_activity_ns = now_ns() + SPARE_RETRY_NS - SPARE_DELAY_NS;
        if (x) {
            last_activity_ns = now_ns();
            x->exited = 1;
            x->status = st;
            x->drain_deadline = now_ns() + DRAIN_GRACE_NS;
            close_fd(&x->in_fd);
        }
    }
}

static int kept(pid_t pid, const int32_t *keep, size_t nkeep) {
    for (size_t i = 0; i < nkeep; i++) if (keep[i] == pid) return 1;
    return 0;
}

// One pass over /proc: SIGKILL every live process but PID 1 and `keep`.
// Returns how many were signalled (zombies are not counted).
static int kill_pass(const int32_t *keep, size_t nkeep) {
    DIR *d = opendir("/proc");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 1 || kept((pid_t)pid, keep, nkeep)) continue;
        char path[64], buf[256];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0) continue;
        buf[r] = 0;
        const char *paren = strrchr(buf, ')');
        if (paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X')) continue;
        kill((pid_t)pid, SIGKILL);
        n++;
    }
    closedir(d);
    return n;
}

// RESTORE: the daemon is about to put the sandbox's files back in place and
// wake frozen interpreter copies. Everything else must be gone first: no
// process of a later step may write to the restored files. A killed process
// cannot fork, so passes converge; processes stuck in the kernel get ~2 s.
static void do_restore(uint32_t id, const char *payload, size_t len, char *obuf) {
    uint32_t nadopt = 0;
    if (len >= sizeof nadopt) memcpy(&nadopt, payload, sizeof nadopt);
    size_t off = sizeof nadopt;
    if (len < off || nadopt > MAX_EXECS || len < off + nadopt * sizeof(struct sp_adopt)) nadopt = 0, len = off;
    for (uint32_t i = 0; i < nadopt; i++) {
        struct sp_adopt a;
        memcpy(&a, payload + off, sizeof a);
        off += sizeof a;
        struct exec *x = find_id(a.exec);
        if (x && !x->exited && a.pid > 1) x->pid = a.pid;
    }
    size_t nkeep = (len - off) / sizeof(int32_t);
    int32_t *keep = calloc(nkeep + 1, sizeof *keep);
    if (keep && nkeep) memcpy(keep, payload + off, nkeep * sizeof *keep);
    if (!keep) nkeep = 0;
    int32_t killed = 0, alive = 0;
    int64_t deadline = now_ns() + 2000LL * 1000 * 1000;
    for (;;) {
        int n = kill_pass(keep, nkeep);
        reap_children();
        if (n <= 0) { alive = n < 0 ? -1 : 0; break; }
        killed += n;
        if (now_ns() > deadline) { alive = n; break; }
        struct timespec ts = { 0, 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    free(keep);
    // What the killed processes wrote before they died goes out before the answer.
    for (int i = 0; i < MAX_EXECS; i++) {
        struct exec *x = &execs[i];
        if (!x->used) continue;
        for (int k = 0; k < 64 && x->out_fd >= 0; k++) {
            ssize_t r = read(x->out_fd, obuf, SP_OUTPUT_CHUNK);
            if (r > 0) send_or_die(SP_FRAME_OUTPUT, 1, x->id, obuf, (size_t)r, NULL, 0);
            else { if (r == 0) close_fd(&x->out_fd); break; }
        }
        for (int k = 0; k < 64 && x->err_fd >= 0; k++) {
            ssize_t r = read(x->err_fd, obuf, SP_OUTPUT_CHUNK);
            if (r > 0) send_or_die(SP_FRAME_OUTPUT, 2, x->id, obuf, (size_t)r, NULL, 0);
            else { if (r == 0) close_fd(&x->err_fd); break; }
        }
    }
    int32_t reply[2] = { killed, alive };
    send_or_die(SP_FRAME_RESTORED, 0, id, reply, sizeof reply, NULL, 0);
}

static void handle_frame(const struct sp_frame_header *h, const char *payload, char *obuf) {
    last_activity_ns = now_ns();
    switch (h->type) {
    case SP_FRAME_SPAWN: do_spawn(h->id, payload, h->length); break;
    case SP_FRAME_STDIN: do_stdin(h->id, payload, h->length); break;
    case SP_FRAME_SIGNAL: {
        struct exec *x = find_id(h->id);
        int32_t sig = 0;
        if (h->length >= sizeof sig) memcpy(&sig, payload, sizeof sig);
        if (sig > 0) {
            if (x && !x->exited) {
                kill(-x->pid, sig);
                kill(x->pid, sig);
            }
            // Also after the command itself ended: what it left running.
            signal_tree(h->id, sig);
        }
        break;
    }
    case SP_FRAME_RESIZE: {
        struct exec *x = find_id(h->id);
        uint16_t v[2] = { 0, 0 };
        if (h->length >= sizeof v) memcpy(v, payload, sizeof v);
        // The kernel sends SIGWINCH to the terminal's foreground process group.
        if (x && x->pty && x->out_fd >= 0 && v[0] && v[1]) sp_agent_resize_pty(x->out_fd, v[0], v[1]);
        break;
    }
    case SP_FRAME_RESTORE: do_restore(h->id, payload, h->length, obuf); break;
    case SP_FRAME_NEST:
        if (config->zygote) sp_agent_nest(ctrl, config->nest_fd, h->id, payload, h->length);
        break;
    case SP_FRAME_SIGNAL_PID: {
        int32_t v[2] = { 0, 0 };
        if (h->length >= sizeof v) memcpy(v, payload, sizeof v);
        if (v[0] > 1 && v[1] > 0) kill(v[0], v[1]);
        break;
    }
    case SP_FRAME_STATS: {
        struct sp_stats st;
        fill_stats(&st);
        send_or_die(SP_FRAME_STATS_REPLY, 0, h->id, &st, sizeof st, NULL, 0);
        break;
    }
    default: break;
    }
}

// The sandbox's output rate (config->output_rate bytes/s, 0 = unlimited): a
// token bucket holding at most a second's worth. While it is empty, running
// commands' pipes are not read, so a flood (`yes`) blocks on its full pipe
// instead of burning CPU in the sandbox, here and in the daemon that relays
// it, which every other sandbox's calls share. Pipes of commands that have
// exited are always drained.
static int64_t out_tokens, out_refilled_ns;

static int output_throttled(int64_t now, int64_t *next) {
    if (config->output_rate == 0) return 0;
    int64_t rate = (int64_t)config->output_rate, burst = rate < (1 << 20) ? (1 << 20) : rate;
    if (out_refilled_ns == 0) { out_tokens = burst; out_refilled_ns = now; }
    int64_t earned = (now - out_refilled_ns) * rate / 1000000000LL;
    if (earned > 0) {
        out_tokens = out_tokens + earned > burst ? burst : out_tokens + earned;
        out_refilled_ns = now;
    }
    if (out_tokens > 0) return 0;
    int64_t at = now + (1 - out_tokens) * 1000000000LL / rate;
    if (*next < 0 || at < *next) *next = at;
    return 1;
}

static void pump_output(struct exec *x, int *fd, unsigned stream, char *buf) {
    ssize_t n = read(*fd, buf, SP_OUTPUT_CHUNK);
    if (n > 0) out_tokens -= n;
    if (n > 0) send_or_die(SP_FRAME_OUTPUT, stream, x->id, buf, (size_t)n, NULL, 0);
    else if (n == 0 || (errno != EAGAIN && errno != EINTR)) close_fd(fd);
}

int sp_agent_loop(int ctrl_fd, const struct sp_agent_config *cfg) {
    config = cfg;
    ctrl = ctrl_fd;
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) return -1;

    size_t cap = SP_FRAME_HEADER_SIZE + SP_FRAME_MAX_PAYLOAD;
    char *rbuf = malloc(cap);
    char *obuf = malloc(SP_OUTPUT_CHUNK);
    size_t rlen = 0;
    struct pollfd *pfds = malloc(sizeof(struct pollfd) * (2 + 3 * MAX_EXECS));
    struct exec **owners = malloc(sizeof(struct exec *) * (2 + 3 * MAX_EXECS));
    if (!rbuf || !obuf || !pfds || !owners) return -1;
    int spares = config->cgroup_fd >= 0;
    (void)sp_groups_init(config->cgroup_fd);

    for (;;) {
        int n = 0;
        pfds[n].fd = ctrl; pfds[n].events = POLLIN; owners[n++] = NULL;
        pfds[n].fd = sfd; pfds[n].events = POLLIN; owners[n++] = NULL;
        int64_t now = now_ns(), next = -1;
        if (spares && !sp_agent_spare_ready()) {
            if (now >= last_activity_ns + SPARE_DELAY_NS) {
                int made = sp_agent_spare_make(config->cgroup_fd);
                if (made < 0) spares = 0;
                else if (made == 0) last_activity_ns = now + SPARE_RETRY_NS - SPARE_DELAY_NS;
            }
            if (!sp_agent_spare_ready() && spares) {
                int64_t at = last_activity_ns + SPARE_DELAY_NS;
                if (next < 0 || at < next) next = at;
            }
        }
        int throttled = output_throttled(now, &next);
        for (int i = 0; i < MAX_EXECS; i++) {
            struct exec *x = &execs[i];
            if (!x->used) continue;
            if (x->exited && ((x->out_fd < 0 && x->err_fd < 0) || now >= x->drain_deadline)) { finish(x); continue; }
            if (x->exited && (next < 0 || x->drain_deadline < next)) next = x->drain_deadline;
            int read_out = !throttled || x->exited;
            if (x->out_fd >= 0 && read_out) { pfds[n].fd = x->out_fd; pfds[n].events = POLLIN; owners[n++] = x; }
            if (x->err_fd >= 0 && read_out) { pfds[n].fd = x->err_fd; pfds[n].events = POLLIN; owners[n++] = x; }
            if (x->in_fd >= 0 && x->inoff < x->inlen) { pfds[n].fd = x->in_fd; pfds[n].events = POLLOUT; owners[n++] = x; }
        }
        int timeout = next < 0 ? -1 : (int)((next - now) / 1000000 + 1);
        int r = poll(pfds, (nfds_t)n, timeout);
        if (r < 0) { if (errno == EINTR) continue; return -1; }

        if (pfds[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {}
            reap_children();
        }
        for (int i = 2; i < n; i++) {
            struct exec *x = owners[i];
            if (!pfds[i].revents || !x->used) continue;
            if (pfds[i].fd == x->out_fd) pump_output(x, &x->out_fd, x->pty ? 3 : 1, obuf);
            else if (pfds[i].fd == x->err_fd) pump_output(x, &x->err_fd, 2, obuf);
            else if (pfds[i].fd == x->in_fd) {
                ssize_t w = write(x->in_fd, x->inbuf + x->inoff, x->inlen - x->inoff);
                if (w > 0) {
                    x->inoff += (size_t)w;
                    x->in_total += (uint64_t)w;
                    // The daemon sends more only as input is taken (its exec.input backpressure).
                    send_or_die(SP_FRAME_INPUT_ACK, 0, x->id, &x->in_total, sizeof x->in_total, NULL, 0);
                }
                else if (w < 0 && errno != EAGAIN && errno != EINTR) close_fd(&x->in_fd);
                if (x->inoff == x->inlen && x->in_close_pending) end_input(x);
            }
        }
        if (pfds[0].revents) {
            ssize_t got = read(ctrl, rbuf + rlen, cap - rlen);
            if (got == 0) _exit(0); // the daemon is gone: so is the sandbox
            if (got < 0) { if (errno == EINTR || errno == EAGAIN) continue; _exit(0); }
            rlen += (size_t)got;
            size_t off = 0;
            while (rlen - off >= SP_FRAME_HEADER_SIZE) {
                struct sp_frame_header h;
                memcpy(&h, rbuf + off, sizeof h);
                if (h.length > SP_FRAME_MAX_PAYLOAD) _exit(3);
                if (rlen - off < SP_FRAME_HEADER_SIZE + h.length) break;
                handle_frame(&h, rbuf + off + SP_FRAME_HEADER_SIZE, obuf);
                off += SP_FRAME_HEADER_SIZE + h.length;
            }
            memmove(rbuf, rbuf + off, rlen - off);
            rlen -= off;
        }
    }
}
