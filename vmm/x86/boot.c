#include "vmm/x86/boot.h"
#include "vmm/kvm/guest_ram.h"
#include "vmm/kvm/vcpu.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CR0_PE (1ull << 0)
#define CR0_MP (1ull << 1)
#define CR0_ET (1ull << 4)
#define CR0_NE (1ull << 5)
#define CR0_WP (1ull << 16)
#define CR0_PG (1ull << 31)
#define CR4_PAE (1ull << 5)
#define CR4_OSFXSR (1ull << 9)
#define CR4_OSXMMEXCPT (1ull << 10)
#define EFER_LME (1ull << 8)
#define EFER_LMA (1ull << 10)
#define PTE_P (1ull << 0)
#define PTE_RW (1ull << 1)
#define PTE_PS (1ull << 7)

#define SEL_CODE64 0x08
#define SEL_DATA 0x10

static int load_error(char *errmsg, size_t errlen, const char *path, const char *what)
{
	snprintf(errmsg, errlen, "kernel %s: %s", path, what);
	return -ENOEXEC;
}

/* Load every PT_LOAD segment at its physical address; return the end of
 * the image (for the config block) and the entry point. */
static int load_segments(struct guest_ram *ram, const uint8_t *img, size_t size, const char *path,
			 uint64_t *entry, uint64_t *image_end, char *errmsg, size_t errlen)
{
	if (size < sizeof(Elf64_Ehdr))
		return load_error(errmsg, errlen, path, "too small to be an ELF file");
	const Elf64_Ehdr *eh = (const void *)img;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_machine != EM_X86_64)
		return load_error(errmsg, errlen, path, "not a 64-bit x86 ELF file");
	if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phoff > size ||
	    (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > size - eh->e_phoff)
		return load_error(errmsg, errlen, path, "bad program header table");
	const Elf64_Phdr *ph = (const void *)(img + eh->e_phoff);
	uint64_t end = 0;
	for (unsigned i = 0; i < eh->e_phnum; i++) {
		if (ph[i].p_type != PT_LOAD)
			continue;
		if (ph[i].p_offset > size || ph[i].p_filesz > size - ph[i].p_offset ||
		    ph[i].p_filesz > ph[i].p_memsz)
			return load_error(errmsg, errlen, path, "segment outside the file");
		if (ph[i].p_paddr < GW_KERNEL_MIN_ADDR)
			return load_error(errmsg, errlen, path,
					  "segment below 1 MiB would overwrite boot structures");
		if (guest_ram_write(ram, ph[i].p_paddr, img + ph[i].p_offset, ph[i].p_filesz) ||
		    !guest_ram_ptr(ram, ph[i].p_paddr, ph[i].p_memsz))
			return load_error(errmsg, errlen, path,
					  "segment does not fit in guest RAM");
		/* .bss: the memfd is zero already, nothing to write. */
		if (ph[i].p_paddr + ph[i].p_memsz > end)
			end = ph[i].p_paddr + ph[i].p_memsz;
	}
	if (!end)
		return load_error(errmsg, errlen, path, "no loadable segment");
	*entry = eh->e_entry;
	*image_end = end;
	return 0;
}

/* Identity map [0, top) with 2 MiB pages: one PD per GiB (abi.h). */
static int build_page_tables(struct guest_ram *ram, uint64_t top)
{
	uint64_t gib = (top + (1ull << 30) - 1) >> 30;
	uint64_t pml4e = (GW_PAGETABLE_ADDR + 0x1000) | PTE_P | PTE_RW;
	int ret = guest_ram_write(ram, GW_PAGETABLE_ADDR, &pml4e, sizeof(pml4e));
	for (uint64_t g = 0; g < gib && !ret; g++) {
		uint64_t pd_addr = GW_PAGETABLE_ADDR + 0x2000 + g * 0x1000;
		if (pd_addr + 0x1000 > GW_STACK_BASE)
			return -E2BIG;
		uint64_t pdpte = pd_addr | PTE_P | PTE_RW;
		ret = guest_ram_write(ram, GW_PAGETABLE_ADDR + 0x1000 + g * 8, &pdpte,
				      sizeof(pdpte));
		uint64_t pd[512];
		for (unsigned i = 0; i < 512; i++)
			pd[i] = ((g << 30) + ((uint64_t)i << 21)) | PTE_P | PTE_RW | PTE_PS;
		if (!ret)
			ret = guest_ram_write(ram, pd_addr, pd, sizeof(pd));
	}
	return ret;
}

static int write_gdt(struct guest_ram *ram)
{
	const uint64_t gdt[3] = {
		0, 0x00af9a000000ffffull, /* 64-bit code, DPL 0 */
		0x00cf92000000ffffull,    /* flat data, DPL 0 */
	};
	return guest_ram_write(ram, GW_GDT_ADDR, gdt, sizeof(gdt));
}

static int write_config(struct guest_ram *ram, unsigned nr_vcpus, uint64_t image_end,
			const char *cmdline, const struct gw_virtio_slot *virtio,
			unsigned nr_virtio)
{
	struct gw_guest_config *cfg = calloc(1, sizeof(*cfg));
	if (!cfg)
		return -ENOMEM;
	cfg->magic = GW_CONFIG_MAGIC;
	cfg->version = GW_CONFIG_VERSION;
	cfg->nr_vcpus = nr_vcpus;
	cfg->ram_size = ram->blocks[0].size;
	cfg->kernel_end = image_end;
	snprintf(cfg->cmdline, sizeof(cfg->cmdline), "%s", cmdline ? cmdline : "");
	for (unsigned i = 0; i < nr_virtio && i < GW_VIRTIO_MMIO_MAX; i++)
		cfg->virtio[cfg->nr_virtio++] = virtio[i];
	int ret = guest_ram_write(ram, GW_CONFIG_ADDR, cfg, sizeof(*cfg));
	free(cfg);
	return ret;
}

