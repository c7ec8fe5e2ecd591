/*
 * vmm/x86/cpu_state.c without a VM: cpu_state_load() refuses an MSR count
 * past its array before its first ioctl, whoever filled the state (the
 * loader's range check is the first line, this the second), and every
 * failure says which call failed and why, in words.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "vmm/x86/cpu_state.h"
#include "vmm/kvm/kvm.h"

static struct cpu_state st;

int main(void)
{
	struct kvm no_vm = { .sys_fd = -1, .vm_fd = -1 };
	struct vm_state vs = { 0 };
	char msg[256];

	const uint32_t counts[] = { CPU_STATE_MAX_MSRS + 1, 0x100000, 0x10000000, 0xffffffff };
	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		st.nr_msrs = counts[i];
		msg[0] = '\0';
		/* fd -1: had any ioctl run, the message would name it instead. */
		CHECK(cpu_state_load(&no_vm, -1, &st, msg, sizeof(msg)) == -EINVAL);
		if (!strstr(msg, "nr_msrs") || !strstr(msg, "exceeds the 256 MSRs"))
			FAIL("nr_msrs %u: \"%s\"", counts[i], msg);
	}

	st.nr_msrs = CPU_STATE_MAX_MSRS;
	CHECK(cpu_state_load(&no_vm, -1, &st, msg, sizeof(msg)) == -EBADF);
	if (strcmp(msg, "KVM_SET_SREGS: Bad file descriptor") != 0)
		FAIL("\"%s\"", msg);
	CHECK(vm_state_load(&no_vm, &vs, msg, sizeof(msg)) == -EBADF);
	if (strcmp(msg, "KVM_SET_CLOCK: Bad file descriptor") != 0)
		FAIL("\"%s\"", msg);
	printf("cpu_state: all tests passed\n");
	return 0;
}
