/*
 * virtio-blk over virtio-mmio (virtio_blk.h).
 */
#include "vmm/dev/virtio_blk.h"
#include "vmm/dev/blk_req.h"
#include "vmm/dev/blk_uring.h"
#include "vmm/dev/image_io.h"
#include "vmm/kvm/guest_ram.h"
#include "vmm/machine.h"
#include "vmm/migration/migratable.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define VIRTIO_ID_BLOCK 2
#define VIRTIO_BLK_F_SEG_MAX (1ull << 2)
#define VIRTIO_BLK_F_FLUSH (1ull << 9)

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define SECTOR 512ull
#define QUEUE_MAX 128
#define HEADER_BYTES 16
/* Data segments a request may have: the chain less header and status. */
#define SEG_MAX (VQ_MAX_CHAIN - 2)
/* O_DIRECT wants buffers, offsets and lengths aligned to the logical
 * block: 512 bytes on every device this runs on; a guest buffer that is
 * not goes through a bounce buffer. */
#define DIRECT_ALIGN 512

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ---- a request, in an I/O engine ---------------------------------------- */

static bool aligned(const struct blk_req *r)
{
	for (int i = 0; i < r->nr_iov; i++)
		if ((uintptr_t)r->iov[i].iov_base % DIRECT_ALIGN ||
		    r->iov[i].iov_len % DIRECT_ALIGN)
			return false;
	return true;
}

/* The serial, into the writable data buffers (20 bytes at most). */
static uint32_t get_id(struct virtio_blk *b, struct blk_req *r)
{
	uint32_t done = 0;
	for (unsigned i = 0; i < r->nr_data && done < sizeof(b->serial); i++) {
		uint32_t n = r->data[i].len;
		if (n > sizeof(b->serial) - done)
			n = (uint32_t)sizeof(b->serial) - done;
		if (guest_ram_write(b->t.ram, r->data[i].gpa, b->serial + done, n))
			break;
		done += n;
	}
	return done;
}

static int sync_image(struct virtio_blk *b)
{
	return fdatasync(b->fd) < 0 ? -errno : 0;
}

static enum blk_op answer(struct blk_req *r, uint8_t status, uint32_t written)
{
	r->status = status;
	r->written = written;
	return BLK_OP_ANSWERED;
}

static void log_failure(struct virtio_blk *b, const struct blk_req *r, int ret)
{
	if (ratelog_allow(&b->log, 10, "failed requests"))
		fprintf(stderr, "godwit-vmm: %s: request type %u at sector %llu: %s\n", b->t.name,
			r->type, (unsigned long long)r->sector, strerror(-ret));
}

/* Guest buffers straight to or from the image, or through one aligned
 * bounce buffer when O_DIRECT cannot take them as they are. */
static enum blk_op start(struct virtio_blk *b, struct blk_req *r)
{
	r->bounce = NULL;
	r->nr_iov = 0;
	if (r->internal || r->type == VIRTIO_BLK_T_FLUSH)
		return BLK_OP_SYNC;
	if (r->type == VIRTIO_BLK_T_GET_ID)
		return answer(r, VIRTIO_BLK_S_OK, get_id(b, r));
	if (r->type != VIRTIO_BLK_T_IN && r->type != VIRTIO_BLK_T_OUT)
		return answer(r, VIRTIO_BLK_S_UNSUPP, 0);
	bool write = r->type == VIRTIO_BLK_T_OUT;
	if (r->data_bytes % SECTOR || r->sector > b->capacity ||
	    r->data_bytes / SECTOR > b->capacity - r->sector)
		return answer(r, VIRTIO_BLK_S_IOERR, 0);
	if (!r->data_bytes)
		return answer(r, VIRTIO_BLK_S_OK, 0); /* nothing to move */
	for (unsigned i = 0; i < r->nr_data; i++) {
		r->iov[i].iov_base = guest_ram_dma(b->t.ram, r->data[i].gpa, r->data[i].len);
		r->iov[i].iov_len = r->data[i].len;
		if (!r->iov[i].iov_base) {
			log_failure(b, r, -EFAULT);
			return answer(r, VIRTIO_BLK_S_IOERR, 0);
		}
	}
	r->nr_iov = (int)r->nr_data;
	r->off = (off_t)(r->sector * SECTOR);
	if (b->opt.direct && !aligned(r)) {
		if (posix_memalign(&r->bounce, 4096, r->data_bytes)) {
			r->bounce = NULL;
			log_failure(b, r, -ENOMEM);
			return answer(r, VIRTIO_BLK_S_IOERR, 0);
		}
		uint64_t pos = 0;
		for (int i = 0; write && i < r->nr_iov; pos += r->iov[i].iov_len, i++)
			memcpy((char *)r->bounce + pos, r->iov[i].iov_base, r->iov[i].iov_len);
		r->iov[0] = (struct iovec){r->bounce, r->data_bytes};
		r->nr_iov = 1;
	}
	return write ? BLK_OP_WRITE : BLK_OP_READ;
}

