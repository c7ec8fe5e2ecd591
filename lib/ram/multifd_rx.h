/*
 * The destination of multifd (docs/format.md, "multifd"): a thread per
 * channel reads RAM_PAGES records into guest memory, while the main
 * stream's loader waits at each MULTIFD_SYNC until every channel has
 * passed the same round, and at EOF until every channel has ended there.
 * Channels are handed over as the VMM accepts them, in any order and
 * before or after the main stream's MULTIFD record; each proves it
 * belongs to this migration (its id) and takes one index.
 */
#ifndef GW_LIB_RAM_MULTIFD_RX_H
#define GW_LIB_RAM_MULTIFD_RX_H

#include <stdint.h>

#include <godwit/channel.h>
#include <godwit/error.h>

struct gw_cancel;
struct gw_migration;
struct gw_multifd_hello;
struct gw_multifd_rx;

/* Channels' bytes are added to *received; main_fd is the main stream,
 * watched for a hang-up while the loader waits for the channels. */
int gw_multifd_rx_new(struct gw_migration *m, struct gw_cancel *cancel, int main_fd,
		      uint64_t *received, struct gw_multifd_rx **out, struct gw_error *err);
/* A further connection: the receiver's (and closed by it) from now on. */
int gw_multifd_rx_add(struct gw_multifd_rx *rx, struct gw_channel *ch, struct gw_error *err);
/* The main stream's MULTIFD record; ram_map maps its CONFIG's nr_ram
 * block ids to m's blocks (copied: channels may outlive the loader). */
int gw_multifd_rx_setup(struct gw_multifd_rx *rx, const struct gw_multifd_hello *h,
			const uint32_t *ram_map, uint32_t nr_ram, struct gw_error *err);
/* The main stream's MULTIFD_SYNC: wait until every channel passed round. */
int gw_multifd_rx_sync(struct gw_multifd_rx *rx, uint64_t round, struct gw_error *err);
/* The main stream's EOF after round `round`: wait until every channel
 * ended right after it, with no page torn. */
int gw_multifd_rx_finish(struct gw_multifd_rx *rx, uint64_t round, struct gw_error *err);
/* A channel's failure, if one failed (into err): what explains a main
 * stream that ended early. */
int gw_multifd_rx_failure(struct gw_multifd_rx *rx, struct gw_error *err);
/* Stop every thread (shutting the channels down) and free. */
void gw_multifd_rx_free(struct gw_multifd_rx *rx);

#endif
