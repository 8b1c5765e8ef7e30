// A short-lived helper process: forked, it sets itself up (a namespace of
// its own), says how that went, and waits; the parent uses it (writes its
// id maps, opens its namespace) and lets it go. Used for namespaces that
// outlive their only process through a descriptor (sp_idmap.c, sp_anchor.c).
#define _GNU_SOURCE
#include "sp_helper.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

int sp_with_helper(int (*setup)(const void *arg), const void *arg, int (*use)(pid_t pid, void *ctx), void *ctx) {
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
        // After fork in a multithreaded process: async-signal-safe calls only.
        // Only the parent holds the other ends: its exit (or close) is our EOF.
        close(ready[0]);
        close(hold[1]);
        int err = setup(arg);
        unsigned char code = (unsigned char)(err > 255 ? 255 : err);
        (void)write(ready[1], &code, 1);
        char c;
        (void)read(hold[0], &c, 1);
        _exit(0);
    }
    close(ready[1]);
    close(hold[0]);
    int rc = -1, err = 0;
    unsigned char code = 255;
    if (read(ready[0], &code, 1) != 1) err = EIO;
    else if (code != 0) err = code;
    else if ((rc = use(pid, ctx)) < 0) err = errno;
    close(ready[0]);
    close(hold[1]);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    if (rc < 0) errno = err ? err : EIO;
    return rc;
}
