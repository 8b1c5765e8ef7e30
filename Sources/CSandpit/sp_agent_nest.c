// NEST, in a warm template's zygote agent: starts the first process of a new
// sandbox whose user and pid namespaces are children of the zygote's. Only
// that lets the zygote's interpreter fork a copy of itself into the new
// sandbox (setns needs privilege over the target namespaces; see
// docs/ARCHITECTURE.md, "Warm templates"). The new sandbox is otherwise made
// like any other: the daemon built its root, /usr and cgroup with full
// privileges and sends them here; the child waits for the daemon's go-ahead
// (after the daemon has moved it into its cgroup), becomes root of its user
// namespace and execs the same agent, which sets up its mounts, network,
// hardening and seccomp filter as usual.
//
// The agent is single-threaded, so the child is a plain fork (clone3 without
// CLONE_VM) and runs ordinary async-signal-safe calls before execveat.
#define _GNU_SOURCE
#include "sp_agent.h"
#include "sp_proto.h"
#include "sp_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif

#define MAX_NEST_FDS 7

static void reply(int ctrl, uint32_t id, int32_t value, const char *text) {
    sp_send_frame(ctrl, SP_FRAME_NESTED, 0, id, &value, sizeof value, text, text ? strlen(text) : 0);
}


// The child: waits for the go-ahead, places its descriptors and execs the agent.
__attribute__((noreturn)) static void child(const int *src, const int *dst, int nmap, int exec_fd, int sync_fd, char **argv) {
    char go;
    ssize_t r;
    do { r = read(sync_fd, &go, 1); } while (r < 0 && errno == EINTR);
    const char *step = "wait for the daemon";
    if (r != 1) goto fail;
    step = "become root of the sandbox's user namespace";
    if (setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0 || setgroups(0, NULL) != 0) goto fail;
    // Above every destination first, so no dup3 clobbers a source still to be placed.
    step = "place descriptors";
    int high[MAX_NEST_FDS];
    int base = 64;
    int exec_high = fcntl(exec_fd, F_DUPFD_CLOEXEC, base);
    if (exec_high < 0) goto fail;
    for (int i = 0; i < nmap; i++) if ((high[i] = fcntl(src[i], F_DUPFD_CLOEXEC, exec_high + 1)) < 0) goto fail;
    for (int i = 0; i < nmap; i++) if (dup3(high[i], dst[i], 0) < 0) goto fail;
    syscall(SYS_close_range, SP_AGENT_FD_DEV + 1, exec_high - 1, 0);
    syscall(SYS_close_range, exec_high + 1, ~0U, 0);
    for (int i = 0; i <= SP_AGENT_FD_DEV; i++) {
        int placed = 0;
        for (int k = 0; k < nmap; k++) if (dst[k] == i) placed = 1;
        if (!placed) close(i);
    }
    sigset_t none;
    sigemptyset(&none);
    for (int sig = 1; sig < NSIG; sig++) if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
    char *envp[] = { NULL };
    syscall(SYS_execveat, exec_high, "", argv, envp, AT_EMPTY_PATH);
    step = "execveat agent";
fail:;
    char msg[160];
    int n = snprintf(msg, sizeof msg, "%s: errno %d", step, errno);
    sp_send_frame(SP_AGENT_FD_CTRL, SP_FRAME_FATAL, 0, 0, msg, (size_t)(n < 0 ? 0 : n), NULL, 0);
    _exit(120);
}

void sp_agent_nest(int ctrl, int nest_fd, uint32_t id, const char *payload, size_t len) {
    struct sp_nest_header h;
    int fds[MAX_NEST_FDS];
    // The daemon sends them before the NEST frame, so they are queued by now:
    // never block the agent's loop waiting for descriptors that will not come.
    int nfds = nest_fd >= 0 ? sp_recv_fds(nest_fd, fds, MAX_NEST_FDS, 0) : -1;
    if (nfds < 0) { reply(ctrl, id, -EBADF, "no descriptors for the nested sandbox"); return; }
    char **argv = NULL;
    int pidfd = -1;
    if (len < sizeof h) { reply(ctrl, id, -EINVAL, "malformed nest request"); goto out; }
    memcpy(&h, payload, sizeof h);
    int want = 4 + ((h.fd_mask & SP_NEST_USR) != 0) + ((h.fd_mask & SP_NEST_CGROUP) != 0) + ((h.fd_mask & SP_NEST_DEV) != 0);
    if (nfds != want || h.argc == 0 || h.argc > 64 || h.id_count == 0) { reply(ctrl, id, -EINVAL, "malformed nest request"); goto out; }
    argv = calloc(h.argc + 1, sizeof *argv);
    if (!argv) { reply(ctrl, id, -ENOMEM, "nest"); goto out; }
    const char *p = payload + sizeof h, *end = payload + len;
    for (uint32_t i = 0; i < h.argc; i++) {
        const char *z = memchr(p, 0, (size_t)(end - p));
        if (!z) { reply(ctrl, id, -EINVAL, "malformed nest request"); goto out; }
        argv[i] = (char *)p;
        p = z + 1;
    }
    int src[MAX_NEST_FDS], dst[MAX_NEST_FDS], nmap = 0, k = 0;
    src[nmap] = fds[k++]; dst[nmap++] = SP_AGENT_FD_CTRL;
    src[nmap] = fds[k++]; dst[nmap++] = SP_AGENT_FD_ROOT;
    if (h.fd_mask & SP_NEST_USR) { src[nmap] = fds[k++]; dst[nmap++] = SP_AGENT_FD_USR; }
    if (h.fd_mask & SP_NEST_CGROUP) { src[nmap] = fds[k++]; dst[nmap++] = SP_AGENT_FD_CGROUP; }
    if (h.fd_mask & SP_NEST_DEV) { src[nmap] = fds[k++]; dst[nmap++] = SP_AGENT_FD_DEV; }
    int exec_fd = fds[k++], sync_fd = fds[k++];

    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
    ca.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid < 0) { reply(ctrl, id, -errno, "clone the nested sandbox"); goto out; }
    if (pid == 0) child(src, dst, nmap, exec_fd, sync_fd, argv);

    // Its ids map 1:1 onto ours (which map onto the host's range); only a
    // process in this (the parent) user namespace may write the maps.
    char path[64], line[64];
    snprintf(line, sizeof line, "0 0 %u\n", h.id_count);
    snprintf(path, sizeof path, "/proc/%ld/uid_map", pid);
    int ok = sp_write_file(path, line) == 0;
    snprintf(path, sizeof path, "/proc/%ld/gid_map", pid);
    ok = ok && sp_write_file(path, line) == 0;
    if (!ok) {
        int e = errno;
        kill((pid_t)pid, SIGKILL);
        reply(ctrl, id, -e, "write the nested sandbox's id maps");
        goto out;
    }
    reply(ctrl, id, (int32_t)pid, NULL);
    if (sp_send_fds(nest_fd, &pidfd, 1) != 0) kill((pid_t)pid, SIGKILL);   // the daemon then sees the agent exit
out:
    if (pidfd >= 0) close(pidfd);
    for (int i = 0; i < nfds; i++) close(fds[i]);
    free(argv);
}
