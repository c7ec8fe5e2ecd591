/*
 * virtio-blk requests over the polled virtqueue of virtio.c.
 */
#include "virtio_blk.h"

#define VIRTIO_BLK_F_RO (1ull << 5)
#define VIRTIO_BLK_F_FLUSH (1ull << 9)

#define CONFIG_CAPACITY 0 /* le64, in 512-byte sectors */

#define STATUS_UNWRITTEN 0xff

/* What the device sees of a request: the header (the first 16 bytes,
 * device-readable) and, apart, the status byte it writes. */
struct gw_blk_hdr {
	uint32_t type;
	uint32_t reserved;
	uint64_t sector;
	uint8_t status;
	uint8_t pad[15];
};

#define HDR_READ_BYTES 16

/* The smallest queue with 3 descriptors for each of depth requests. */
static unsigned queue_size(unsigned depth)
{
	unsigned size = 1;

	while (size < 3 * depth)
		size *= 2;
	return size;
}

static uint64_t hdr_offset(unsigned depth)
{
	return gw_virtq_bytes(queue_size(depth));
}

uint64_t gw_blk_mem_bytes(unsigned depth)
{
	return hdr_offset(depth) + depth * sizeof(struct gw_blk_hdr);
}

static void check_features(const struct gw_blk *blk, uint64_t offered)
{
	if (!(offered & VIRTIO_BLK_F_FLUSH))
		gw_fatal("virtio-blk@0x%lx: no VIRTIO_BLK_F_FLUSH (features 0x%lx): its writes "
			 "could never be known to be stable\n",
			 blk->dev.base, offered);
	if (offered & VIRTIO_BLK_F_RO)
		gw_fatal("virtio-blk@0x%lx: the disk is read-only (VIRTIO_BLK_F_RO)\n",
			 blk->dev.base);
}

void gw_blk_start(struct gw_blk *blk, uint64_t base, unsigned depth, void *mem)
{
	unsigned size;

	if (depth == 0 || depth > GW_BLK_MAX_DEPTH)
		gw_fatal("virtio-blk@0x%lx: depth %u, expected 1 to %u\n", base, depth,
			 GW_BLK_MAX_DEPTH);
	check_features(blk, gw_virtio_probe(&blk->dev, base, GW_VIRTIO_ID_BLOCK));
	gw_virtio_negotiate(&blk->dev, VIRTIO_BLK_F_FLUSH);
	size = gw_virtio_start(&blk->dev, queue_size(depth), mem);
	if (size < 3)
		gw_fatal("virtio-blk@0x%lx: a queue of %u entries cannot hold one request\n", base,
			 size);
	/* Laid out for the depth asked, which the device may cut below. */
	blk->hdr = (struct gw_blk_hdr *)((uint8_t *)mem + hdr_offset(depth));
	if (depth > size / 3)
		depth = size / 3;
	blk->depth = depth;
	blk->in_flight = 0;
	for (unsigned i = 0; i < depth; i++)
		blk->free[i] = (uint8_t)i;
	blk->capacity = gw_virtio_config64(&blk->dev, CONFIG_CAPACITY);
}

void gw_blk_submit(struct gw_blk *blk, enum gw_blk_type type, uint64_t sector, void *buf,
		   uint32_t len, uint64_t tag)
{
	unsigned i, n = 0;
	struct gw_blk_hdr *hdr;
	struct gw_virtq_buf bufs[3];

	if (blk->in_flight >= blk->depth)
		gw_fatal("virtio-blk@0x%lx: more than %u requests submitted at once\n",
			 blk->dev.base, blk->depth);
	i = blk->free[blk->depth - blk->in_flight - 1];
	hdr = &blk->hdr[i];
	hdr->type = type;
	hdr->reserved = 0;
	hdr->sector = sector;
	/* A device that completes without writing the status is caught. */
	hdr->status = STATUS_UNWRITTEN;
	blk->req[i] = (struct gw_blk_req){.tag = tag, .type = type};

	bufs[n++] = (struct gw_virtq_buf){hdr, HDR_READ_BYTES, false};
	if (len)
		bufs[n++] = (struct gw_virtq_buf){buf, len, type != GW_BLK_T_OUT};
	bufs[n++] = (struct gw_virtq_buf){&hdr->status, 1, true};
	/* Cannot fail: the queue holds 3 descriptors per request of depth. */
	if (!gw_virtq_add(&blk->dev, bufs, n, &blk->req[i]))
		gw_fatal("virtio-blk@0x%lx: no free descriptors\n", blk->dev.base);
	blk->in_flight++;
}

unsigned gw_blk_reap(struct gw_blk *blk, struct gw_blk_done *done, unsigned max)
{
	void *tokens[GW_BLK_MAX_DEPTH];
	unsigned n;

	gw_virtq_kick(&blk->dev);
	n = gw_virtq_reap(&blk->dev, tokens, max < GW_BLK_MAX_DEPTH ? max : GW_BLK_MAX_DEPTH);
	for (unsigned k = 0; k < n; k++) {
		const struct gw_blk_req *req = tokens[k];
		unsigned i = (unsigned)(req - blk->req);

		done[k] = (struct gw_blk_done){
			.tag = req->tag,
			.type = req->type,
			.status = blk->hdr[i].status,
		};
		blk->free[blk->depth - blk->in_flight] = (uint8_t)i;
		blk->in_flight--;
	}
	return n;
}

uint8_t gw_blk_run(struct gw_blk *blk, enum gw_blk_type type, uint64_t sector, void *buf,
		   uint32_t len)
{
	struct gw_blk_done done;

	if (blk->in_flight)
		gw_fatal("virtio-blk@0x%lx: a request waited for alone while %u are in flight\n",
			 blk->dev.base, blk->in_flight);
	gw_blk_submit(blk, type, sector, buf, len, 0);
	gw_blk_reap(blk, &done, 1);
	return done.status;
}

const char *gw_blk_status_name(uint8_t status)
{
	switch (status) {
	case GW_BLK_S_OK:
		return "OK";
	case GW_BLK_S_IOERR:
		return "IOERR";
	case GW_BLK_S_UNSUPP:
		return "UNSUPP";
	case STATUS_UNWRITTEN:
		return "not written";
	}
	return "unknown";
}
