#define _GNU_SOURCE
#include "sp_agent.h"
#include "sp_proto.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

int sp_send_frame(int fd, unsigned type, unsigned stream, unsigned id, const void *a, size_t alen, const void *b, size_t blen) {
    struct sp_frame_header h;
    memset(&h, 0, sizeof h);
    h.length = (uint32_t)(alen + blen);
    h.type = (uint8_t)type;
    h.stream = (uint8_t)stream;
    h.id = id;
    struct iovec iov[3] = { { &h, sizeof h }, { (void *)a, alen }, { (void *)b, blen } };
    int n = 3;
    struct iovec *v = iov;
    while (n > 0) {
        ssize_t w = writev(fd, v, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        while (n > 0 && (size_t)w >= v->iov_len) { w -= (ssize_t)v->iov_len; v++; n--; }
        if (n > 0) { v->iov_base = (char *)v->iov_base + w; v->iov_len -= (size_t)w; }
    }
    return 0;
}
