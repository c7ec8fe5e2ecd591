/*
 * The multifd sink (ram_sink.h, docs/format.md "multifd"): RAM_PAGES
 * records spread over several connections to the destination, each
 * written by a thread of its own, while the main stream carries
 * everything else. A page always travels on the channel its address
 * gives (gw_multifd_channel_of()), so its copies reach the destination
 * in the order they were sent however the channels interleave; a flush
 * ends a round on every channel and then on the main stream
 * (MULTIFD_SYNC), which the destination waits on before it reads on.
 */
#ifndef GW_LIB_RAM_SINK_MULTIFD_H
#define GW_LIB_RAM_SINK_MULTIFD_H

#include <godwit/channel.h>
#include <godwit/error.h>

struct gw_cancel;
struct gw_migration;
struct gw_ram_sink;
struct gw_writer;

/*
 * nr (1..GW_MULTIFD_MAX_CHANNELS) connected channels, which become the
 * sink's (it closes them; *chans are cleared) whatever it returns; main
 * (borrowed) is the main stream's writer. Each channel's writer is bound
 * to cancel's eventfd, so a cancel ends every wait.
 */
int gw_multifd_sink_open(struct gw_migration *m, struct gw_writer *main, struct gw_channel *chans,
			 unsigned nr, struct gw_cancel *cancel, struct gw_ram_sink **out,
			 struct gw_error *err);

#endif
