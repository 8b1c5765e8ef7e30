// clone() into new namespaces and execveat() the agent.
//
// The child shares the daemon's memory (CLONE_VM, as posix_spawn does): a
// fork of a large, multithreaded daemon would copy its page tables and leave
// every page copy-on-write, and the daemon would then pay a fault and a TLB
// shootdown per page it touches. Sharing memory makes the rules strict: the
// child runs on its own stack, makes raw syscalls only (no errno, no libc
// state, no allocation, no locks), holds every signal blocked until just
// before exec, and reads its arguments from memory the parent keeps alive
// until the child has exec'd (sp_spawn_release waits for that).
#define _GNU_SOURCE
#include "sp_spawn.h"
#include "sp_proto.h"
#include "sp_anchor.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef SECBIT_NO_SETUID_FIXUP
#define SECBIT_NO_SETUID_FIXUP (1 << 2)
#endif
#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif

#define SP_CHILD_STACK (64 * 1024)

unsigned long long sp_clone_newuser(void) { return CLONE_NEWUSER; }
unsigned long long sp_clone_newpid(void) { return CLONE_NEWPID; }
unsigned long long sp_clone_newns(void) { return CLONE_NEWNS; }
unsigned long long sp_clone_newnet(void) { return CLONE_NEWNET; }
unsigned long long sp_clone_newipc(void) { return CLONE_NEWIPC; }
unsigned long long sp_clone_newuts(void) { return CLONE_NEWUTS; }

int sp_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

// A syscall that returns -errno instead of touching errno: the child shares
// the parent thread's TLS, so it must not write errno.
static long raw(long n, long a, long b, long c, long d, long e) {
    long ret;
#if defined(__x86_64__)
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8) : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4) : "memory");
    ret = x0;
#else
#error "sp_spawn supports x86_64 and aarch64"
#endif
    return ret;
}

// Formats "step: errno N" into a FATAL frame on fd.
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
    char *q = buf;
    const char *hp = (const char *)&h;
    for (size_t i = 0; i < SP_FRAME_HEADER_SIZE; i++) q[i] = hp[i];
    (void)raw(SYS_write, fd, (long)buf, (long)(SP_FRAME_HEADER_SIZE + n), 0, 0);
}

__attribute__((noreturn)) static void child_exit(int code) {
    for (;;) (void)raw(SYS_exit_group, code, 0, 0, 0, 0);
}

__attribute__((noreturn)) static void child_fail(const struct sp_spawn_args *a, const char *step, long rc) {
    if (a->report_fd >= 0) child_report(a->report_fd, step, (int)-rc);
    child_exit(120);
}

static int child_run(void *arg) {
    const struct sp_spawn_args *a = arg;
    long r;

    // Descriptors first, before waiting for the go-ahead: the child starts with
    // a copy of every descriptor of the daemon (its lock on the data dir, its
    // sockets, the write end of our own sync pipe). Holding them while blocked
    // would keep a dead daemon's lock and make the wait below endless; with
    // only ours left, a daemon that dies before letting us go is EOF on the
    // sync pipe, and we exit.
    // Move every descriptor above the highest destination first, so that
    // dup3(src, dst) can never clobber a source that is still to be placed.
    // The exec fd, the exec-watch pipe and the sync pipe stay open
    // (close-on-exec) up there.
    int maxdst = 2;
    for (int i = 0; i < a->nfds; i++) if (a->fds[i].dst > maxdst) maxdst = a->fds[i].dst;
    int base = maxdst + 1 + a->nfds + 3;
    long exec_high = raw(SYS_fcntl, a->exec_fd, F_DUPFD_CLOEXEC, base, 0, 0);
    if (exec_high < 0) child_fail(a, "dup exec fd", exec_high);
    long watch_high = raw(SYS_fcntl, a->watch_fd, F_DUPFD_CLOEXEC, exec_high + 1, 0, 0);
    if (watch_high < 0) child_fail(a, "dup watch fd", watch_high);
    long sync_high = raw(SYS_fcntl, a->sync_fd, F_DUPFD_CLOEXEC, watch_high + 1, 0, 0);
    if (sync_high < 0) child_fail(a, "dup sync fd", sync_high);
    int high[64];
    if (a->nfds > 64) child_fail(a, "too many fds", -EINVAL);
    for (int i = 0; i < a->nfds; i++) {
        r = raw(SYS_fcntl, a->fds[i].src, F_DUPFD_CLOEXEC, sync_high + 1, 0, 0);
        if (r < 0) child_fail(a, "dup fd", r);
        high[i] = (int)r;
    }
    for (int i = 0; i < a->nfds; i++) {
        if ((r = raw(SYS_dup3, high[i], a->fds[i].dst, 0, 0, 0)) < 0) child_fail(a, "dup3", r);
    }
    // Close everything above the destinations but the exec fd, the watch pipe and the sync pipe,
    // including the daemon's descriptors numbered between those three (another spawn's sync
    // pipe, say: holding its write end would make a wait below endless once the daemon is gone).
    if ((r = raw(SYS_close_range, maxdst + 1, exec_high - 1, 0, 0, 0)) != 0) child_fail(a, "close_range", r);
    if (watch_high > exec_high + 1 && (r = raw(SYS_close_range, exec_high + 1, watch_high - 1, 0, 0, 0)) != 0) child_fail(a, "close_range", r);
    if (sync_high > watch_high + 1 && (r = raw(SYS_close_range, watch_high + 1, sync_high - 1, 0, 0, 0)) != 0) child_fail(a, "close_range", r);
    if ((r = raw(SYS_close_range, sync_high + 1, ~0U, 0, 0, 0)) != 0) child_fail(a, "close_range", r);

    char go = 0;
    do { r = raw(SYS_read, sync_high, (long)&go, 1, 0, 0); } while (r == -EINTR);
    if (r != 1) child_exit(121);   // EOF: the daemon is gone
    (void)raw(SYS_close, sync_high, 0, 0, 0, 0);

    // The parent has written our uid/gid maps: become root of the new user namespace.
    if ((r = raw(SYS_setresgid, 0, 0, 0, 0, 0)) != 0) child_fail(a, "setresgid", r);
    if ((r = raw(SYS_setresuid, 0, 0, 0, 0, 0)) != 0) child_fail(a, "setresuid", r);
    if ((r = raw(SYS_setgroups, 0, 0, 0, 0, 0)) != 0) child_fail(a, "setgroups", r);
    // A new user namespace starts with default securebits; make sure of it,
    // since the parent's thread may have borrowed NO_SETUID_FIXUP (see below).
    if ((r = raw(SYS_prctl, PR_SET_SECUREBITS, 0, 0, 0, 0)) != 0) child_fail(a, "securebits", r);

    // Our signal handlers are a private copy of the daemon's: reset them, so
    // a signal let in below cannot run daemon code on this borrowed memory.
    for (int sig = 1; sig < 65; sig++) {
        struct { void *handler; unsigned long flags; void *restorer; uint64_t mask; } act = { SIG_DFL, 0, 0, 0 };
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        (void)raw(SYS_rt_sigaction, sig, (long)&act, 0, 8, 0);
    }
    uint64_t empty = 0;
    (void)raw(SYS_rt_sigprocmask, SIG_SETMASK, (long)&empty, 0, 8, 0);

    r = raw(SYS_execveat, exec_high, (long)"", (long)a->argv, (long)a->envp, AT_EMPTY_PATH);
    child_fail(a, "execveat agent", r);
}

struct clone_job { struct sp_spawn_args *a; char *mem; pid_t pid; int pidfd; int err; };

