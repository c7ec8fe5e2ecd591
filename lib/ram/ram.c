/*
 * Guest RAM: registration of RAM blocks and the RAM_PAGES record.
 *
 * Page data never passes through a buffer of ours. The sender hashes the
 * pages, writes the record header and descriptor from its stack and the
 * pages straight from guest memory in one writev(); the receiver reads the
 * descriptor, checks its CRC, and only then lets readv() put page data
 * straight into the destination pages the descriptor names, and hashes
 * them there while they are still in the cache.
 *
 * Tried and measured (bench/profile.md): writing pages the
 * destination does not have yet into the memfd with pwrite() from a small
 * buffer instead. It skips zeroing and the page fault, and loaded a
 * paused 100 MiB guest in ~75 ms instead of ~110 ms here, but leaves the
 * pages unmapped: every later copy, and the guest after it resumes, pays
 * the fault then, and the downtime of a dirtying guest went from ~35 to
 * ~45-65 ms. The downtime matters more.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>

#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
/* Debian's libxxhash builds XXH3_64bits() for baseline SSE2 (about 4 GB/s
 * here); this header makes it the variant that picks AVX2 or AVX-512 at
 * run time (about 20 GB/s), with the same results. */
#include <xxh_x86dispatch.h>
#endif

#include <godwit/stream.h>

#include "lib/crc32c.h"
#include "lib/internal.h"
#include "lib/ram/ram_land.h"

#define PAGE_MASK ((uint64_t)GW_PAGE_SIZE - 1)

bool gw_page_is_zero(const void *page)
{
	const unsigned char *p = page;

	/* Compare the page with itself shifted by one byte: a vectorized memcmp
	 * instead of a hand-written loop. */
	return p[0] == 0 && memcmp(p, p + 1, GW_PAGE_SIZE - 1) == 0;
}

uint64_t gw_page_hash(const void *page)
{
	return XXH3_64bits(page, GW_PAGE_SIZE);
}

int gw_ram_check(const struct gw_migration *m, const struct gw_ram *ram, struct gw_error *err)
{
	int ret;

	if (!ram)
		return gw_error_set(err, -EINVAL, "RAM block: no description");
	ret = gw_check_name("RAM block", ram->name, err);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < m->nr_ram; i++)
		if (strcmp(m->ram[i].name, ram->name) == 0)
			return gw_error_set(err, -EINVAL, "RAM block '%s' is already registered",
					    ram->name);
	if (m->nr_ram >= GW_MAX_RAM_BLOCKS)
		return gw_error_set(err, -EINVAL, "RAM block '%s': more than %u blocks", ram->name,
				    GW_MAX_RAM_BLOCKS);
	if (!ram->host || ((uintptr_t)ram->host & PAGE_MASK))
		return gw_error_set(err, -EINVAL,
				    "RAM block '%s': host address %p is not page-aligned",
				    ram->name, ram->host);
	if (ram->size == 0 || (ram->size & PAGE_MASK))
		return gw_error_set(err, -EINVAL,
				    "RAM block '%s': size %llu is not a non-zero multiple of %u",
				    ram->name, (unsigned long long)ram->size, GW_PAGE_SIZE);
	if (ram->fd < -1)
		return gw_error_set(err, -EINVAL, "RAM block '%s': invalid fd %d (use -1 for none)",
				    ram->name, ram->fd);
	if (ram->fd_offset & PAGE_MASK)
		return gw_error_set(err, -EINVAL,
				    "RAM block '%s': fd offset 0x%llx is not page-aligned",
				    ram->name, (unsigned long long)ram->fd_offset);
	if (ram->gpa == GW_GPA_NONE)
		return 0;
	if ((ram->gpa & PAGE_MASK) || ram->gpa + ram->size < ram->gpa)
		return gw_error_set(err, -EINVAL,
				    "RAM block '%s': guest address 0x%llx is unaligned or the block wraps",
				    ram->name, (unsigned long long)ram->gpa);
	for (uint32_t i = 0; i < m->nr_ram; i++) {
		const struct gw_ram_block *b = &m->ram[i];

		if (b->gpa != GW_GPA_NONE && ram->gpa < b->gpa + b->size &&
		    b->gpa < ram->gpa + ram->size)
			return gw_error_set(err, -EINVAL,
					    "RAM block '%s' at 0x%llx-0x%llx overlaps RAM block '%s' at 0x%llx-0x%llx",
					    ram->name, (unsigned long long)ram->gpa,
					    (unsigned long long)(ram->gpa + ram->size - 1), b->name,
					    (unsigned long long)b->gpa,
					    (unsigned long long)(b->gpa + b->size - 1));
	}
	return 0;
}

