/*
 * The hello of cpr-transfer (cpr_hello.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/engine/cpr_hello.h"
#include "lib/format/cpr.h"
#include "lib/transport/fd_pass.h"

int gw_cpr_hello_send(const struct gw_migration *m, struct gw_cancel *c, int timeout_ms,
		      struct gw_error *err)
{
	int fds[GW_MAX_RAM_BLOCKS];
	struct gw_wbuf cfg, table, msg;
	int ret;

	gw_wbuf_init(&cfg, GW_CONFIG_MAX);
	gw_wbuf_init(&table, GW_CPR_MAX);
	gw_wbuf_init(&msg, GW_CPR_HELLO_HEAD + GW_CONFIG_MAX + GW_CPR_MAX + 4);
	ret = gw_config_put(m, &cfg);
	if (ret < 0)
		ret = gw_error_set(err, ret, "the hello: cannot encode the configuration");
	if (ret == 0)
		ret = gw_cpr_table_put(m, 0, false, &table, err);
	if (ret == 0) {
		gw_put_bytes(&msg, GW_CPR_HELLO_MAGIC, GW_CPR_HELLO_MAGIC_LEN);
		gw_put_u32(&msg, GW_CPR_HELLO_VERSION);
		gw_put_u32(&msg, m->nr_ram);
		gw_put_u32(&msg, (uint32_t)cfg.len);
		gw_put_u32(&msg, (uint32_t)table.len);
		gw_put_bytes(&msg, cfg.data, cfg.len);
		gw_put_bytes(&msg, table.data, table.len);
		gw_put_u32(&msg, gw_crc32c(0, msg.data, msg.len));
		if (msg.error)
			ret = gw_error_set(err, msg.error, "the hello: cannot encode it");
	}
	for (uint32_t i = 0; ret == 0 && i < m->nr_ram; i++)
		fds[i] = m->ram[i].fd;
	if (ret == 0)
		ret = gw_fds_send(c, timeout_ms, msg.data, msg.len, fds, m->nr_ram, err);
	gw_wbuf_release(&cfg);
	gw_wbuf_release(&table);
	gw_wbuf_release(&msg);
	return ret < 0 ? gw_error_prefix(err, ret, "sending the memfds: ") : 0;
}

bool gw_cpr_hello_is(const unsigned char *first)
{
	return memcmp(first, GW_CPR_HELLO_MAGIC, GW_CPR_HELLO_MAGIC_LEN) == 0;
}

/* Check the machine, then adopt: the source's sections must load here
 * before the guest is paused for them. */
static int take(struct gw_migration *m, const unsigned char *cfg_p, uint32_t cfg_len,
		const unsigned char *table_p, uint32_t table_len, const int *fds, unsigned n,
		uint64_t *adopted, struct gw_error *err)
{
	struct gw_config cfg;
	struct gw_cpr_table t = {0};
	uint32_t *sec_map;
	int ret = gw_config_parse(cfg_p, cfg_len, &cfg, err);

	if (ret < 0)
		return ret;
	sec_map = calloc(cfg.nr_sections + 1, sizeof(*sec_map));
	if (!sec_map)
		ret = gw_error_set(err, -ENOMEM, "out of memory");
	if (ret == 0 && (ret = gw_config_match_machine(m, &cfg, sec_map, err)) < 0)
		gw_error_prefix(err, ret, "the source's machine does not fit this VMM: ");
	if (ret == 0)
		ret = gw_cpr_table_parse(table_p, table_len, &cfg, &t, err);
	/* The source pauses its guest only after ADOPTED: no pause yet. */
	if (ret == 0 && t.pause_ns)
		ret = gw_error_set(err, -EBADMSG,
				   "the hello: its CPR table has a pause time (%llu ns), where a hello has 0",
				   (unsigned long long)t.pause_ns);
	if (ret == 0)
		ret = gw_cpr_adopt(m, &cfg, &t, fds, n, adopted, err);
	gw_cpr_table_release(&t);
	free(sec_map);
	gw_config_release(&cfg);
	return ret;
}

int gw_cpr_hello_receive(struct gw_migration *m, struct gw_cancel *c, int timeout_ms,
			 uint64_t *adopted, struct gw_error *err)
{
	unsigned char head[GW_CPR_HELLO_HEAD], *body = NULL;
	int fds[GW_MAX_RAM_BLOCKS];
	unsigned n = 0, extra = 0;
	uint32_t version, nr_fds, cfg_len, table_len;
	int ret;

	ret = gw_fds_recv(c, timeout_ms, head, sizeof(head), fds, GW_MAX_RAM_BLOCKS, &n, err);
	if (ret < 0) {
		gw_error_prefix(err, ret, "the hello's first %zu bytes: ", sizeof(head));
		goto out;
	}
	version = gw_get_le32(head + 8);
	nr_fds = gw_get_le32(head + 12);
	cfg_len = gw_get_le32(head + 16);
	table_len = gw_get_le32(head + 20);
	if (!gw_cpr_hello_is(head))
		ret = gw_error_set(err, -EBADMSG, "the hello: bad magic");
	else if (version != GW_CPR_HELLO_VERSION)
		ret = gw_error_set(err, -EPROTONOSUPPORT,
				   "the hello: version %u is not supported (this side speaks version %u)",
				   version, GW_CPR_HELLO_VERSION);
	else if (nr_fds != n || cfg_len > GW_CONFIG_MAX || table_len > GW_CPR_MAX)
		ret = gw_error_set(err, -EBADMSG,
				   "the hello: malformed (%u fds announced, %u came; %u + %u bytes)",
				   nr_fds, n, cfg_len, table_len);
	if (ret < 0)
		goto out;
	body = malloc((size_t)cfg_len + table_len + 4);
	if (!body) {
		ret = gw_error_set(err, -ENOMEM, "the hello: out of memory");
		goto out;
	}
	/* No fd may come with the rest: gw_fds_recv() refuses it. */
	ret = gw_fds_recv(c, timeout_ms, body, (size_t)cfg_len + table_len + 4, fds + n, 0, &extra,
			  err);
	if (ret < 0)
		gw_error_prefix(err, ret, "the hello's bytes %zu to %zu: ", sizeof(head),
				sizeof(head) + cfg_len + table_len + 3);
	if (ret == 0) {
		uint32_t crc = gw_crc32c(gw_crc32c(0, head, sizeof(head)), body,
					 (size_t)cfg_len + table_len);

		if (crc != gw_get_le32(body + cfg_len + table_len))
			ret = gw_error_set(err, -EBADMSG, "the hello: CRC mismatch");
	}
	if (ret == 0)
		ret = take(m, body, cfg_len, body + cfg_len, table_len, fds, n, adopted, err);
	/* Adopted, the fds are the VMM's now. */
	if (ret == 0)
		n = 0;
out:
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
	free(body);
	return ret < 0 ? gw_error_prefix(err, ret, "local live update: ") : 0;
}