enum blk_op blk_req_start(struct virtio_blk *b, struct blk_req *r)
{
	return r->op = start(b, r);
}

static void complete(struct virtio_blk *b, struct blk_req *r, uint8_t status, uint32_t written)
{
	if (!r->internal && guest_ram_write(b->t.ram, r->status_gpa, &status, 1) == 0)
		written++;
	virtio_mmio_lock(&b->t);
	if (r->internal)
		b->flush_queued = false;
	else
		virtio_mmio_push(&b->t, 0, r->head, written);
	r->next = b->free_reqs;
	b->free_reqs = r;
	if (--b->in_flight == 0)
		pthread_cond_broadcast(&b->idle);
	virtio_mmio_unlock(&b->t);
}

void blk_req_end(struct virtio_blk *b, struct blk_req *r, enum blk_op op, int ret)
{
	if (op == BLK_OP_ANSWERED) {
		complete(b, r, r->status, r->written);
		return;
	}
	uint32_t written = 0;
	if (op == BLK_OP_READ) {
		/* r->iov was consumed: the guest's buffers again, from data[]. */
		uint64_t pos = 0;
		for (unsigned i = 0; i < r->nr_data; pos += r->data[i].len, i++) {
			void *p = guest_ram_dma(b->t.ram, r->data[i].gpa, r->data[i].len);
			if (r->bounce && !ret && p)
				memcpy(p, (char *)r->bounce + pos, r->data[i].len);
			/* What a read put in guest memory is dirty, however it ended. */
			guest_ram_dma_done(b->t.ram, r->data[i].gpa, r->data[i].len);
		}
		if (!ret)
			written = (uint32_t)r->data_bytes;
	} else if (op == BLK_OP_WRITE) {
		/* Marked once written, for a copy that runs (disk_copy.h). */
		disk_copy_mark(&b->copy, r->sector * SECTOR, r->data_bytes);
	}
	free(r->bounce);
	r->bounce = NULL;
	if (ret)
		log_failure(b, r, ret);
	complete(b, r, ret ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK, written);
}

struct blk_req *blk_req_take(struct virtio_blk *b, bool wait, bool *stopping)
{
	virtio_mmio_lock(&b->t);
	while (wait && !b->queue && !b->stopping)
		pthread_cond_wait(&b->work, &b->t.lock);
	struct blk_req *r = b->queue;
	if (r) {
		b->queue = r->next;
		if (!b->queue)
			b->queue_tail = NULL;
	}
	*stopping = b->stopping;
	virtio_mmio_unlock(&b->t);
	return r;
}

/* aio=threads: each worker runs one request at a time, start to end. */
static void *worker(void *opaque)
{
	struct virtio_blk *b = opaque;
	struct blk_req *r;
	bool stopping;
	while ((r = blk_req_take(b, true, &stopping))) {
		enum blk_op op = blk_req_start(b, r);
		int ret = 0;
		if (op == BLK_OP_SYNC)
			ret = sync_image(b);
		else if (op != BLK_OP_ANSWERED)
			ret = image_io(b->fd, op == BLK_OP_WRITE, r->iov, r->nr_iov, r->off);
		blk_req_end(b, r, op, ret);
	}
	return NULL;
}

/* ---- taking requests, on the notifying vCPU (t.lock held) -------------- */

static void enqueue(struct virtio_blk *b, struct blk_req *r)
{
	r->next = NULL;
	if (b->queue_tail)
		b->queue_tail->next = r;
	else
		b->queue = r;
	b->queue_tail = r;
	b->in_flight++;
	if (b->uring)
		blk_uring_kick(b->uring);
	else
		pthread_cond_signal(&b->work);
}

/* The header from the readable buffers, however the driver split it
 * (virtio 1.x lets it): *last the buffer it ends in, *rest what is left
 * of that one. false if they hold less than a header. */
