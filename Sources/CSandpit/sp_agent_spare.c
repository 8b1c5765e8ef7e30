// A spare process: the next command's process, made ahead of time and
// already in its cgroup, so a spawn skips the cgroup attach.
//
// Moving a process into a cgroup takes a global lock that must wait an RCU
// grace period (7-20 ms) when no attach happened for a while, so an agent
// that spawned each command into a fresh cgroup paid that wait on the
// request path whenever the caller had paused between calls (an agent
// thinking). The agent now forks a spare once it has been idle a moment;
// the spare joins a group of its own, "ex_s<n>" (paying the wait there), and
// blocks on a socket. A spawn hands it the command: its stdio and error pipe
// as SCM_RIGHTS, then path, cwd, argv and envp; the spare's group becomes the
// exec's under that name (the agent keeps it with the exec), so a spawn makes
// no cgroup call at all: a rename or mkdir would take cgroup_mutex, which
// another sandbox's spare holds through its own grace period. From there the
// spare runs the same last steps as a vfork child (sp_agent_exec.c).
//
// CLONE_INTO_CGROUP (v2) would place a child without the lock, but the agent
// runs under the sandbox's seccomp filter, which refuses clone3 (its flags
// are behind a pointer the filter cannot read).
#define _GNU_SOURCE
#include "sp_agent.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

struct spare_req {
    uint32_t pty, uid, gid, argc, envc, root_caps;
    uint64_t nofile;
    uint64_t blob;      // bytes that follow: path, cwd, argv and envp, each NUL-terminated
};

static pid_t spare_pid = -1;
static int spare_sock = -1;
static char spare_group[24];        // the spare's group: a kept one, or "ex_s<n>"
static int32_t spare_ooms;          // that group's OOM count when the spare took it
// A spare killed after it failed to take a command, until reaped: its group
// is given back then.
static pid_t dying_pid = -1;
static char dying_group[24];
static int32_t dying_ooms;

int sp_agent_spare_ready(void) { return spare_pid > 0; }

static struct timespec spare_born;

int sp_agent_spare_reaped(int pid) {
    if (pid > 0 && pid == dying_pid) {
        dying_pid = -1;
        (void)sp_group_release(dying_group, dying_ooms);
        return 1;
    }
    if (pid != spare_pid || pid <= 0) return 0;
    spare_pid = -1;
    if (spare_sock >= 0) close(spare_sock);
    spare_sock = -1;
    (void)sp_group_release(spare_group, spare_ooms);
    spare_group[0] = 0;
    // Dead within 50 ms of its fork: it could not join its group (or fork's
    // resources ran out); 2 when the caller should wait before the next one.
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ms = (now.tv_sec - spare_born.tv_sec) * 1000LL + (now.tv_nsec - spare_born.tv_nsec) / 1000000;
    return ms < 50 ? 2 : 1;
}

static int read_full(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

// Closes every descriptor from 3 up but a and b.
static void close_all_but(int a, int b) {
    if (a > b) { int t = a; a = b; b = t; }
    if (a > 3) syscall(SYS_close_range, 3, a - 1, 0);
    if (b > a + 1) syscall(SYS_close_range, a + 1, b - 1, 0);
    syscall(SYS_close_range, b + 1, ~0U, 0);
}

static _Noreturn void spare_main(int sock, int procs_fd) {
    prctl(PR_SET_NAME, "sandpit-spare");
    if (sock <= 2) sock = fcntl(sock, F_DUPFD_CLOEXEC, 3);
    if (procs_fd <= 2) procs_fd = fcntl(procs_fd, F_DUPFD_CLOEXEC, 3);
    if (sock < 0 || procs_fd < 0) _exit(1);
    close_all_but(sock, procs_fd);
    // Nothing of the agent's: its 0-2 may be other commands' pipes.
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd < 3; fd++) { if (null >= 0 && fd != null) dup2(null, fd); else if (fd != null) close(fd); }
    // Its own session now, as a command's process has; then the slow part.
    if (setsid() < 0 || write(procs_fd, "0", 1) != 1) _exit(1);
    close(procs_fd);

    struct spare_req rq;
    int fds[4] = { -1, -1, -1, -1 };
    union { char buf[CMSG_SPACE(sizeof fds)]; struct cmsghdr align; } u;
    struct iovec iov = { &rq, sizeof rq };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
    ssize_t n;
    do n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL); while (n < 0 && errno == EINTR);
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (n != (ssize_t)sizeof rq || !c || c->cmsg_type != SCM_RIGHTS || c->cmsg_len != CMSG_LEN(sizeof fds)) _exit(0);   // the agent is gone
    memcpy(fds, CMSG_DATA(c), sizeof fds);
    struct sp_child_err ce = { SP_STEP_SPAWN, EPROTO };
    char *blob = rq.blob < (64u << 20) ? malloc(rq.blob + 1) : NULL;
    char **argv = calloc((size_t)rq.argc + 1, sizeof *argv), **envp = calloc((size_t)rq.envc + 1, sizeof *envp);
    if (!blob || !argv || !envp || rq.argc == 0 || read_full(sock, blob, rq.blob) != 0) goto fail;
    blob[rq.blob] = 0;
    const char *p = blob, *end = blob + rq.blob;
    const char *strs[2];
    for (int i = 0; i < 2; i++) { strs[i] = p; p += strlen(p) + 1; if (p > end) goto fail; }
    for (uint32_t i = 0; i < rq.argc; i++) { argv[i] = (char *)p; p += strlen(p) + 1; if (p > end) goto fail; }
    for (uint32_t i = 0; i < rq.envc; i++) { envp[i] = (char *)p; p += strlen(p) + 1; if (p > end) goto fail; }
    close(sock);
    struct sp_launch l = {
        .in = fds[0], .out = fds[1], .err = fds[2], .ep = fds[3], .procs_fd = -1, .setsid = 0,
        .pty = (int)rq.pty, .placeholder = 0, .root_caps = (int)rq.root_caps, .nofile = (unsigned long)rq.nofile,
        .uid = rq.uid, .gid = rq.gid,
        .path = strs[0], .cwd = strs[1], .argv = argv, .envp = envp,
    };
    sp_agent_become(&l);
