// clone3() into new namespaces and execveat() the agent.
// Everything after clone3 in the child is async-signal-safe: raw syscalls only,
// no allocation, no locks (the daemon is multithreaded).
#define _GNU_SOURCE
#include "sp_spawn.h"
#include "sp_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif

unsigned long long sp_clone_newuser(void) { return CLONE_NEWUSER; }
unsigned long long sp_clone_newpid(void) { return CLONE_NEWPID; }
unsigned long long sp_clone_newns(void) { return CLONE_NEWNS; }
unsigned long long sp_clone_newnet(void) { return CLONE_NEWNET; }
unsigned long long sp_clone_newipc(void) { return CLONE_NEWIPC; }
unsigned long long sp_clone_newuts(void) { return CLONE_NEWUTS; }

int sp_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

// Async-signal-safe: formats "step: errno N" into a FATAL frame on fd.
static void child_report(int fd, const char *step, int err) {
    char buf[SP_FRAME_HEADER_SIZE + 96];
    char *p = buf + SP_FRAME_HEADER_SIZE;
    size_t n = 0;
    for (const char *s = step; *s && n < 60; s++) p[n++] = *s;
    const char *mid = ": errno ";
    for (const char *s = mid; *s; s++) p[n++] = *s;
    char digits[12];
    int d = 0;
    unsigned v = (unsigned)err;
    do { digits[d++] = (char)('0' + v % 10); v /= 10; } while (v && d < 11);
    while (d) p[n++] = digits[--d];
    struct sp_frame_header h = { .length = (uint32_t)n, .type = SP_FRAME_FATAL, .stream = 0, .reserved = 0, .id = 0 };
    memcpy(buf, &h, sizeof h); // memcpy is async-signal-safe in practice (POSIX 2016 lists it)
    (void)syscall(SYS_write, fd, buf, SP_FRAME_HEADER_SIZE + n);
}

static void child_fail(const struct sp_spawn_args *a, const char *step) {
    int err = errno;
    if (a->report_fd >= 0) child_report(a->report_fd, step, err);
    syscall(SYS_exit_group, 120);
    for (;;) {}
}

static void child_run(const struct sp_spawn_args *a) {
    char go = 0;
    long r;
    do { r = syscall(SYS_read, a->sync_fd, &go, 1); } while (r < 0 && errno == EINTR);
    if (r != 1) syscall(SYS_exit_group, 121);

    // The parent has written our uid/gid maps: become root of the new user namespace.
    if (syscall(SYS_setresgid, 0, 0, 0) != 0) child_fail(a, "setresgid");
    if (syscall(SYS_setresuid, 0, 0, 0) != 0) child_fail(a, "setresuid");
    if (syscall(SYS_setgroups, 0, NULL) != 0) child_fail(a, "setgroups");

    // Move every descriptor above the highest destination first, so that
    // dup2(src, dst) can never clobber a source that is still to be placed.
    int maxdst = 2;
    for (int i = 0; i < a->nfds; i++) if (a->fds[i].dst > maxdst) maxdst = a->fds[i].dst;
    int base = maxdst + 1 + a->nfds + 1;
    int exec_high = (int)syscall(SYS_fcntl, a->exec_fd, F_DUPFD_CLOEXEC, base);
    if (exec_high < 0) child_fail(a, "dup exec fd");
    int high[64];
    if (a->nfds > 64) { errno = EINVAL; child_fail(a, "too many fds"); }
    for (int i = 0; i < a->nfds; i++) {
        high[i] = (int)syscall(SYS_fcntl, a->fds[i].src, F_DUPFD_CLOEXEC, base);
        if (high[i] < 0) child_fail(a, "dup fd");
    }
    for (int i = 0; i < a->nfds; i++) {
        if (syscall(SYS_dup3, high[i], a->fds[i].dst, 0) < 0) child_fail(a, "dup3");
    }
    // Close everything above the destinations except the exec fd.
    if (syscall(SYS_close_range, maxdst + 1, exec_high - 1, 0) != 0) child_fail(a, "close_range");
    if (syscall(SYS_close_range, exec_high + 1, ~0U, 0) != 0) child_fail(a, "close_range");

    // Default signal mask for the agent.
    uint64_t empty = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, sizeof empty);

    syscall(SYS_execveat, exec_high, "", a->argv, a->envp, AT_EMPTY_PATH);
    child_fail(a, "execveat agent");
}

pid_t sp_spawn_sandbox(const struct sp_spawn_args *a, int *pidfd_out) {
    int pidfd = -1;
    struct clone_args ca;
    memset(&ca, 0, sizeof ca);
    ca.flags = a->clone_flags | CLONE_PIDFD;
    ca.pidfd = (uint64_t)(uintptr_t)&pidfd;
    ca.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &ca, sizeof ca);
    if (pid < 0) return -1;
    if (pid == 0) {
        child_run(a);
        syscall(SYS_exit_group, 122);
    }
    if (pidfd_out) *pidfd_out = pidfd;
    return (pid_t)pid;
}