static bool read_header(const struct guest_ram *ram, const struct vq_chain *c,
			uint8_t hdr[HEADER_BYTES], unsigned *last, uint32_t *rest)
{
	uint32_t got = 0;
	for (unsigned i = 0; i < c->nr_in; i++) {
		uint32_t n = c->in[i].len < HEADER_BYTES - got ? c->in[i].len : HEADER_BYTES - got;
		if (guest_ram_read(ram, c->in[i].gpa, hdr + got, n))
			return false;
		got += n;
		if (got == HEADER_BYTES) {
			*last = i;
			*rest = c->in[i].len - n;
			return true;
		}
	}
	return false;
}

/* A chain as a request: the header its first readable bytes, the status
 * the last writable byte, the data between. false if the chain has no
 * room for a status (it cannot even be answered). */
static bool parse(struct virtio_blk *b, const struct vq_chain *c, struct blk_req *r)
{
	if (c->nr_out == 0 || c->out[c->nr_out - 1].len == 0)
		return false;
	const struct vq_buf *st = &c->out[c->nr_out - 1];
	r->internal = false;
	r->head = c->head;
	r->status_gpa = st->gpa + st->len - 1;
	r->nr_data = 0;
	r->data_bytes = 0;
	uint8_t hdr[HEADER_BYTES];
	unsigned last;
	uint32_t rest;
	if (!read_header(b->t.ram, c, hdr, &last, &rest)) {
		r->type = UINT32_MAX; /* no header: answered UNSUPP */
		return true;
	}
	memcpy(&r->type, hdr, 4);
	memcpy(&r->sector, hdr + 8, 8);
	/* Driver to device for OUT: the readable bytes after the header. */
	if (r->type == VIRTIO_BLK_T_OUT) {
		const struct vq_buf *h = &c->in[last];
		if (rest)
			r->data[r->nr_data++] = (struct vq_buf){h->gpa + h->len - rest, rest};
		for (unsigned i = last + 1; i < c->nr_in; i++)
			r->data[r->nr_data++] = c->in[i];
	} else {
		/* Device to driver: the writable bytes before the status. */
		for (unsigned i = 0; i + 1 < c->nr_out; i++)
			r->data[r->nr_data++] = c->out[i];
		if (st->len > 1)
			r->data[r->nr_data++] = (struct vq_buf){st->gpa, st->len - 1};
	}
	for (unsigned i = 0; i < r->nr_data; i++)
		r->data_bytes += r->data[i].len;
	return true;
}

static void blk_notify(void *dev, unsigned q)
{
	struct virtio_blk *b = dev;
	struct vq_chain c;
	(void)q;
	while (!b->held && b->free_reqs && virtio_mmio_pop(&b->t, 0, &c) > 0) {
		struct blk_req *r = b->free_reqs;
		b->free_reqs = r->next;
		if (!parse(b, &c, r)) {
			r->next = b->free_reqs;
			b->free_reqs = r;
			virtio_mmio_needs_reset(&b->t, "a request without a status byte");
			return;
		}
		enqueue(b, r);
	}
}

/* Wait for every request taken; t.lock held. */
static void drain(struct virtio_blk *b)
{
	while (b->in_flight)
		pthread_cond_wait(&b->idle, &b->t.lock);
}

static void blk_reset(void *dev)
{
	struct virtio_blk *b = dev;
	virtio_mmio_lock(&b->t);
	drain(b);
	virtio_mmio_unlock(&b->t);
}

static void blk_read_config(void *dev, uint64_t off, uint8_t *data, unsigned len)
{
	struct virtio_blk *b = dev;
	/* struct virtio_blk_config: capacity (u64), size_max (u32), seg_max (u32). */
	uint8_t cfg[16] = {0};
	uint32_t seg_max = SEG_MAX;
	memcpy(cfg, &b->capacity, 8);
	memcpy(cfg + 12, &seg_max, 4);
	memset(data, 0, len);
	if (off < sizeof(cfg))
		memcpy(data, cfg + off, off + len <= sizeof(cfg) ? len : sizeof(cfg) - off);
}

static const struct virtio_dev_ops blk_ops = {
	.device_id = VIRTIO_ID_BLOCK,
	.features = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX,
	.queue_max = QUEUE_MAX,
	.read_config = blk_read_config,
	.notify = blk_notify,
	.reset = blk_reset,
};

