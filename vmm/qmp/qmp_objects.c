/*
 * object-add and object-del for the objects a migration uses
 * (vmm/objects.h), with QEMU's argument names: libvirt creates
 * tls-creds-x509 objects this way before a TLS migration, and deletes
 * them after.
 */
#include "vmm/machine.h"
#include "vmm/objects.h"
#include "vmm/qmp/qmp.h"
#include "vmm/vmm.h"

#include <godwit/tls.h>
#include <stdio.h>
#include <string.h>

static const struct qmp_arg cmd_object_add_args[] = {
	{"qom-type", QMP_ARG_STR, true},
	{"id", QMP_ARG_STR, true},
	/* tls-creds-x509 */
	{"dir", QMP_ARG_STR, false},
	{"endpoint", QMP_ARG_STR, false},
	{"verify-peer", QMP_ARG_BOOL, false},
	/* authz-simple */
	{"identity", QMP_ARG_STR, false},
};

/* The members of args that type does not have: QEMU's error. */
static int refuse_foreign(json_t *args, const char *type, const char *const *own, size_t n,
			  struct qmp_error *err)
{
	const char *key;
	json_t *v;
	json_object_foreach(args, key, v) {
		size_t i = 0;
		while (i < n && strcmp(own[i], key))
			i++;
		if (i == n && strcmp(key, "qom-type") && strcmp(key, "id"))
			return qmp_fail(err, QMP_ERR_GENERIC, "Property '%s.%s' not found", type,
					key);
	}
	return 0;
}

static int add_tls_creds(struct vmm *vm, json_t *args, const char *id, struct qmp_error *err)
{
	static const char *const own[] = {"dir", "endpoint", "verify-peer"};
	if (refuse_foreign(args, "tls-creds-x509", own, ARRAY_SIZE(own), err))
		return -1;
	const char *dir = json_string_value(json_object_get(args, "dir"));
	const char *endpoint = json_string_value(json_object_get(args, "endpoint"));
	json_t *verify = json_object_get(args, "verify-peer");
	if (!dir)
		return qmp_fail(err, QMP_ERR_GENERIC, "Parameter 'dir' is missing");
	/* QEMU's default endpoint is the client. */
	if (endpoint && strcmp(endpoint, "client") && strcmp(endpoint, "server"))
		return qmp_fail(err, QMP_ERR_GENERIC,
				"Parameter 'endpoint' does not accept value '%s'", endpoint);
	enum gw_tls_endpoint ep = endpoint && !strcmp(endpoint, "server") ? GW_TLS_SERVER :
									    GW_TLS_CLIENT;
	struct gw_error e = {0};
	struct gw_tls_creds *c;
	if (gw_tls_creds_load(dir, ep, !verify || json_is_true(verify), &c, &e))
		return qmp_fail(err, QMP_ERR_GENERIC, "%s", e.msg);
	char msg[256];
	if (objects_add_tls_creds(vm->objects, id, c, msg, sizeof(msg)))
		return qmp_fail(err, QMP_ERR_GENERIC, "%s", msg);
	return 0;
}

static int add_authz(struct vmm *vm, json_t *args, const char *id, struct qmp_error *err)
{
	static const char *const own[] = {"identity"};
	if (refuse_foreign(args, "authz-simple", own, ARRAY_SIZE(own), err))
		return -1;
	const char *identity = json_string_value(json_object_get(args, "identity"));
	if (!identity)
		return qmp_fail(err, QMP_ERR_GENERIC, "Parameter 'identity' is missing");
	char msg[256];
	if (objects_add_authz(vm->objects, id, identity, msg, sizeof(msg)))
		return qmp_fail(err, QMP_ERR_GENERIC, "%s", msg);
	return 0;
}

static int cmd_object_add(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)ret;
	const char *type = json_string_value(json_object_get(args, "qom-type"));
	const char *id = json_string_value(json_object_get(args, "id"));
	if (!strcmp(type, "tls-creds-x509"))
		return add_tls_creds(vm, args, id, err);
	if (!strcmp(type, "authz-simple"))
		return add_authz(vm, args, id, err);
	return qmp_fail(err, QMP_ERR_GENERIC,
			"Parameter 'qom-type' does not accept value '%s' (godwit creates tls-creds-x509 and authz-simple)",
			type);
}

static const struct qmp_arg cmd_object_del_args[] = {{"id", QMP_ARG_STR, true}};

static int cmd_object_del(struct vmm *vm, json_t *args, json_t **ret, struct qmp_error *err)
{
	(void)ret;
	char msg[256];
	if (objects_del(vm->objects, json_string_value(json_object_get(args, "id")), msg,
			sizeof(msg)))
		return qmp_fail(err, QMP_ERR_GENERIC, "%s", msg);
	return 0;
}

static const struct qmp_command object_commands[] = {
	{"object-add", cmd_object_add, QMP_ARGS(cmd_object_add_args)},
	{"object-del", cmd_object_del, QMP_ARGS(cmd_object_del_args)},
};

int qmp_objects_register(struct qmp_server *s)
{
	return qmp_register(s, object_commands, ARRAY_SIZE(object_commands));
}