fail:
    if (fds[3] >= 0) (void)!write(fds[3], &ce, sizeof ce);
    _exit(127);
}

int sp_agent_spare_make(int cgroup_fd) {
    if (spare_pid > 0) return 1;
    if (cgroup_fd < 0) return -1;
    static unsigned serial;
    char fresh[24];
    snprintf(fresh, sizeof fresh, "ex_s%u", ++serial);
    if (!sp_group_take(spare_group, sizeof spare_group, &spare_ooms) &&
        sp_group_make(spare_group, sizeof spare_group, fresh, &spare_ooms) != 0) return 0;
    char procs_path[48];
    snprintf(procs_path, sizeof procs_path, "%s/cgroup.procs", spare_group);
    int procs = openat(cgroup_fd, procs_path, O_WRONLY | O_CLOEXEC);
    if (procs < 0) { (void)sp_group_release(spare_group, spare_ooms); return 0; }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) { close(procs); (void)sp_group_release(spare_group, spare_ooms); return 0; }
    pid_t pid = fork();
    if (pid == 0) { close(sv[0]); spare_main(sv[1], procs); }
    close(procs);
    close(sv[1]);
    if (pid < 0) { close(sv[0]); (void)sp_group_release(spare_group, spare_ooms); return 0; }
    spare_pid = pid;
    spare_sock = sv[0];
    clock_gettime(CLOCK_MONOTONIC, &spare_born);
    return 1;
}

int sp_agent_spare_launch(char *group, size_t glen, int32_t *ooms, const struct sp_launch *l) {
    if (spare_pid <= 0) return -1;
    size_t blob = strlen(l->path) + 1 + strlen(l->cwd) + 1;
    for (int i = 0; i < l->argc; i++) blob += strlen(l->argv[i]) + 1;
    for (int i = 0; i < l->envc; i++) blob += strlen(l->envp[i]) + 1;
    struct spare_req rq = { (uint32_t)l->pty, l->uid, l->gid, (uint32_t)l->argc, (uint32_t)l->envc, (uint32_t)l->root_caps, l->nofile, blob };
    // One buffer, one sendmsg: the spare wakes once for the whole command.
    size_t total = sizeof rq + blob;
    char *msg = malloc(total);
    if (!msg) return -1;   // the spare stays for the next spawn
    memcpy(msg, &rq, sizeof rq);
    char *p = msg + sizeof rq;
    const char *heads[2] = { l->path, l->cwd };
    for (int i = 0; i < 2; i++) { size_t k = strlen(heads[i]) + 1; memcpy(p, heads[i], k); p += k; }
    for (int i = 0; i < l->argc; i++) { size_t k = strlen(l->argv[i]) + 1; memcpy(p, l->argv[i], k); p += k; }
    for (int i = 0; i < l->envc; i++) { size_t k = strlen(l->envp[i]) + 1; memcpy(p, l->envp[i], k); p += k; }
    int fds[4] = { l->in, l->out, l->err, l->ep };
    union { char buf[CMSG_SPACE(sizeof fds)]; struct cmsghdr align; } u;
    memset(&u, 0, sizeof u);
    struct iovec iov = { msg, total };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof u.buf };
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(c), fds, sizeof fds);
    ssize_t n;
    do n = sendmsg(spare_sock, &m, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
    // A long environment may not fit the socket's buffer at once: the rest follows as the spare reads.
    int ok = n >= (ssize_t)sizeof rq && write_full(spare_sock, msg + n, total - (size_t)n) == 0;
    free(msg);
    pid_t pid = spare_pid;
    close(spare_sock);
    spare_sock = -1;
    spare_pid = -1;
    if (!ok) {
        // Died waiting (a restore kills every process): the caller spawns
        // into a group of its own as it would without a spare. The group
        // is given back when the spare is reaped.
        kill(pid, SIGKILL);
        dying_pid = pid;
        memcpy(dying_group, spare_group, sizeof dying_group);
        dying_ooms = spare_ooms;
        spare_group[0] = 0;
        return -1;
    }
    // The spare's group becomes the command's, under the spare's name.
    snprintf(group, glen, "%s", spare_group);
    *ooms = spare_ooms;
    spare_group[0] = 0;
    return pid;
}
