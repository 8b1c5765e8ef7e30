// The last steps of a command's process before execve(): a vfork child of the
// agent runs them at once, a spare process (sp_agent_spare.c) when a request
// reaches it. Only syscalls; a failure is reported on the error pipe as
// { step, errno } and the process exits 127.
#define _GNU_SOURCE
#include "sp_agent.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

const int sp_root_caps[] = { CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_SETUID, CAP_SETGID, CAP_KILL,
                             CAP_NET_BIND_SERVICE };
const int sp_root_caps_count = sizeof sp_root_caps / sizeof sp_root_caps[0];

// A uid-0 command keeps sp_root_caps through execve as ambient capabilities
// (SECBIT_NOROOT gives root nothing by itself). The agent holds them all
// (permitted, effective): inheritable is set to exactly these, then each is
// raised. Called after the uid change, which leaves a root's capabilities.
static int root_capabilities(void) {
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0) return -1;
    d[0].inheritable = d[1].inheritable = 0;
    for (int i = 0; i < sp_root_caps_count; i++) d[sp_root_caps[i] / 32].inheritable |= 1u << (sp_root_caps[i] % 32);
    if (syscall(SYS_capset, &h, d) != 0) return -1;
    for (int i = 0; i < sp_root_caps_count; i++) {
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, sp_root_caps[i], 0, 0) != 0) return -1;
    }
    return 0;
}

_Noreturn void sp_agent_become(const struct sp_launch *l) {
    struct sp_child_err ce = { 0, 0 };
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    gid_t gid = l->gid;
    if (l->setsid && setsid() < 0) { ce.step = SP_STEP_SETSID; goto fail; }
    if (l->procs_fd >= 0 && write(l->procs_fd, "0", 1) != 1) { ce.step = SP_STEP_CGROUP; goto fail; }
    // Above 2 first, so no dup2 below overwrites a descriptor still to be placed.
    int std[3] = { l->in, l->out, l->err };
    for (int i = 0; i < 3; i++) {
        if (std[i] > 2) continue;
        std[i] = fcntl(std[i], F_DUPFD_CLOEXEC, 3);
        if (std[i] < 0) { ce.step = SP_STEP_STDIO; goto fail; }
    }
    for (int i = 0; i < 3; i++) if (dup2(std[i], i) < 0) { ce.step = SP_STEP_STDIO; goto fail; }
    if (l->pty && ioctl(0, TIOCSCTTY, 0) != 0) { ce.step = SP_STEP_TERMINAL; goto fail; }
    if (l->nofile) {
        struct rlimit rl = { l->nofile, l->nofile };
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) { ce.step = SP_STEP_NOFILE; goto fail; }
    }
    struct rlimit nocore = { 0, 0 };
    setrlimit(RLIMIT_CORE, &nocore);
    if (setgroups(1, &gid) != 0) { ce.step = SP_STEP_CREDENTIALS; goto fail; }
    if (setresgid(l->gid, l->gid, l->gid) != 0) { ce.step = SP_STEP_CREDENTIALS; goto fail; }
    if (setresuid(l->uid, l->uid, l->uid) != 0) { ce.step = SP_STEP_CREDENTIALS; goto fail; }
    if (l->uid == 0 && l->root_caps && root_capabilities() != 0) { ce.step = SP_STEP_CAPABILITIES; goto fail; }
    if (chdir(l->cwd) != 0) { ce.step = SP_STEP_CWD; goto fail; }
    if (l->placeholder) {
        // Holds the exec's pipes (and its cgroup) until an interpreter
        // forked from the template's zygote takes them over; then RESTORE
        // kills it. Nothing else of the agent stays open here.
        syscall(SYS_close_range, 3, ~0U, 0);
        for (;;) pause();
    }
    execve(l->path, l->argv, l->envp);
    ce.step = SP_STEP_EXEC;
fail:
    ce.err = errno;
    (void)!write(l->ep, &ce, sizeof ce);
    _exit(127);
}
