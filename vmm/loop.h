/*
 * The VMM's main-thread event loop (epoll). Everything that is not a vCPU
 * or migration worker runs here: QMP clients, serial input, signals.
 *
 * Only loop_call() may be used from another thread: it queues a function
 * to run on the loop thread, which is how vCPU threads report guest
 * events (exit requests, self-check results) without locking QMP state.
 */
#ifndef GW_VMM_LOOP_H
#define GW_VMM_LOOP_H

#include <stdint.h>
#include <sys/epoll.h>

struct loop;

typedef void (*loop_fd_cb)(void *opaque, uint32_t events);
typedef void (*loop_call_fn)(void *opaque);

int loop_new(struct loop **out);
void loop_free(struct loop *l);

/* Watch fd for the epoll events mask; cb runs on the loop thread. */
int loop_add_fd(struct loop *l, int fd, uint32_t events, loop_fd_cb cb, void *opaque);
int loop_mod_fd(struct loop *l, int fd, uint32_t events);
/* Stop watching fd. Safe to call from inside a callback, even for the fd
 * whose callback is running. */
void loop_del_fd(struct loop *l, int fd);

/* Thread-safe: run fn(opaque) on the loop thread soon; -ESHUTDOWN once
 * the loop was stopped (fn will never run: opaque is still the caller's). */
int loop_call(struct loop *l, loop_call_fn fn, void *opaque);

/* Run until loop_stop(); returns 0 or -errno. */
int loop_run(struct loop *l);
/* Thread-safe. */
void loop_stop(struct loop *l);

#endif
