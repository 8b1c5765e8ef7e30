// Rootless mode's way in. An unprivileged user cannot make loop devices,
// write a uid range into a sandbox's uid_map or mount overlays on the host,
// but it can own a user namespace mapped onto its /etc/subuid range (through
// the setuid newuidmap/newgidmap) and be root there. So `sandpit`, started by
// a user, forks a child that unshares a user and a mount namespace, has the
// parent map it, and execs itself again as that namespace's root; the
// daemon then makes sandboxes nested in it, over the ids it was given.
//
// The child runs between fork and exec in a multithreaded process: only
// async-signal-safe calls.
#define _GNU_SOURCE
#include "sp_rootless.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

pid_t sp_rootless_spawn(const char *exe, char *const argv[], char *const envp[], int *go_fd) {
    int ready[2], go[2];
    if (pipe2(ready, O_CLOEXEC) != 0) return -1;
    if (pipe2(go, O_CLOEXEC) != 0) { int e = errno; close(ready[0]); close(ready[1]); errno = e; return -1; }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(ready[0]); close(ready[1]); close(go[0]); close(go[1]);
        errno = e;
        return -1;
    }
    if (pid == 0) {
        close(ready[0]);
        close(go[1]);
        int err = unshare(CLONE_NEWUSER | CLONE_NEWNS) == 0 ? 0 : errno;
        while (write(ready[1], &err, sizeof err) < 0 && errno == EINTR) {}
        if (err != 0) _exit(1);
        char c;
        ssize_t n;
        while ((n = read(go[0], &c, 1)) < 0 && errno == EINTR) {}
        if (n != 1) _exit(1);
        // newgidmap leaves setgroups allowed: drop the supplementary groups
        // (unmapped in here) along with becoming root.
        if (setgroups(0, NULL) != 0 || setresgid(0, 0, 0) != 0 || setresuid(0, 0, 0) != 0) _exit(1);
        // The outer process only waits for us; if it dies, so do we. Set
        // after the id change, which clears it (exec keeps it).
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);
        execve(exe, argv, envp);
        _exit(127);
    }
    close(ready[1]);
    close(go[0]);
    int err = 0;
    ssize_t n;
    while ((n = read(ready[0], &err, sizeof err)) < 0 && errno == EINTR) {}
    close(ready[0]);
    if (n != (ssize_t)sizeof err || err != 0) {
        close(go[1]);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        errno = n == (ssize_t)sizeof err ? err : ECHILD;
        return -1;
    }
    *go_fd = go[1];
    return pid;
}

static volatile pid_t forward_to = -1;

static void forward(int sig) {
    if (forward_to > 0) kill(forward_to, sig);
}

int sp_rootless_wait(pid_t pid) {
    forward_to = pid;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    int sigs[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        sigaction(sigs[i], &sa, NULL);
        // A signal the runtime blocked on this thread must reach the handler.
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sigs[i]);
        pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) return 1;
    }
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return 1;
}