/*
 * iovecs for the data pages of a batch, one per run of contiguous pages, so
 * a batch of neighbouring pages is one piece for the kernel. Entries are
 * increasing (checked by the callers). Returns the number of iovecs.
 */
static int data_iov(unsigned char *host, const uint64_t *entries, uint32_t n, struct iovec *iov)
{
	int k = 0;

	for (uint32_t i = 0; i < n; i++) {
		uint64_t off = entries[i] & ~PAGE_MASK;

		if (entries[i] & GW_PAGE_ZERO)
			continue;
		if (k && (unsigned char *)iov[k - 1].iov_base + iov[k - 1].iov_len == host + off) {
			iov[k - 1].iov_len += GW_PAGE_SIZE;
			continue;
		}
		iov[k++] = (struct iovec){host + off, GW_PAGE_SIZE};
	}
	return k;
}

/* Entry checks shared by both sides: flags known, offsets increasing. */
static int check_entries(const uint64_t *entries, uint32_t n, uint32_t *nr_data, int code,
			 const char *where, struct gw_error *err)
{
	*nr_data = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t flags = entries[i] & PAGE_MASK;

		if (flags & ~(uint64_t)GW_PAGE_ZERO)
			return gw_error_set(err, code, "%s: entry %u has unknown page flags 0x%llx",
					    where, i, (unsigned long long)flags);
		if (i && (entries[i] & ~PAGE_MASK) <= (entries[i - 1] & ~PAGE_MASK))
			return gw_error_set(err, code,
					    "%s: entry %u (offset 0x%llx) does not follow entry %u (offset 0x%llx) in increasing order",
					    where, i, (unsigned long long)(entries[i] & ~PAGE_MASK),
					    i - 1,
					    (unsigned long long)(entries[i - 1] & ~PAGE_MASK));
		if (!(flags & GW_PAGE_ZERO))
			(*nr_data)++;
	}
	return 0;
}

int gw_save_pages(struct gw_migration *m, struct gw_writer *w, uint32_t block,
		  const uint64_t *entries, uint32_t n, unsigned flags, struct gw_error *err)
{
	return gw_save_pages_from(m, w, block, entries, n, NULL, flags, err);
}

int gw_save_pages_from(struct gw_migration *m, struct gw_writer *w, uint32_t block,
		       const uint64_t *entries, uint32_t n, const void *data, unsigned flags,
		       struct gw_error *err)
{
	if (m->save_state == GW_SAVE_IDLE)
		return gw_error_set(err, -EINVAL,
				    "gw_save_pages: no stream begun (call gw_save_begin first)");
	return gw_pages_put(m, w, block, entries, n, data, flags, err);
}

int gw_pages_put(struct gw_migration *m, struct gw_writer *w, uint32_t block,
		 const uint64_t *entries, uint32_t n, const void *data, unsigned flags,
		 struct gw_error *err)
{
	unsigned char desc[GW_PAGES_DESC_SIZE(GW_PAGES_MAX)];
	unsigned char *hashes;
	struct iovec iov[1 + GW_PAGES_MAX];
	const struct gw_ram_block *b;
	uint32_t nr_data;
	int k, ret;

