// The commands' cgroups: each command's process tree lives in a child group
// of the sandbox's delegated one, so a kill reaches processes that left its
// process group or session, and so the kernel's count of out-of-memory kills
// in that group says whether the OOM killer took one of *its* processes.
//
// The groups are in the memory controller for that count: on v1 the daemon
// delegates the sandbox's memory hierarchy (v1 counts an OOM kill only in
// the victim's own group); on v2 the agent moves itself into a leaf,
// "agent", and enables memory for the groups beside it (a v2 group that
// passes a controller down may hold no process).
//
// A memory group outlives its rmdir while pages are charged to it (the
// files a command wrote stay cached), so an agent that made and removed one
// per command would leave thousands of dying groups behind in a long
// session. An ended command's group, once empty, is kept instead and the
// next command (or spare) takes it as it is: a group's name is only the
// agent's to know. Its OOM count is noted when it is kept, and a command's
// count is what it added.
#define _GNU_SOURCE
#include "sp_agent.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#define POOL 8

static int dir = -1;
static int v2;
static struct { char name[24]; int32_t ooms; } pool[POOL];
static int pooled;
static unsigned serial;

int sp_groups_init(int cgroup_fd) {
    dir = cgroup_fd;
    if (dir < 0) return 0;
    struct statfs fs;
    v2 = fstatfs(dir, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC;
    if (v2 && (mkdirat(dir, "agent", 0755) == 0 || errno == EEXIST)) {
        int procs = openat(dir, "agent/cgroup.procs", O_WRONLY | O_CLOEXEC);
        int ok = procs >= 0 && write(procs, "0", 1) == 1;
        if (procs >= 0) close(procs);
        int ctl = ok ? openat(dir, "cgroup.subtree_control", O_WRONLY | O_CLOEXEC) : -1;
        if (ctl >= 0) { (void)!write(ctl, "+memory", 7); close(ctl); }
        // Without it the per-command count is unknown (-1) and the daemon says so.
    }
    return v2;
}

int32_t sp_group_oom_kills(const char *name) {
    if (dir < 0) return -1;
    char path[64], buf[512];
    snprintf(path, sizeof path, "%s/%s", name, v2 ? "memory.events" : "memory.oom_control");
    int fd = openat(dir, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    // v1: "oom_kill_disable 0\nunder_oom 0\noom_kill N"; v2: "...\noom_kill N\noom_group_kill 0".
    const char *p = strstr(buf, "\noom_kill ");
    return p ? (int32_t)strtol(p + 10, NULL, 10) : -1;
}

int sp_group_take(char *name, size_t len, int32_t *ooms) {
    if (dir < 0 || pooled == 0) return 0;
    pooled--;
    snprintf(name, len, "%s", pool[pooled].name);
    *ooms = pool[pooled].ooms;
    return 1;
}

int sp_group_make(char *name, size_t len, const char *wanted, int32_t *ooms) {
    *ooms = 0;
    if (dir < 0) return -1;
    if (wanted) snprintf(name, len, "%s", wanted);
    else snprintf(name, len, "ex_p%u", ++serial);
    if (mkdirat(dir, name, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

void sp_group_prepare(void) {
    if (dir < 0 || pooled > 0) return;
    char name[24];
    int32_t ooms;
    if (sp_group_make(name, sizeof name, NULL, &ooms) == 0) {
        snprintf(pool[0].name, sizeof pool[0].name, "%s", name);
        pool[0].ooms = 0;
        pooled = 1;
    }
}

static int empty(const char *name) {
    char path[48], c;
    snprintf(path, sizeof path, "%s/cgroup.procs", name);
    int fd = openat(dir, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, &c, 1);
    close(fd);
    return n == 0;
}

int sp_group_release(const char *name, int32_t ooms) {
    if (dir < 0 || !name[0]) return 0;
    if (pooled < POOL && empty(name)) {
        snprintf(pool[pooled].name, sizeof pool[pooled].name, "%s", name);
        pool[pooled].ooms = ooms;
        pooled++;
        return 0;
    }
    if (unlinkat(dir, name, AT_REMOVEDIR) == 0 || errno != EBUSY) return 0;
    return -1;
}
