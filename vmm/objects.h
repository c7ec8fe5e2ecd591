/*
 * The objects QMP's object-add creates (QEMU's user-creatable QOM
 * objects), those a migration names by id: tls-creds-x509 (certificates
 * for TLS, migrate-set-parameters tls-creds) and authz-simple (the client
 * certificate's distinguished name a destination accepts, tls-authz).
 * Main loop only; a migration takes its own reference to the credentials
 * it uses, so object-del never pulls them from under a connection.
 */
#ifndef GW_VMM_OBJECTS_H
#define GW_VMM_OBJECTS_H

#include <stddef.h>

#include <godwit/tls.h>

struct vmm_objects;

struct vmm_objects *objects_new(void);
void objects_free(struct vmm_objects *o);

/* Add under id (taking creds, or copying identity): 0, or -EEXIST /
 * -ENOMEM with errmsg; creds is freed on failure. */
int objects_add_tls_creds(struct vmm_objects *o, const char *id, struct gw_tls_creds *creds,
			  char *errmsg, size_t errlen);
int objects_add_authz(struct vmm_objects *o, const char *id, const char *identity, char *errmsg,
		      size_t errlen);
/* object-del: -ENOENT with errmsg when there is no such object. */
int objects_del(struct vmm_objects *o, const char *id, char *errmsg, size_t errlen);

/* Borrowed, NULL when id names no object of that type. */
struct gw_tls_creds *objects_tls_creds(const struct vmm_objects *o, const char *id);
const char *objects_authz_identity(const struct vmm_objects *o, const char *id);

#endif