	if (block >= m->nr_ram)
		return gw_error_set(err, -EINVAL, "gw_save_pages: no RAM block %u (%u registered)",
				    block, m->nr_ram);
	b = &m->ram[block];
	if (n == 0 || n > GW_PAGES_MAX)
		return gw_error_set(err, -EINVAL,
				    "gw_save_pages: RAM block '%s': %u pages, not 1..%u", b->name,
				    n, GW_PAGES_MAX);
	if (flags & ~GW_SAVE_DATA_CRC)
		return gw_error_set(err, -EINVAL, "gw_save_pages: unknown flags 0x%x", flags);
	ret = check_entries(entries, n, &nr_data, -EINVAL, "gw_save_pages", err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "RAM block '%s': ", b->name);
	if ((entries[n - 1] & ~PAGE_MASK) >= b->size)
		return gw_error_set(err, -EINVAL,
				    "gw_save_pages: RAM block '%s': page offset 0x%llx is beyond its size 0x%llx",
				    b->name, (unsigned long long)(entries[n - 1] & ~PAGE_MASK),
				    (unsigned long long)b->size);

	hashes = desc + 16 + 8 * n;
	gw_le32(desc, block);
	gw_le32(desc + 4, n);
	gw_le32(desc + 8, 0);
	gw_le32(desc + 12, 0);
	/* Hashed last, just before the writev: the window in which a running
	 * guest can tear a page is as short as it gets, and the pages are
	 * likely still in a cache when the kernel copies them. */
	for (uint32_t i = 0, d = 0; i < n; i++) {
		const unsigned char *page = data ? (const unsigned char *)data +
							    (uint64_t)GW_PAGE_SIZE * d :
						   b->host + (entries[i] & ~PAGE_MASK);

		gw_le64(desc + 16 + 8 * i, entries[i]);
		gw_le64(hashes + 8 * i, entries[i] & GW_PAGE_ZERO ? 0 : gw_page_hash(page));
		d += !(entries[i] & GW_PAGE_ZERO);
	}
	if (data) {
		k = nr_data ? 1 : 0;
		iov[1] = (struct iovec){(void *)data, (size_t)GW_PAGE_SIZE * nr_data};
	} else {
		k = data_iov(b->host, entries, n, iov + 1);
	}
	iov[0] = (struct iovec){desc, GW_PAGES_DESC_SIZE(n)};
	ret = gw_record_writev(w, GW_REC_RAM_PAGES, flags & GW_SAVE_DATA_CRC ? GW_RECF_DATA_CRC : 0,
			       gw_crc32c(0, desc, GW_PAGES_DESC_SIZE(n)), iov, k + 1, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "RAM block '%s': ", b->name);
	return 0;
}

/* Read n little-endian u64s into v, decoding in place, and continue *crc over them. */
static int read_u64s(struct gw_reader *r, uint64_t *v, uint32_t n, uint32_t *crc,
		     struct gw_error *err)
{
	unsigned char *raw = (unsigned char *)v;
	int ret = gw_reader_read(r, raw, 8ull * n, err);

	if (ret < 0)
		return ret;
	*crc = gw_crc32c(*crc, raw, 8ull * n);
	/* Every value decodes into its own 8 bytes. */
	for (uint32_t i = 0; i < n; i++)
		v[i] = gw_get_le64(raw + 8 * i);
	return 0;
}

