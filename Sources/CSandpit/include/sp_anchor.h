// The mount namespace sandboxes are cloned from (nothing of the host's in
// it), and the one daemon thread that lives there and makes the clones.
#ifndef SP_ANCHOR_H
#define SP_ANCHOR_H
// Makes the anchor namespace (scratch: an empty directory it is built on,
// in a private copy only). A descriptor on it, or -1 with errno.
int sp_anchor_mntns(const char *scratch);
// Starts the thread that joins the namespace `ns`. 0, or -1 with errno.
int sp_anchor_start(int ns);
typedef void (*sp_clone_job)(void *);
// Runs fn(arg) on that thread and waits: 1, or 0 when no thread was started
// (the caller then runs it itself).
int sp_anchor_run(sp_clone_job fn, void *arg);
#endif
