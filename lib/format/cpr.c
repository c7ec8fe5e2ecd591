/*
 * The CPR table and adopting memfds (cpr.h).
 */
#include <errno.h>
#include <linux/magic.h>
#include <linux/memfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "lib/format/cpr.h"

#define ENTRY_SIZE (1 + 8 + 4 + 8) /* the smallest: a one-byte name */

int gw_cpr_table_put(const struct gw_migration *m, uint64_t pause_ns, bool fd_numbers,
		     struct gw_wbuf *out, struct gw_error *err)
{
	gw_put_u64(out, pause_ns);
	gw_put_u32(out, m->nr_ram);
	for (uint32_t i = 0; i < m->nr_ram; i++) {
		struct stat st;

		if (m->ram[i].fd < 0 || fstat(m->ram[i].fd, &st) < 0 || !S_ISREG(st.st_mode))
			return gw_error_set(err, -EBADF,
					    "RAM block '%s' has no memfd to hand over (registered with fd %d)",
					    m->ram[i].name, m->ram[i].fd);
		gw_put_str(out, m->ram[i].name);
		gw_put_u64(out, m->ram[i].fd_offset);
		gw_put_u32(out, fd_numbers ? (uint32_t)m->ram[i].fd : i);
		gw_put_u64(out, (uint64_t)st.st_ino);
	}
	return out->error ? gw_error_set(err, out->error, "CPR table: cannot encode it") : 0;
}

void gw_cpr_table_release(struct gw_cpr_table *t)
{
	free(t->e);
	memset(t, 0, sizeof(*t));
}

int gw_cpr_table_parse(const void *p, size_t len, const struct gw_config *cfg,
		       struct gw_cpr_table *t, struct gw_error *err)
{
	char name[GW_NAME_MAX + 1];
	struct gw_rbuf b;

	memset(t, 0, sizeof(*t));
	gw_rbuf_init(&b, p, len);
	gw_get_u64(&b, &t->pause_ns);
	gw_get_u32(&b, &t->n);
	if (b.error || t->n != cfg->nr_ram || t->n > gw_rbuf_remaining(&b) / ENTRY_SIZE)
		return gw_error_set(err, -EBADMSG,
				    "CPR table: %u entries for the %u RAM blocks of CONFIG", t->n,
				    cfg->nr_ram);
	t->e = calloc(t->n + 1, sizeof(*t->e));
	if (!t->e)
		return gw_error_set(err, -ENOMEM, "CPR table: out of memory");
	for (uint32_t i = 0; i < t->n; i++) {
		struct gw_cpr_entry *e = &t->e[i];

		gw_get_str(&b, name, true);
		gw_get_u64(&b, &e->fd_offset);
		gw_get_u32(&b, &e->fd);
		gw_get_u64(&b, &e->ino);
		if (b.error || strcmp(name, cfg->ram[i].name) != 0 ||
		    (e->fd_offset % GW_PAGE_SIZE) || e->fd_offset > UINT64_MAX - cfg->ram[i].size ||
		    e->fd > INT32_MAX) {
			gw_cpr_table_release(t);
			return gw_error_set(err, -EBADMSG,
					    "CPR table: entry %u is malformed or not block '%s' of CONFIG",
					    i, cfg->ram[i].name);
		}
	}
	if (gw_rbuf_remaining(&b)) {
		gw_cpr_table_release(t);
		return gw_error_set(err, -EBADMSG, "CPR table: %zu trailing bytes",
				    gw_rbuf_remaining(&b));
	}
	return 0;
}

/*
 * Whether fd (st its fstat) is a memfd. A memfd is a file of the kernel's
 * own tmpfs mount (with MFD_HUGETLB, its hugetlbfs mount of that page
 * size), which no path reaches: only memfds (and shared anonymous memory)
 * have its device number, so a memfd made here tells which number that
 * is. F_GET_SEALS cannot tell: any tmpfs file answers it. Nor can the
 * name /proc/self/fd gives, "/memfd:...": a file so named at the root of
 * a tmpfs out of this process's sight (another mount namespace's root, a
 * detached mount) reads the same.
 */