int gw_pages_read_desc(struct gw_reader *r, const struct gw_rec_hdr *h, struct gw_pages *p,
		       uint32_t *crc, struct gw_error *err)
{
	unsigned char head[16];
	int ret;

	if (h->length < GW_PAGES_DESC_SIZE(1))
		return gw_error_set(err, -EBADMSG,
				    "RAM_PAGES record at offset %llu: %llu bytes is too short for a descriptor",
				    (unsigned long long)h->offset, (unsigned long long)h->length);
	ret = gw_reader_read(r, head, sizeof(head), err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "RAM_PAGES record at offset %llu: ",
				       (unsigned long long)h->offset);
	p->block_id = gw_get_le32(head);
	p->nr_pages = gw_get_le32(head + 4);
	p->reserved[0] = gw_get_le32(head + 8);
	p->reserved[1] = gw_get_le32(head + 12);
	/* The count sizes the next read, so it is checked before the CRC can be. */
	if (p->nr_pages == 0 || p->nr_pages > GW_PAGES_MAX ||
	    GW_PAGES_DESC_SIZE(p->nr_pages) > h->length)
		return gw_error_set(err, -EBADMSG,
				    "RAM_PAGES record at offset %llu: corrupted or malformed descriptor (%u pages in a %llu-byte record, at most %u pages)",
				    (unsigned long long)h->offset, p->nr_pages,
				    (unsigned long long)h->length, GW_PAGES_MAX);
	*crc = gw_crc32c(0, head, sizeof(head));
	ret = read_u64s(r, p->entries, p->nr_pages, crc, err);
	if (ret == 0)
		ret = read_u64s(r, p->hashes, p->nr_pages, crc, err);
	if (ret < 0)
		return gw_error_prefix(err, ret, "RAM_PAGES record at offset %llu: ",
				       (unsigned long long)h->offset);
	return 0;
}

int gw_pages_check_desc(const struct gw_rec_hdr *h, struct gw_pages *p, struct gw_error *err)
{
	char where[64];
	uint64_t want;
	int ret;

	snprintf(where, sizeof(where), "RAM_PAGES record at offset %llu",
		 (unsigned long long)h->offset);
	if (p->reserved[0] != 0 || p->reserved[1] != 0)
		return gw_error_set(err, -EBADMSG, "%s: reserved fields are 0x%x 0x%x, not zero",
				    where, p->reserved[0], p->reserved[1]);
	ret = check_entries(p->entries, p->nr_pages, &p->nr_data, -EBADMSG, where, err);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < p->nr_pages; i++)
		if ((p->entries[i] & GW_PAGE_ZERO) && p->hashes[i] != 0)
			return gw_error_set(err, -EBADMSG,
					    "%s: entry %u is a zero page but has page hash 0x%016llx, not 0",
					    where, i, (unsigned long long)p->hashes[i]);
	want = GW_PAGES_DESC_SIZE(p->nr_pages) + (uint64_t)GW_PAGE_SIZE * p->nr_data;
	if (h->length != want)
		return gw_error_set(err, -EBADMSG,
				    "%s: length %llu does not match its %u pages (%u with data): expected %llu",
				    where, (unsigned long long)h->length, p->nr_pages, p->nr_data,
				    (unsigned long long)want);
	return 0;
}

int gw_pages_load(struct gw_migration *m, uint32_t block, struct gw_torn *torn, struct gw_reader *r,
		  const struct gw_rec_hdr *h, const struct gw_pages *p, struct gw_error *err)
{
	struct gw_ram_block *b = &m->ram[block];
	struct iovec iov[GW_PAGES_MAX];
	int k, ret;

	/* Offsets are increasing, so the last one bounds them all. */
	if ((p->entries[p->nr_pages - 1] & ~PAGE_MASK) >= b->size)
		return gw_error_set(err, -EBADMSG,
				    "RAM_PAGES record at offset %llu: page offset 0x%llx is beyond the 0x%llx bytes of RAM block '%s'",
				    (unsigned long long)h->offset,
				    (unsigned long long)(p->entries[p->nr_pages - 1] & ~PAGE_MASK),
				    (unsigned long long)b->size, b->name);
	k = data_iov(b->host, p->entries, p->nr_pages, iov);
	ret = gw_reader_readv(r, iov, k, err);
	if (ret < 0)
		return gw_error_prefix(err, ret,
				       "RAM_PAGES record at offset %llu, RAM block '%s': ",
				       (unsigned long long)h->offset, b->name);
	return gw_land_settle(m, block, torn, h, p, err);
}
