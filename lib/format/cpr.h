/*
 * Local live update, the destination's half of the format
 * (docs/format.md, "Local live update"): the CPR table that says which
 * memfd holds which RAM block, and adopting those memfds as the guest's
 * RAM. The table travels in the hello of cpr-transfer, next to the fds
 * themselves, and as the CPR record of a cpr-exec state file, where the
 * fds are inherited and the table gives their numbers.
 */
#ifndef GW_LIB_FORMAT_CPR_H
#define GW_LIB_FORMAT_CPR_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/internal.h"

struct gw_cpr_entry {
	uint64_t fd_offset;
	uint32_t fd;  /* index in the hello's fds, or (cpr-exec) the fd number */
	uint64_t ino; /* the memfd's inode: an fd that is another file is refused */
};

struct gw_cpr_table {
	uint64_t pause_ns; /* cpr-exec: CLOCK_MONOTONIC of the source's pause; else 0 */
	uint32_t n;        /* = the CONFIG's RAM blocks, in its order */
	struct gw_cpr_entry *e;
};

/* m's blocks: fd indexes 0..n-1 (fd_numbers false) or m's own fd numbers;
 * -EBADF with a message for a block without a memfd. */
int gw_cpr_table_put(const struct gw_migration *m, uint64_t pause_ns, bool fd_numbers,
		     struct gw_wbuf *out, struct gw_error *err);
/* Strict: one entry per block of cfg, aligned offsets, nothing left over. */
int gw_cpr_table_parse(const void *p, size_t len, const struct gw_config *cfg,
		       struct gw_cpr_table *t, struct gw_error *err);
void gw_cpr_table_release(struct gw_cpr_table *t);

/*
 * Make the source's blocks (cfg's RAM, t's fds) m's RAM: check every fd
 * is a memfd holding its block, hand them to the VMM's adopt op, and
 * register the adopted blocks in place of m's. fds (n of them) are the
 * hello's, indexed by the table; NULL for cpr-exec, whose table holds fd
 * numbers. The machine (vCPUs, sections) must already have matched.
 * On success the fds are the VMM's and *bytes the RAM adopted; on
 * failure nothing of m changed and the fds are still the caller's.
 */
int gw_cpr_adopt(struct gw_migration *m, const struct gw_config *cfg, const struct gw_cpr_table *t,
		 const int *fds, unsigned n, uint64_t *bytes, struct gw_error *err);

#endif

/*
 * The hello of cpr-transfer, the source's first message on the unix
 * socket, with the memfds attached (docs/format.md, "Local live update"):
 * a head of GW_CPR_HELLO_HEAD bytes (magic, version, fd count, the two
 * payload lengths), the CONFIG payload, the CPR table, and a CRC32C of
 * all that. The destination answers ADOPTED or FAILED on the return path.
 */
#define GW_CPR_HELLO_MAGIC "\x89GWCPRH\n"
#define GW_CPR_HELLO_MAGIC_LEN 8
#define GW_CPR_HELLO_VERSION 1u
#define GW_CPR_HELLO_HEAD 24u