/* ---- the switchover ------------------------------------------------------ */

void virtio_blk_resume(struct virtio_blk *b)
{
	virtio_mmio_lock(&b->t);
	b->held = false;
	virtio_mmio_sync_irq(&b->t);
	virtio_mmio_unlock(&b->t);
	virtio_mmio_kick(&b->t);
}

void virtio_blk_flush_early(struct virtio_blk *b)
{
	virtio_mmio_lock(&b->t);
	if (!b->flush_queued && !b->held && b->free_reqs) {
		struct blk_req *r = b->free_reqs;
		b->free_reqs = r->next;
		r->internal = true;
		b->flush_queued = true;
		enqueue(b, r);
	}
	virtio_mmio_unlock(&b->t);
}

uint64_t virtio_blk_last_sync_us(struct virtio_blk *b)
{
	virtio_mmio_lock(&b->t);
	uint64_t us = b->last_sync_us;
	virtio_mmio_unlock(&b->t);
	return us;
}

void virtio_blk_copy(struct virtio_blk *b, bool on, bool local)
{
	disk_copy_want(&b->copy, on, local);
}

uint64_t virtio_blk_copy_bytes(struct virtio_blk *b)
{
	pthread_mutex_lock(&b->copy.lock);
	uint64_t bytes = b->copy.wanted ? b->copy.bytes : 0;
	pthread_mutex_unlock(&b->copy.lock);
	return bytes;
}

static void blk_hold(void *dev)
{
	virtio_blk_hold(dev);
}

void virtio_blk_hold(struct virtio_blk *b)
{
	virtio_mmio_lock(&b->t);
	b->held = true;
	drain(b);
	virtio_mmio_unlock(&b->t);
}

/* Source, vCPUs paused: no request half done in the state, and the image
 * holds every write the guest was told is complete (on shared storage;
 * an image of this host only was copied, and the copy synced there). */
static int blk_pre_save(void *opaque, struct gw_error *err)
{
	struct virtio_blk *b = container_of(opaque, struct virtio_blk, mig);
	blk_hold(b);
	virtio_mmio_lock(&b->t);
	b->mig.t = b->t.st;
	b->mig.capacity = b->capacity;
	virtio_mmio_unlock(&b->t);
	if (!b->opt.shared)
		return 0;
	uint64_t t0 = now_us();
	int ret = sync_image(b);
	virtio_mmio_lock(&b->t);
	b->last_sync_us = now_us() - t0;
	virtio_mmio_unlock(&b->t);
	if (ret)
		return gw_error_set(err, ret, "%s: fdatasync of %s before the switchover: %s",
				    b->t.name, b->opt.path, strerror(-ret));
	return 0;
}

/* Destination: the source's device goes on here, but takes no request
 * until this side runs the guest (virtio_blk_resume()). */
static int blk_post_load(void *opaque, uint32_t version, struct gw_error *err)
{
	struct virtio_blk *b = container_of(opaque, struct virtio_blk, mig);
	char why[256];
	(void)version;
	/* What validate() could not check without the drive and its RAM. */
	if (b->mig.capacity != b->capacity)
		return vmm_refuse(err, "capacity",
				  "the source's disk has %llu sectors, this drive's image %s %llu",
				  (unsigned long long)b->mig.capacity, b->opt.path,
				  (unsigned long long)b->capacity);
	if (virtio_mmio_check_state(&b->mig.t, &blk_ops, b->t.ram, why, sizeof(why)))
		return vmm_refuse(err, "t", "%s", why);
	virtio_mmio_lock(&b->t);
	b->held = true;
	b->t.st = b->mig.t;
	virtio_mmio_unlock(&b->t);
	/* Written by the source up to its pause: nothing cached here may be
	 * older (a cache=writeback image on storage another host wrote). */
	if (!b->opt.direct)
		posix_fadvise(b->fd, 0, 0, POSIX_FADV_DONTNEED);
	return 0;
}