// The clone itself, on whichever thread: signals blocked across it (the child
// starts with them blocked), and the owner uid borrowed (see below).
static void clone_section(void *p) {
    struct clone_job *j = p;
    struct sp_spawn_args *a = j->a;
    // Every signal blocked across clone: the child starts with them blocked.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int flags = (int)a->clone_flags | CLONE_VM | CLONE_PIDFD | SIGCHLD;
    // A new user namespace is owned by the effective uid of the thread that
    // creates it, and the kernel charges per-user limits of everything inside
    // (inotify instances and watches, message queue bytes, ...) to that owner.
    // Owned by the daemon's root, every sandbox would share root's budget with
    // the host and each other, so this thread borrows the sandbox's owner uid
    // for the clone: its own credentials only (the raw syscall, not glibc's
    // process-wide setresuid), keeping its capabilities (NO_SETUID_FIXUP), and
    // restored before anything else runs on it.
    int borrowed = a->owner_uid != 0 && (a->clone_flags & CLONE_NEWUSER);
    long oldbits = 0;
    if (borrowed) {
        oldbits = syscall(SYS_prctl, PR_GET_SECUREBITS, 0, 0, 0, 0);
        if (oldbits < 0 || syscall(SYS_prctl, PR_SET_SECUREBITS, oldbits | SECBIT_NO_SETUID_FIXUP, 0, 0, 0) != 0) {
            borrowed = 0;
        } else if (syscall(SYS_setresuid, -1, a->owner_uid, -1) != 0) {
            if (syscall(SYS_prctl, PR_SET_SECUREBITS, oldbits, 0, 0, 0) != 0) abort();
            borrowed = 0;
        }
    }
    j->pid = clone(child_run, j->mem + SP_CHILD_STACK, flags, a, &j->pidfd);
    j->err = errno;
    if (borrowed) {
        // A daemon thread left with another uid would be worse than no daemon.
        if (syscall(SYS_setresuid, -1, 0, -1) != 0) abort();
        if (syscall(SYS_prctl, PR_SET_SECUREBITS, oldbits, 0, 0, 0) != 0) abort();
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

struct sp_spawn_handle *sp_spawn_sandbox(struct sp_spawn_args *a, int *pidfd_out, pid_t *pid_out) {
    // The child's stack, with a guard page below it.
    char *mem = mmap(NULL, SP_CHILD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (mem == MAP_FAILED) return NULL;
    if (mprotect(mem, 4096, PROT_NONE) != 0) { int e = errno; munmap(mem, SP_CHILD_STACK); errno = e; return NULL; }
    int watch[2];
    if (pipe2(watch, O_CLOEXEC) != 0) { int e = errno; munmap(mem, SP_CHILD_STACK); errno = e; return NULL; }
    a->watch_fd = watch[1];

    struct clone_job j = { a, mem, -1, -1, 0 };
    // On the thread that lives in the anchor mount namespace (sp_anchor.c),
    // so the sandbox's starts from nothing of the host's; inline without one.
    if (!sp_anchor_run(clone_section, &j)) clone_section(&j);
    pid_t pid = j.pid;
    int pidfd = j.pidfd, e = j.err;
    close(watch[1]);   // the child has its own copy (and may still read a->watch_fd)
    if (pid < 0) {
        close(watch[0]);
        munmap(mem, SP_CHILD_STACK);
        errno = e;
        return NULL;
    }
    struct sp_spawn_handle *h = malloc(sizeof *h);   // the parent may allocate; the child may not
    if (!h) {
        sp_pidfd_send_signal(pidfd, SIGKILL);
        waitpid(pid, NULL, __WALL);
        close(watch[0]);
        close(pidfd);
        munmap(mem, SP_CHILD_STACK);
        errno = ENOMEM;
        return NULL;
    }
    h->mem = mem;
    h->watch_fd = watch[0];
    h->pid = pid;
    h->pidfd = pidfd;
    *pidfd_out = pidfd;
    *pid_out = pid;
    return h;
}

int sp_spawn_release(struct sp_spawn_handle *h, int timeout_ms) {
    // EOF on the watch pipe: the child has exec'd (close-on-exec) or died.
    int rc = 0;
    struct pollfd p = { .fd = h->watch_fd, .events = POLLIN, .revents = 0 };
    for (;;) {
        int n = poll(&p, 1, timeout_ms);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) {
            // Stuck before exec: it must not outlive its borrowed memory.
            sp_pidfd_send_signal(h->pidfd, SIGKILL);
            struct pollfd d = { .fd = h->pidfd, .events = POLLIN, .revents = 0 };
            while (poll(&d, 1, -1) < 0 && errno == EINTR) {}
            rc = -1;
            errno = ETIMEDOUT;
        }
        break;
    }
    close(h->watch_fd);
    int e = errno;
    munmap(h->mem, SP_CHILD_STACK);
    free(h);
    errno = e;
    return rc;
}
