// Entry point of the in-sandbox agent. argv carries only plain settings;
// descriptors arrive at fixed numbers (see sp_proto.h).
#define _GNU_SOURCE
#include "sp_agent.h"
#include "sp_proto.h"
#include "sp_seccomp.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fatal(const char *step) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "%s: %s", step, strerror(errno));
    sp_send_frame(SP_AGENT_FD_CTRL, SP_FRAME_FATAL, 0, 0, msg, (size_t)(n < 0 ? 0 : n), NULL, 0);
    return 1;
}

int sp_agent_main(int argc, char **argv) {
    struct sp_agent_config cfg = { .hostname = "sandpit", .tmp_size_bytes = 256ul << 20, .has_usr = 0, .cgroup_fd = -1, .nest_fd = -1 };
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--hostname") == 0) cfg.hostname = argv[i + 1];
        else if (strcmp(argv[i], "--tmp-size") == 0) cfg.tmp_size_bytes = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--usr") == 0) cfg.has_usr = strcmp(argv[i + 1], "1") == 0;
        else if (strcmp(argv[i], "--seccomp") == 0) cfg.seccomp = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--nofile") == 0) cfg.nofile = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--output-rate") == 0) cfg.output_rate = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--zygote") == 0) cfg.zygote = strcmp(argv[i + 1], "1") == 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "sandpit-agent: runs only as PID 1 of a sandbox started by the sandpit daemon\n");
        return 2;
    }
    // The name ps shows, whatever file the agent was executed from.
    prctl(PR_SET_NAME, "sandpit-agent", 0, 0, 0);
    fcntl(SP_AGENT_FD_CTRL, F_SETFD, FD_CLOEXEC);
    const char *step = "unshare cgroup namespace";
    if (unshare(CLONE_NEWCGROUP) != 0) return fatal(step);
    if (sp_agent_setup_mounts(&cfg, &step) != 0) return fatal(step);
    if (sp_agent_setup_network(&step) != 0) return fatal(step);
    if (sp_agent_harden(&step) != 0) return fatal(step);
    // Last: the filter also denies the mount calls the steps above needed.
    // A zygote has none: it clones nested sandboxes, and its interpreter
    // joins their namespaces. Only the template's own code runs in it.
    step = "seccomp filter";
    if (cfg.seccomp && !cfg.zygote && sp_seccomp_install((unsigned)cfg.seccomp & 0xff) != 0) return fatal(step);
    // Nothing from the host stays open but the control socket, the
    // delegated cgroup directory (close-on-exec: no command inherits it)
    // and, in a zygote, the socket nested sandboxes' descriptors come on.
    syscall(SYS_close_range, 0, SP_AGENT_FD_CTRL - 1, 0);
    syscall(SYS_close_range, SP_AGENT_FD_CTRL + 1, SP_AGENT_FD_CGROUP - 1, 0);
    syscall(SYS_close_range, cfg.zygote ? SP_AGENT_FD_NEST + 1 : SP_AGENT_FD_CGROUP + 1, ~0U, 0);
    cfg.cgroup_fd = fcntl(SP_AGENT_FD_CGROUP, F_SETFD, FD_CLOEXEC) == 0 ? SP_AGENT_FD_CGROUP : -1;
    cfg.nest_fd = cfg.zygote && fcntl(SP_AGENT_FD_NEST, F_SETFD, FD_CLOEXEC) == 0 ? SP_AGENT_FD_NEST : -1;
    struct sp_stats st;
    memset(&st, 0, sizeof st);
    FILE *f = fopen("/proc/self/statm", "re");
    long pages, rss = 0;
    if (f) { if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0; fclose(f); }
    st.rss_bytes = (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
    if (sp_send_frame(SP_AGENT_FD_CTRL, SP_FRAME_READY, 0, 0, &st, sizeof st, NULL, 0) != 0) return 1;
    sp_agent_loop(SP_AGENT_FD_CTRL, &cfg);
    return fatal("agent loop");
}
