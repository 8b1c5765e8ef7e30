// A user namespace that exists only for its id map: idmapped mounts (the
// host's /usr shown with the sandboxes' ids) take one as their mapping.
// A helper (sp_helper.c) unshares it; the daemon writes its maps and keeps a
// descriptor on it.
#define _GNU_SOURCE
#include "sp_idmap.h"
#include "sp_helper.h"
#include "sp_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int write_map(pid_t pid, const char *file, const char *line) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    return sp_write_file(path, line);
}

static int unshare_user(const void *arg) {
    (void)arg;
    return unshare(CLONE_NEWUSER) == 0 ? 0 : errno;
}

struct map { unsigned base, count; };

static int map_and_open(pid_t pid, void *ctx) {
    const struct map *m = ctx;
    char line[64], path[64];
    snprintf(line, sizeof line, "0 %u %u\n", m->base, m->count);
    if (write_map(pid, "uid_map", line) != 0 || write_map(pid, "gid_map", line) != 0) return -1;
    snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
    return open(path, O_RDONLY | O_CLOEXEC);
}

int sp_idmap_userns(unsigned host_base, unsigned count) {
    struct map m = { host_base, count };
    return sp_with_helper(unshare_user, NULL, map_and_open, &m);
}
