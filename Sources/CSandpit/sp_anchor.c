// The mount namespace sandboxes are cloned from, and the thread that clones them.
//
// clone(CLONE_NEWNS) copies the mount namespace of the calling thread. Copied
// from the daemon's (the host's), a sandbox's namespace began with a copy of
// every host mount; the agent detaches them with the old root, but a user
// namespace's copies are locked together and the kernel keeps the detached
// tree alive as long as the sandbox lives: no host filesystem mounted when
// the sandbox started could really go away (an unmounted disk stayed in use,
// a daemon's own store lingered). The anchor is a namespace that holds
// nothing of the host's: a tiny tmpfs root with an empty /tmp (where the
// agent attaches the sandbox's root) and a procfs (the kernel lets a user
// namespace mount a procfs only where one is fully visible). A dedicated
// thread joins it once (a thread may enter another mount namespace after
// unsharing its fs state) and makes every clone.
#define _GNU_SOURCE
#include "sp_anchor.h"
#include "sp_spawn.h"
#include "sp_helper.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

// In the helper, after fork: async-signal-safe calls only.
static int build_anchor(const void *arg) {
    const char *scratch = arg;
    char tmp[512], proc[512];
    size_t n = strlen(scratch);
    if (n + 8 > sizeof tmp) return ENAMETOOLONG;
    memcpy(tmp, scratch, n); memcpy(tmp + n, "/tmp", 5);
    memcpy(proc, scratch, n); memcpy(proc + n, "/proc", 6);
    if (unshare(CLONE_NEWNS) != 0) return errno;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return errno;
    if (mount("sandpit-anchor", scratch, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16k,nr_inodes=16,mode=755") != 0) return errno;
    if (mkdir(tmp, 0755) != 0) return errno;
    if (mkdir(proc, 0555) != 0) return errno;
    // Rootless, the daemon's user namespace does not own the host's pid
    // namespace, so it may not mount a procfs for it: a recursive bind of
    // the host's /proc is as visible (and what the rule asks for).
    if (mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0
        && (errno != EPERM || mount("/proc", proc, NULL, MS_BIND | MS_REC, NULL) != 0)) return errno;
    if (chdir(scratch) != 0) return errno;
    if (syscall(SYS_pivot_root, ".", ".") != 0) return errno;
    if (umount2(".", MNT_DETACH) != 0) return errno;
    if (chdir("/") != 0) return errno;
    return 0;
}

static int open_mntns(pid_t pid, void *ctx) {
    (void)ctx;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)pid);
    return open(path, O_RDONLY | O_CLOEXEC);
}

int sp_anchor_mntns(const char *scratch) {
    return sp_with_helper(build_anchor, scratch, open_mntns, NULL);
}

// One clone at a time, on the thread that lives in the anchor.
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int running = 0;
static sp_clone_job job = NULL;   // set by a caller, cleared by the thread when done
static void *job_arg = NULL;

struct start { int ns; int err; int done; };

static void *anchor_thread(void *p) {
    struct start *s = p;
    int err = 0;
    if (unshare(CLONE_FS) != 0) err = errno;
    else if (setns(s->ns, CLONE_NEWNS) != 0) err = errno;
    else if (chdir("/") != 0) err = errno;
    pthread_mutex_lock(&lock);
    s->err = err;
    s->done = 1;
    pthread_cond_broadcast(&cond);
    if (err) { pthread_mutex_unlock(&lock); return NULL; }
    for (;;) {
        while (job == NULL) pthread_cond_wait(&cond, &lock);
        job(job_arg);
        job = NULL;
        pthread_cond_broadcast(&cond);
    }
}

int sp_anchor_start(int ns) {
    pthread_mutex_lock(&lock);
    if (running) { pthread_mutex_unlock(&lock); return 0; }
    pthread_mutex_unlock(&lock);
    struct start s = { ns, 0, 0 };
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, anchor_thread, &s);
    pthread_attr_destroy(&attr);
    if (rc != 0) { errno = rc; return -1; }
    pthread_mutex_lock(&lock);
    while (!s.done) pthread_cond_wait(&cond, &lock);
    if (!s.err) running = 1;
    pthread_mutex_unlock(&lock);
    if (s.err) { errno = s.err; return -1; }
    return 0;
}

int sp_anchor_run(sp_clone_job fn, void *arg) {
    pthread_mutex_lock(&lock);
    if (!running) { pthread_mutex_unlock(&lock); return 0; }
    while (job != NULL) pthread_cond_wait(&cond, &lock);   // another caller's clone
    job = fn;
    job_arg = arg;
    pthread_cond_broadcast(&cond);
    while (job == fn && job_arg == arg) pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    return 1;
}
