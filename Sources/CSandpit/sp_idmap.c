// A user namespace that exists only for its id map: idmapped mounts (the
// host's /usr shown with the sandboxes' ids) take one as their mapping.
//
// A short-lived child unshares a user namespace and waits; the daemon writes
// its maps, keeps a descriptor on the namespace and lets the child exit. The
// child runs after fork in a multithreaded process, so it makes
// async-signal-safe calls only.
#define _GNU_SOURCE
#include "sp_idmap.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int write_map(pid_t pid, const char *file, const char *line) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, line, strlen(line));
    int e = errno;
    close(fd);
    if (n != (ssize_t)strlen(line)) { errno = n < 0 ? e : EIO; return -1; }
    return 0;
}

int sp_idmap_userns(unsigned host_base, unsigned count) {
    int ready[2], hold[2];
    if (pipe2(ready, O_CLOEXEC) != 0) return -1;
    if (pipe2(hold, O_CLOEXEC) != 0) { int e = errno; close(ready[0]); close(ready[1]); errno = e; return -1; }
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(ready[0]); close(ready[1]); close(hold[0]); close(hold[1]);
        errno = e;
        return -1;
    }
    if (pid == 0) {
        // Only the parent may hold the other ends: its exit (or close) is our EOF.
        close(ready[0]);
        close(hold[1]);
        char ok = unshare(CLONE_NEWUSER) == 0 ? 1 : 0;
        (void)write(ready[1], &ok, 1);
        char c;
        (void)read(hold[0], &c, 1);   // EOF once the parent is done with us
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    int ns = -1, err = 0;
    char ok = 0;
    if (read(ready[0], &ok, 1) != 1 || !ok) {
        err = EPERM;
    } else {
        char line[64];
        snprintf(line, sizeof line, "0 %u %u\n", host_base, count);
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
        if (write_map(pid, "uid_map", line) != 0 || write_map(pid, "gid_map", line) != 0) err = errno;
        else if ((ns = open(path, O_RDONLY | O_CLOEXEC)) < 0) err = errno;
    }
    close(ready[0]);
    close(hold[1]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    if (ns < 0) errno = err ? err : EIO;
    return ns;
}