static const struct gw_field blk_fields[] = {
	GW_FIELD(U32, struct virtio_blk_state, t.status),
	GW_FIELD(U32, struct virtio_blk_state, t.device_features_sel),
	GW_FIELD(U32, struct virtio_blk_state, t.driver_features_sel),
	GW_FIELD(U32, struct virtio_blk_state, t.queue_sel),
	GW_FIELD(U64, struct virtio_blk_state, t.driver_features),
	GW_FIELD_RANGE(U32, struct virtio_blk_state, t.interrupt_status, 0,
		       VIRTIO_INT_USED | VIRTIO_INT_CONFIG),
	GW_FIELD(U32, struct virtio_blk_state, t.config_generation),
	GW_FIELD_RANGE(U32, struct virtio_blk_state, t.vq[0].num, 0, QUEUE_MAX),
	GW_FIELD_RANGE(U32, struct virtio_blk_state, t.vq[0].ready, 0, 1),
	GW_FIELD(U64, struct virtio_blk_state, t.vq[0].desc),
	GW_FIELD(U64, struct virtio_blk_state, t.vq[0].avail),
	GW_FIELD(U64, struct virtio_blk_state, t.vq[0].used),
	GW_FIELD(U16, struct virtio_blk_state, t.vq[0].last_avail),
	GW_FIELD(U16, struct virtio_blk_state, t.vq[0].used_idx),
	GW_FIELD(U64, struct virtio_blk_state, capacity),
};

static const struct gw_vmstate blk_vmstate = GW_VMSTATE(struct virtio_blk_state, blk_fields);

/* What the State alone must satisfy; post_load checks it against the
 * drive (its size) and the RAM (the queues' addresses). */
static int blk_validate(const void *state, uint32_t version, struct gw_error *err)
{
	const struct virtio_blk_state *s = state;
	char why[256];
	(void)version;
	if (s->capacity == 0)
		return vmm_refuse(err, "capacity", "0 sectors");
	if (virtio_mmio_check_state(&s->t, &blk_ops, NULL, why, sizeof(why)))
		return vmm_refuse(err, "t", "%s", why);
	return 0;
}

/* ---- set-up -------------------------------------------------------------- */

int drive_parse(const char *spec, struct drive_options *out, char *errmsg, size_t errlen)
{
	char buf[4200];
	*out = (struct drive_options){.shared = true};
	if (snprintf(buf, sizeof(buf), "%s", spec) >= (int)sizeof(buf)) {
		snprintf(errmsg, errlen, "--drive: too long");
		return -EINVAL;
	}
	for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv;
	     kv = strtok_r(NULL, ",", &save)) {
		char *v = strchr(kv, '=');
		if (!v) {
			snprintf(errmsg, errlen, "--drive: '%.100s' is not KEY=VALUE", kv);
			return -EINVAL;
		}
		*v++ = '\0';
		bool ok = true;
		if (!strcmp(kv, "file"))
			ok = snprintf(out->path, sizeof(out->path), "%s", v) <
				     (int)sizeof(out->path) &&
			     v[0];
		else if (!strcmp(kv, "format"))
			ok = !strcmp(v, "raw");
		else if (!strcmp(kv, "cache"))
			ok = (out->direct = !strcmp(v, "none")) || !strcmp(v, "writeback");
		else if (!strcmp(kv, "shared"))
			ok = (out->shared = !strcmp(v, "on")) || !strcmp(v, "off");
		else if (!strcmp(kv, "aio") && !strcmp(v, "threads"))
			out->aio = DRIVE_AIO_THREADS;
		else if (!strcmp(kv, "aio") && !strcmp(v, "io_uring"))
			out->aio = DRIVE_AIO_IO_URING;
		else
			ok = false;
		if (!ok) {
			snprintf(errmsg, errlen,
				 "--drive: %.40s=%.100s: expected file=PATH, format=raw, cache=none|writeback, shared=on|off, aio=threads|io_uring",
				 kv, v);
			return -EINVAL;
		}
	}
	if (!out->path[0]) {
		snprintf(errmsg, errlen, "--drive: file=PATH is missing");
		return -EINVAL;
	}
	return 0;
}

