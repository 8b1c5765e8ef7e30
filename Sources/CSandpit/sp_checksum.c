// CRC-32C of a sparse file's data and layout, for checkpoint integrity.
//
// Only the data segments are read (SEEK_DATA/SEEK_HOLE), so a 4 GiB image
// holding 20 MiB costs 20 MiB of reading. Each segment's offset and length
// go into the sum too, so a hole punched into the image (or data appearing
// where a hole was) changes it like a flipped byte does. x86-64 uses the
// SSE4.2 instruction when the CPU has it; other CPUs a table.
#define _GNU_SOURCE
#include "sp_checksum.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint32_t table[256];
static int table_ready = 0;

static void make_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
        table[i] = c;
    }
    table_ready = 1;
}

static uint32_t crc_table(uint32_t crc, const unsigned char *p, size_t n) {
    if (!table_ready) make_table();
    while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t sp_crc32c(uint32_t crc, const void *data, size_t n) {
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc_hw(crc, data, n);
#endif
    return ~crc_table(crc, data, n);
}

// Three independent CRCs over three equal stretches at once: the CRC
// instruction's latency is three times its issue rate, so one stream leaves
// two thirds of the unit idle. Chunks are summed separately and their CRCs
// folded into the total, so no CRC combining is needed.
#define SP_CHUNK (256u << 10)

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static void crc3_hw(const unsigned char *a, size_t n, uint32_t out[3]) {
    const unsigned char *b = a + n, *c = a + 2 * n;
    uint64_t x = 0xffffffffu, y = 0xffffffffu, z = 0xffffffffu;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t u, v, w;
        memcpy(&u, a + i, 8); memcpy(&v, b + i, 8); memcpy(&w, c + i, 8);
        x = __builtin_ia32_crc32di(x, u);
        y = __builtin_ia32_crc32di(y, v);
        z = __builtin_ia32_crc32di(z, w);
    }
    out[0] = ~(uint32_t)x; out[1] = ~(uint32_t)y; out[2] = ~(uint32_t)z;
}
#endif

// The CRCs of three consecutive n-byte stretches at p (n a multiple of 8).
static void crc3(const unsigned char *p, size_t n, uint32_t out[3]) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) { crc3_hw(p, n, out); return; }
#endif
    for (int k = 0; k < 3; k++) out[k] = sp_crc32c(0, p + (size_t)k * n, n);
}

// Folds the data [p, p+n) into crc, a chunk CRC at a time.
static uint32_t fold(uint32_t crc, const unsigned char *p, size_t n) {
    while (n >= 3 * SP_CHUNK) {
        uint32_t three[3];
        crc3(p, SP_CHUNK, three);
        crc = sp_crc32c(crc, three, sizeof three);
        p += 3 * SP_CHUNK;
        n -= 3 * SP_CHUNK;
    }
    if (n) {
        uint32_t last = sp_crc32c(0, p, n);
        crc = sp_crc32c(crc, &last, sizeof last);
    }
    return crc;
}

int sp_sparse_crc32c(int fd, uint32_t *sum, uint64_t *data_bytes) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    uint32_t crc = 0;
    uint64_t total = 0;
    uint64_t size = (uint64_t)st.st_size;
    crc = sp_crc32c(crc, &size, sizeof size);
    size_t cap = 3 * SP_CHUNK;
    unsigned char *buf = malloc(cap);
    if (!buf) { errno = ENOMEM; return -1; }
    off_t pos = 0;
    for (;;) {
        off_t data = lseek(fd, pos, SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break;   // no data after pos
            free(buf);
            return -1;
        }
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0) { free(buf); return -1; }
        uint64_t seg[2] = { (uint64_t)data, (uint64_t)(hole - data) };
        crc = sp_crc32c(crc, seg, sizeof seg);
        // Read in pieces of three chunks (a buffer that stays in cache): faster
        // here than mapping the image, whose page faults cost more than the copy.
        // Each piece is read whole before it is summed, so the chunking (and
        // the sum) does not depend on how reads happen to return.
        for (off_t at = data; at < hole;) {
            size_t want = (size_t)(hole - at) < cap ? (size_t)(hole - at) : cap, got = 0;
            while (got < want) {
                ssize_t n = pread(fd, buf + got, want - got, at + (off_t)got);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) { free(buf); if (n == 0) errno = EIO; return -1; }
                got += (size_t)n;
            }
            crc = fold(crc, buf, want);
            at += (off_t)want;
        }
        total += (uint64_t)(hole - data);
        pos = hole;
    }
    free(buf);
    *sum = crc;
    *data_bytes = total;
    return 0;
}