static bool is_memfd(int fd, const struct stat *st)
{
	unsigned flags = MFD_CLOEXEC;
	struct statfs fs;
	struct stat own;
	bool same;
	int probe;

	if (!S_ISREG(st->st_mode) || fstatfs(fd, &fs) < 0)
		return false;
	if (fs.f_type == HUGETLBFS_MAGIC && fs.f_bsize > 0) {
		/* The page size, as MFD_HUGE_2MB and its kind encode it. */
		unsigned page_shift = (unsigned)__builtin_ctzll((unsigned long long)fs.f_bsize);

		flags |= MFD_HUGETLB | page_shift << MFD_HUGE_SHIFT;
	} else if (fs.f_type != TMPFS_MAGIC) {
		return false;
	}
	probe = memfd_create("godwit-memfd-check", flags);
	if (probe < 0)
		return false;
	same = fstat(probe, &own) == 0 && own.st_dev == st->st_dev;
	close(probe);
	return same;
}

/* The fd (what: how the table names it) must be a memfd that holds the
 * block. */
static int check_fd(int fd, const char *what, const char *name, const struct gw_cpr_entry *e,
		    uint64_t size, struct gw_error *err)
{
	uint64_t off = e->fd_offset;
	struct stat st;

	if (fstat(fd, &st) < 0)
		return gw_error_set(err, -EBADF, "RAM block '%s': %s is not open in this process",
				    name, what);
	if (!is_memfd(fd, &st))
		return gw_error_set(err, -EINVAL, "RAM block '%s': %s is not a memfd", name, what);
	/* A process that did not inherit the source's fds has other files
	 * at those numbers, its own memfds maybe: only the same inode will do. */
	if ((uint64_t)st.st_ino != e->ino)
		return gw_error_set(err, -EINVAL,
				    "RAM block '%s': %s is not the source's memfd (inode %llu, expected %llu)",
				    name, what, (unsigned long long)st.st_ino,
				    (unsigned long long)e->ino);
	if ((uint64_t)st.st_size < off + size)
		return gw_error_set(err, -EINVAL,
				    "RAM block '%s': its memfd has %llu bytes, the block needs %llu from offset %llu",
				    name, (unsigned long long)st.st_size, (unsigned long long)size,
				    (unsigned long long)off);
	return 0;
}

/*
 * The fd of block i: the hello's fd the table's index names, each for one
 * block only (every fd the hello brought becomes the VMM's: one named
 * twice would be handed over twice, and another one never closed); or,
 * for cpr-exec (fds NULL), the fd number itself, which blocks in one
 * memfd share. *what says which it is, for the messages.
 */
static int fd_of(const struct gw_config *cfg, const struct gw_cpr_table *t, uint32_t i,
		 const int *fds, unsigned n, int *fd, char *what, size_t what_len,
		 struct gw_error *err)
{
	uint32_t k = t->e[i].fd;

	if (!fds) {
		snprintf(what, what_len, "the CPR record's fd %u", k);
		*fd = (int)k;
		return 0;
	}
	snprintf(what, what_len, "the hello's fd %u", k);
	if (k >= n)
		return gw_error_set(err, -EBADMSG,
				    "RAM block '%s': the table names the hello's fd %u, but the hello brought %u",
				    cfg->ram[i].name, k, n);
	for (uint32_t j = 0; j < i; j++)
		if (t->e[j].fd == k)
			return gw_error_set(err, -EBADMSG,
					    "RAM block '%s': the table names the hello's fd %u, which it named for block '%s' already",
					    cfg->ram[i].name, k, cfg->ram[j].name);
	*fd = fds[k];
	return 0;
}

/* Two blocks on the same pages of one memfd (known by its inode, which
 * check_fd() proved: SCM_RIGHTS makes a new fd of each copy) would alias
 * guest memory. */
static int check_apart(const struct gw_config *cfg, const struct gw_cpr_table *t, uint32_t i,
		       struct gw_error *err)
{
	const struct gw_cpr_entry *e = &t->e[i];