int virtio_blk_init(struct virtio_blk *b, struct vmm *vm, unsigned index, unsigned slot,
		    const struct drive_options *opt, char *errmsg, size_t errlen)
{
	char name[32];
	snprintf(name, sizeof(name), "virtio-blk %u", index);
	int ret = virtio_mmio_init(&b->t, &vm->mmio, &vm->kvm, &vm->ram, slot, &blk_ops, b, name);
	if (ret) {
		snprintf(errmsg, errlen, "%s: no MMIO slot %u: %s", name, slot, strerror(-ret));
		return ret;
	}
	b->opt = *opt;
	b->index = index;
	b->held = true; /* until the guest runs */
	b->fd = open(opt->path, O_RDWR | O_CLOEXEC | (opt->direct ? O_DIRECT : 0));
	struct stat st;
	if (b->fd < 0 || fstat(b->fd, &st) < 0) {
		ret = -errno;
		snprintf(errmsg, errlen, "--drive %s: %s", opt->path, strerror(errno));
		return ret;
	}
	if (!S_ISREG(st.st_mode) || st.st_size < (off_t)SECTOR || st.st_size % SECTOR) {
		snprintf(errmsg, errlen,
			 "--drive %s: a raw image must be a regular file of whole 512-byte sectors (%lld bytes)",
			 opt->path, (long long)st.st_size);
		return -EINVAL;
	}
	b->capacity = (uint64_t)st.st_size / SECTOR;
	ret = disk_copy_init(&b->copy, b->fd, (uint64_t)st.st_size, opt->direct, opt->shared,
			     b->opt.path, blk_hold, b);
	if (ret) {
		snprintf(errmsg, errlen, "%s: out of memory", name);
		return ret;
	}
	/* The serial is the image's identity on this host: device and inode. */
	char serial[32];
	snprintf(serial, sizeof(serial), "gw%llx-%llx", (unsigned long long)st.st_dev,
		 (unsigned long long)st.st_ino);
	memcpy(b->serial, serial, strnlen(serial, sizeof(b->serial)));
	pthread_cond_init(&b->work, NULL);
	pthread_cond_init(&b->idle, NULL);
	for (unsigned i = 0; i < QUEUE_MAX + 1; i++) {
		struct blk_req *r = calloc(1, sizeof(*r));
		if (!r) {
			snprintf(errmsg, errlen, "%s: out of memory", name);
			return -ENOMEM;
		}
		r->next = b->free_reqs;
		b->free_reqs = r;
	}
	if (opt->aio != DRIVE_AIO_THREADS) {
		ret = blk_uring_start(b, QUEUE_MAX + 1, &b->uring, errmsg, errlen);
		if (!ret || opt->aio == DRIVE_AIO_IO_URING)
			return ret;
		fprintf(stderr, "godwit-vmm: %s; using aio=threads\n", errmsg);
	}
	for (; b->nr_workers < VIRTIO_BLK_WORKERS; b->nr_workers++)
		if ((ret = pthread_create(&b->workers[b->nr_workers], NULL, worker, b))) {
			snprintf(errmsg, errlen, "%s: cannot start an I/O thread: %s", name,
				 strerror(ret));
			return -ret;
		}
	return 0;
}

void virtio_blk_destroy(struct virtio_blk *b)
{
	if (!b->t.ops)
		return;
	virtio_mmio_lock(&b->t);
	b->stopping = true;
	pthread_cond_broadcast(&b->work);
	virtio_mmio_unlock(&b->t);
	for (unsigned i = 0; i < b->nr_workers; i++)
		pthread_join(b->workers[i], NULL);
	if (b->uring)
		blk_uring_stop(b->uring);
	while (b->free_reqs) {
		struct blk_req *r = b->free_reqs;
		b->free_reqs = r->next;
		free(r);
	}
	if (b->fd >= 0)
		close(b->fd);
	disk_copy_destroy(&b->copy);
	virtio_mmio_destroy(&b->t);
}

static int blk_sections_init(struct vmm *vm, struct gw_migration *m, struct gw_error *err)
{
	for (unsigned i = 0; i < vm->nr_drives; i++) {
		struct virtio_blk *b = &vm->drives[i];
		const struct gw_section s = {
			.name = "virtio-blk",
			.instance = i,
			.version = 1,
			.min_version = 1,
			.vmstate = &blk_vmstate,
			.validate = blk_validate,
			.pre_save = blk_pre_save,
			.post_load = blk_post_load,
			.opaque = &b->mig,
		};
		/* The image itself, when the other side does not see it. */
		const struct gw_section data = {
			.name = "virtio-blk-data",
			.instance = i,
			.version = 1,
			.min_version = 1,
			.save_live = disk_copy_save,
			.load_live = disk_copy_load,
			.live_pending = disk_copy_pending,
			.opaque = &b->copy,
		};
		int ret = gw_migration_add_section(m, &s, err);
		if (!ret)
			ret = gw_migration_add_section(m, &data, err);
		if (ret)
			return ret;
	}
	return 0;
}
VMM_SECTIONS(blk_sections_init, VMM_SECTIONS_DEVICE);
