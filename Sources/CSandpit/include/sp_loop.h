// Loop devices for per-sandbox disk images (ioctl is variadic: not callable from Swift).
#ifndef SP_LOOP_H
#define SP_LOOP_H
#include <stddef.h>

// Binds a free loop device to backing_fd with autoclear (the device detaches
// when its last user, e.g. the filesystem mounted on it, goes away).
// Returns the open device fd and writes its path to dev; -1 with errno.
int sp_loop_attach(int backing_fd, char *dev, size_t devlen);

// Copies a sparse file's data extents only (holes stay holes). 0 or -1.
int sp_copy_sparse(int in_fd, int out_fd);
#endif
