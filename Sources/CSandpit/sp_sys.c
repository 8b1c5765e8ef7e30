#define _GNU_SOURCE
#include "sp_sys.h"
#include <fcntl.h>
#include <stddef.h>
#include <sys/socket.h>
#include <unistd.h>

int sp_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
int sp_socketpair_cloexec(int fds[2]) { return socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds); }
int sp_open_path(const char *path) { return open(path, O_PATH | O_CLOEXEC); }
int sp_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }
