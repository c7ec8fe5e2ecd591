/*
 * aio=io_uring (blk_uring.h).
 */
#include "vmm/dev/blk_uring.h"
#include "vmm/dev/blk_req.h"
#include "vmm/dev/image_io.h"
#include "vmm/dev/virtio_blk.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The eventfd read's user_data; requests carry their own address. */
#define KICK_TAG 1

struct blk_uring {
	struct virtio_blk *b;
	struct io_uring ring;
	int efd;
	uint64_t kicks; /* the eventfd read's buffer */
	pthread_t thread;
	unsigned active; /* requests in the ring */
};

/* Room in the submission queue: it has an entry for every request the
 * device can have taken plus the eventfd read, but a request that came
 * back short goes in again while others wait to be submitted. */
static struct io_uring_sqe *sqe(struct blk_uring *u)
{
	struct io_uring_sqe *e;
	while (!(e = io_uring_get_sqe(&u->ring)))
		io_uring_submit(&u->ring);
	return e;
}

static void arm_kick(struct blk_uring *u)
{
	struct io_uring_sqe *e = sqe(u);
	io_uring_prep_read(e, u->efd, &u->kicks, sizeof(u->kicks), 0);
	io_uring_sqe_set_data64(e, KICK_TAG);
}

static void submit_io(struct blk_uring *u, struct blk_req *r, enum blk_op op)
{
	struct io_uring_sqe *e = sqe(u);
	int fd = u->b->fd;
	if (op == BLK_OP_SYNC)
		io_uring_prep_fsync(e, fd, IORING_FSYNC_DATASYNC);
	else if (op == BLK_OP_WRITE)
		io_uring_prep_writev(e, fd, r->iov, (unsigned)r->nr_iov, (uint64_t)r->off);
	else
		io_uring_prep_readv(e, fd, r->iov, (unsigned)r->nr_iov, (uint64_t)r->off);
	io_uring_sqe_set_data(e, r);
	u->active++;
}

/* A completion: the request ends, or goes in again for what is left (a
 * transfer may come back short, as preadv and pwritev may). */
static void completed(struct blk_uring *u, struct blk_req *r, int res)
{
	enum blk_op op = r->op;
	u->active--;
	/* As preadv would be retried: nothing moved, try again. */
	if (res == -EINTR || res == -EAGAIN) {
		submit_io(u, r, op);
		return;
	}
	if (op != BLK_OP_SYNC && res > 0) {
		struct iovec *left = r->iov;
		r->off += res;
		iov_advance(&left, &r->nr_iov, (size_t)res);
		memmove(r->iov, left, (size_t)r->nr_iov * sizeof(*left));
		if (r->nr_iov > 0) {
			submit_io(u, r, op);
			return;
		}
	}
	/* 0 bytes moved with bytes left: the image ended early (it shrank). */
	int ret = res < 0 ? res : op != BLK_OP_SYNC && r->nr_iov > 0 ? -EIO : 0;
	blk_req_end(u->b, r, op, ret);
}

static void *loop(void *opaque)
{
	struct blk_uring *u = opaque;
	bool stopping = false;
	/* liburing 2.3 declares io_uring_enable_rings() but does not export it. */
	int ret = (int)syscall(__NR_io_uring_register, u->ring.ring_fd,
			       IORING_REGISTER_ENABLE_RINGS, NULL, 0);
	if (ret) {
		fprintf(stderr, "godwit-vmm: %s: enabling its io_uring: %s\n", u->b->t.name,
			strerror(errno));
		abort();
	}
	arm_kick(u);
	for (;;) {
		struct blk_req *r;
		while ((r = blk_req_take(u->b, false, &stopping))) {
			enum blk_op op = blk_req_start(u->b, r);
			if (op == BLK_OP_ANSWERED)
				blk_req_end(u->b, r, op, 0);
			else
				submit_io(u, r, op);
		}
		if (stopping && !u->active)
			break;
		ret = io_uring_submit_and_wait(&u->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -EBUSY && ret != -EAGAIN) {
			/* Nothing a request did can cause this: the ring itself broke. */
			fprintf(stderr, "godwit-vmm: %s: io_uring_submit_and_wait: %s\n",
				u->b->t.name, strerror(-ret));
			abort();
		}
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&u->ring, head, cqe)
		{
			seen++;
			if (cqe->user_data == KICK_TAG)
				arm_kick(u);
			else
				completed(u, io_uring_cqe_get_data(cqe), cqe->res);
		}
		io_uring_cq_advance(&u->ring, seen);
	}
	return NULL;
}

int blk_uring_start(struct virtio_blk *b, unsigned entries, struct blk_uring **out, char *errmsg,
		    size_t errlen)
{
	struct blk_uring *u = calloc(1, sizeof(*u));
	if (!u) {
		snprintf(errmsg, errlen, "%s: out of memory", b->t.name);
		return -ENOMEM;
	}
	u->b = b;
	u->efd = eventfd(0, EFD_CLOEXEC);
	if (u->efd < 0) {
		int ret = -errno;
		snprintf(errmsg, errlen, "%s: aio=io_uring: eventfd: %s", b->t.name,
			 strerror(errno));
		free(u);
		return ret;
	}
	/* The eventfd read takes an entry too. */
	/* Only the thread submits and reaps: completions' work runs when it
	 * waits, not as an interrupt of whatever it is doing (DEFER_TASKRUN,
	 * which binds the ring to the thread that enables it). */
	int ret = io_uring_queue_init(entries + 1, &u->ring,
				      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
					      IORING_SETUP_R_DISABLED);
	if (ret) {
		snprintf(errmsg, errlen, "%s: aio=io_uring: io_uring_queue_init: %s", b->t.name,
			 strerror(-ret));
		close(u->efd);
		free(u);
		return ret;
	}
	if ((ret = pthread_create(&u->thread, NULL, loop, u))) {
		snprintf(errmsg, errlen, "%s: cannot start its I/O thread: %s", b->t.name,
			 strerror(ret));
		io_uring_queue_exit(&u->ring);
		close(u->efd);
		free(u);
		return -ret;
	}
	*out = u;
	return 0;
}

void blk_uring_kick(struct blk_uring *u)
{
	uint64_t one = 1;
	/* Cannot fail short of a counter at 2^64-2: the thread reads it. */
	(void)!write(u->efd, &one, sizeof(one));
}

void blk_uring_stop(struct blk_uring *u)
{
	blk_uring_kick(u);
	pthread_join(u->thread, NULL);
	io_uring_queue_exit(&u->ring);
	close(u->efd);
	free(u);
}