static void set_seg(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code64)
{
	*s = (struct kvm_segment){
		.base = 0,
		.limit = 0xffffffff,
		.selector = sel,
		.type = type,
		.present = 1,
		.dpl = 0,
		.db = code64 ? 0 : 1,
		.s = 1,
		.l = code64,
		.g = 1,
	};
}

static int start_long_mode(struct vcpu *v, uint64_t entry)
{
	struct kvm_sregs sregs;
	if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	set_seg(&sregs.cs, SEL_CODE64, 0xb, true);
	set_seg(&sregs.ds, SEL_DATA, 0x3, false);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.gdt.base = GW_GDT_ADDR;
	sregs.gdt.limit = 3 * 8 - 1;
	sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
	sregs.cr3 = GW_PAGETABLE_ADDR;
	sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
	sregs.efer = EFER_LME | EFER_LMA;
	if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
		return -errno;

	struct kvm_regs regs = {
		.rip = entry,
		.rsp = GW_STACK_BASE + (v->index + 1) * GW_STACK_SIZE,
		.rdi = v->index,
		.rsi = GW_CONFIG_ADDR,
		.rflags = 2, /* bit 1 is reserved-one; IF clear */
	};
	if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
		return -errno;

	struct kvm_fpu fpu = {.fcw = 0x37f, .mxcsr = 0x1f80};
	if (ioctl(v->fd, KVM_SET_FPU, &fpu) < 0)
		return -errno;

	/* With an in-kernel LAPIC, application processors start out waiting
	 * for INIT/SIPI; we start every vCPU at the entry directly. */
	struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
	if (ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
		return -errno;
	return 0;
}

static int read_file(const char *path, uint8_t **out, size_t *size, char *errmsg, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		int err = -errno;
		snprintf(errmsg, errlen, "cannot open %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return err;
	}
	uint8_t *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	ssize_t n = buf ? read(fd, buf, (size_t)st.st_size) : -1;
	close(fd);
	if (n != st.st_size) {
		free(buf);
		snprintf(errmsg, errlen, "cannot read %s", path);
		return -EIO;
	}
	*out = buf;
	*size = (size_t)n;
	return 0;
}

int boot_elf(struct guest_ram *ram, struct vcpu_set *vcpus, const char *path, const char *cmdline,
	     const struct gw_virtio_slot *virtio, unsigned nr_virtio, char *errmsg, size_t errlen)
{
	if (cmdline && strlen(cmdline) >= GW_CMDLINE_MAX) {
		snprintf(errmsg, errlen, "--append: longer than %d bytes", GW_CMDLINE_MAX - 1);
		return -E2BIG;
	}
	uint8_t *img;
	size_t size;
	int ret = read_file(path, &img, &size, errmsg, errlen);
	if (ret)
		return ret;
	uint64_t entry, image_end;
	ret = load_segments(ram, img, size, path, &entry, &image_end, errmsg, errlen);
	free(img);
	if (ret)
		return ret;
	/* Past 4 GiB at least: the virtio MMIO window is in the hole below. */
	uint64_t top = guest_ram_top(ram);
	ret = build_page_tables(ram, top > (4ull << 30) ? top : 4ull << 30);
	if (!ret)
		ret = write_gdt(ram);
	if (!ret)
		ret = write_config(ram, vcpus->nr, image_end, cmdline, virtio, nr_virtio);
	if (ret) {
		snprintf(errmsg, errlen, "writing boot structures: %s", strerror(-ret));
		return ret;
	}
	for (unsigned i = 0; i < vcpus->nr; i++) {
		ret = start_long_mode(&vcpus->vcpus[i], entry);
		if (ret) {
			snprintf(errmsg, errlen, "setting up vCPU %u for long mode: %s", i,
				 strerror(-ret));
			return ret;
		}
	}
	return 0;
}

int boot_sector(struct guest_ram *ram, struct vcpu_set *vcpus, const char *path, char *errmsg,
		size_t errlen)
{
	uint8_t *img;
	size_t size;
	int ret = read_file(path, &img, &size, errmsg, errlen);
	if (ret)
		return ret;
	if (size != 512 || img[510] != 0x55 || img[511] != 0xaa) {
		free(img);
		snprintf(errmsg, errlen,
			 "boot sector %s: must be 512 bytes ending in the 0x55 0xaa signature",
			 path);
		return -ENOEXEC;
	}
	ret = guest_ram_write(ram, 0x7c00, img, size);
	free(img);
	if (ret)
		return ret;

	struct vcpu *bsp = &vcpus->vcpus[0];
	struct kvm_sregs sregs;
	if (ioctl(bsp->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	/* Reset state is CS=f000:fff0 with base ffff0000; a BIOS hands over
	 * with every segment at 0 and jumps to 0000:7c00. */
	struct kvm_segment *segs[] = {&sregs.cs, &sregs.ds, &sregs.es,
				      &sregs.fs, &sregs.gs, &sregs.ss};
	for (size_t i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
		segs[i]->base = 0;
		segs[i]->selector = 0;
	}
	if (ioctl(bsp->fd, KVM_SET_SREGS, &sregs) < 0)
		return -errno;
	struct kvm_regs regs = {.rip = 0x7c00, .rsp = 0x7c00, .rdx = 0x80, .rflags = 2};
	if (ioctl(bsp->fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	return 0;
}