	for (uint32_t j = 0; j < i; j++)
		if (t->e[j].ino == e->ino && e->fd_offset < t->e[j].fd_offset + cfg->ram[j].size &&
		    t->e[j].fd_offset < e->fd_offset + cfg->ram[i].size)
			return gw_error_set(err, -EINVAL,
					    "RAM blocks '%s' and '%s' overlap in their memfd (inode %llu, from offsets %llu and %llu)",
					    cfg->ram[j].name, cfg->ram[i].name,
					    (unsigned long long)e->ino,
					    (unsigned long long)t->e[j].fd_offset,
					    (unsigned long long)e->fd_offset);
	return 0;
}

/* Guest addresses must not overlap: what gw_ram_check() asks of a VMM's
 * own blocks, asked of the source's before anything is mapped. */
static int check_layout(const struct gw_config *cfg, struct gw_error *err)
{
	for (uint32_t i = 0; i < cfg->nr_ram; i++) {
		const struct gw_config_ram *a = &cfg->ram[i];

		if (a->gpa == GW_GPA_NONE)
			continue;
		if ((a->gpa % GW_PAGE_SIZE) || a->gpa + a->size < a->gpa)
			return gw_error_set(err, -EINVAL,
					    "RAM block '%s': guest address 0x%llx is unaligned or wraps",
					    a->name, (unsigned long long)a->gpa);
		for (uint32_t j = 0; j < i; j++) {
			const struct gw_config_ram *b = &cfg->ram[j];

			if (b->gpa != GW_GPA_NONE && a->gpa < b->gpa + b->size &&
			    b->gpa < a->gpa + a->size)
				return gw_error_set(err, -EINVAL,
						    "RAM blocks '%s' and '%s' overlap in guest memory",
						    a->name, b->name);
		}
	}
	return 0;
}

int gw_cpr_adopt(struct gw_migration *m, const struct gw_config *cfg, const struct gw_cpr_table *t,
		 const int *fds, unsigned n, uint64_t *bytes, struct gw_error *err)
{
	struct gw_cpr_ram *ram;
	struct gw_ram_block *blocks;
	uint64_t total = 0;
	int ret;

	if (!m->cpr_ops.adopt)
		return gw_error_set(err, -ENOTSUP,
				    "this VMM cannot adopt RAM (no gw_migration_set_cpr_ops)");
	if (fds && n != t->n)
		return gw_error_set(err, -EBADMSG, "the hello brought %u fds for %u RAM blocks", n,
				    t->n);
	ret = check_layout(cfg, err);
	if (ret < 0)
		return ret;
	ram = calloc(t->n + 1, sizeof(*ram));
	blocks = calloc(t->n + 1, sizeof(*blocks));
	if (!ram || !blocks) {
		free(ram);
		free(blocks);
		return gw_error_set(err, -ENOMEM, "adopting RAM: out of memory");
	}
	for (uint32_t i = 0; i < t->n && ret == 0; i++) {
		const struct gw_cpr_entry *e = &t->e[i];
		char what[64];
		int fd = -1;

		ret = fd_of(cfg, t, i, fds, n, &fd, what, sizeof(what), err);
		if (ret == 0)
			ret = check_fd(fd, what, cfg->ram[i].name, e, cfg->ram[i].size, err);
		if (ret == 0)
			ret = check_apart(cfg, t, i, err);
		ram[i] = (struct gw_cpr_ram){
			.name = cfg->ram[i].name,
			.size = cfg->ram[i].size,
			.gpa = cfg->ram[i].gpa,
			.fd_offset = e->fd_offset,
			.fd = fd,
			.live = fds != NULL,
		};
		total += cfg->ram[i].size;
	}
	if (ret == 0 && (ret = m->cpr_ops.adopt(m->cpr_opaque, ram, t->n, err)) < 0)
		gw_error_prefix(err, ret, "adopting RAM: ");
	if (ret == 0) {
		for (uint32_t i = 0; i < t->n; i++) {
			struct gw_ram_block *b = &blocks[i];

			strcpy(b->name, ram[i].name);
			b->host = ram[i].host;
			b->size = ram[i].size;
			b->fd = ram[i].fd;
			b->fd_offset = ram[i].fd_offset;
			b->gpa = ram[i].gpa;
		}
		free(m->ram);
		m->ram = blocks;
		m->nr_ram = t->n;
		blocks = NULL;
		*bytes = total;
	}
	free(blocks);
	free(ram);
	return ret;
}
