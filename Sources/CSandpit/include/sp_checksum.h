// CRC-32C of sparse files (checkpoint images).
#ifndef SP_CHECKSUM_H
#define SP_CHECKSUM_H
#include <stddef.h>
#include <stdint.h>
// Continues a CRC-32C (Castagnoli) over n bytes; start from 0.
uint32_t sp_crc32c(uint32_t crc, const void *data, size_t n);
// The CRC-32C of fd's size, the offset and length of each of its data
// segments, and their bytes. 0, or -1 with errno.
int sp_sparse_crc32c(int fd, uint32_t *sum, uint64_t *data_bytes);
#endif
