// A short-lived helper process whose namespaces the parent keeps.
#ifndef SP_HELPER_H
#define SP_HELPER_H
#include <sys/types.h>
// Forks a helper that runs setup(arg) (async-signal-safe; 0 or an errno),
// then waits. When setup succeeded, calls use(pid, ctx) in the parent while
// the helper waits, then lets it exit and reaps it. Returns what use
// returned (>= 0), or -1 with errno (setup's, or use's).
int sp_with_helper(int (*setup)(const void *arg), const void *arg, int (*use)(pid_t pid, void *ctx), void *ctx);
#endif
