/* libs.c - finding the real libpq functions for each caller: the registry of
 * loaded libpq copies, the caller -> copy cache, the dlsym and dlopen hooks
 * (assembly trampolines that leave the caller glibc sees untouched) and the
 * GOT patching of modules opened with RTLD_DEEPBIND. */
#include "shim.h"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* ---- the C library's own dlsym/dlopen ---- */

/* Read by the trampolines below; set before any of them jumps. "used":
 * only the assembly names them, which link-time optimisation cannot see. */
__attribute__((used)) void *ds_real_dlsym_ptr;
__attribute__((used)) void *ds_real_dlopen_ptr;

static int real_ready;                 /* ds_real_dlsym_ptr and ds_real_dlopen_ptr are bound */
static uintptr_t self_start, self_end; /* this shim's mapped range */

struct obj {
        uintptr_t addr; /* the address looked for */
        uintptr_t base; /* dlpi_addr */
        uintptr_t start, end;
        const char *name;
        const ElfW(Phdr) * phdr;
        int phnum;
        int found;
};

static void obj_range(const struct dl_phdr_info *info, uintptr_t *start, uintptr_t *end)
{
        uintptr_t lo = UINTPTR_MAX, hi = 0;
        for (int i = 0; i < info->dlpi_phnum; i++) {
                const ElfW(Phdr) *p = &info->dlpi_phdr[i];
                if (p->p_type != PT_LOAD)
                        continue;
                uintptr_t s = info->dlpi_addr + p->p_vaddr, e = s + p->p_memsz;
                if (s < lo)
                        lo = s;
                if (e > hi)
                        hi = e;
        }
        *start = lo;
        *end = hi;
}

static int find_obj_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
        (void)size;
        struct obj *o = arg;
        uintptr_t s, e;
        obj_range(info, &s, &e);
        if (o->addr < s || o->addr >= e)
                return 0;
        o->base = info->dlpi_addr;
        o->start = s;
        o->end = e;
        o->name = info->dlpi_name;
        o->phdr = info->dlpi_phdr;
        o->phnum = info->dlpi_phnum;
        o->found = 1;
        return 1;
}

/* The loaded object that contains addr. 0, or -1 if none does. */
static int find_obj(const void *addr, struct obj *o)
{
        memset(o, 0, sizeof(*o));
        o->addr = (uintptr_t)addr;
        dl_iterate_phdr(find_obj_cb, o);
        return o->found ? 0 : -1;
}

/* Runs inside the first dlsym/dlopen of the process, which may come from a
 * sanitizer runtime's own initialisation: no instrumentation, no calls into
 * anything a sanitizer intercepts. */
#define DS_EARLY __attribute__((no_sanitize("address", "undefined", "thread")))

DS_EARLY static void bind_real(void)
{
        void *s = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.34");
        if (!s)
                s = dlvsym(RTLD_NEXT, "dlsym", "GLIBC_2.2.5");
        void *o = dlvsym(RTLD_NEXT, "dlopen", "GLIBC_2.34");
        if (!o)
                o = dlvsym(RTLD_NEXT, "dlopen", "GLIBC_2.2.5");
        __atomic_store_n(&ds_real_dlsym_ptr, s, __ATOMIC_RELAXED);
        __atomic_store_n(&ds_real_dlopen_ptr, o, __ATOMIC_RELAXED);
}

static pthread_once_t self_once = PTHREAD_ONCE_INIT;

static void find_self(void)
{
        struct obj o;
        if (find_obj((const void *)find_self, &o) == 0) {
                self_start = o.start;
                self_end = o.end;
        }
}

/* Not pthread_once: ThreadSanitizer intercepts it, and its own start-up
 * calls dlsym before it can run an interceptor. Threads that race to the
 * first call bind the same two pointers. */
DS_EARLY static void ensure_real(void)
{
        if (!__atomic_load_n(&real_ready, __ATOMIC_ACQUIRE)) {
                bind_real();
                __atomic_store_n(&real_ready, 1, __ATOMIC_RELEASE);
        }
}

void *ds_real_dlsym(void *handle, const char *name)
{
        ensure_real();
        return ((void *(*)(void *, const char *))__atomic_load_n(&ds_real_dlsym_ptr,
                                                                 __ATOMIC_RELAXED))(handle, name);
}

void *ds_real_dlopen(const char *file, int mode)
{
        ensure_real();
        return ((void *(*)(const char *, int))__atomic_load_n(&ds_real_dlopen_ptr,
                                                              __ATOMIC_RELAXED))(file, mode);
}

static int in_self(uintptr_t a)
{
        pthread_once(&self_once, find_self);
        return a >= self_start && a < self_end;
}

/* ---- the registry of libpq copies ---- */

static pthread_mutex_t libs_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct ds_lib libs[DS_MAX_LIBS];

static struct ds_lib *lib_in_range(uintptr_t a)
{
        int n = atomic_load_explicit(&ds_hot.n_libs, memory_order_acquire);
        for (int i = 0; i < n && i < DS_MAX_LIBS; i++)
                if (a >= ds_hot.lib_at[i].start && a < ds_hot.lib_at[i].end)
                        return &libs[i];
        return NULL;
}

static void *own_symbol(void *handle, const char *name, const struct obj *o)
{
        void *p = ds_real_dlsym(handle, name);
        uintptr_t a = (uintptr_t)p;
        return p && a >= o->start && a < o->end ? p : NULL;
}

struct ds_lib *ds_lib_at(const void *addr)
{
        return lib_in_range((uintptr_t)addr);
}

struct ds_lib *ds_lib_containing(const void *addr)
{
        ensure_real();
        uintptr_t a = (uintptr_t)addr;
        if (!addr || in_self(a))
                return NULL;
        struct ds_lib *lib = lib_in_range(a);
        if (lib)
                return lib;
        pthread_mutex_lock(&libs_mutex);
        struct obj o;
        void *h = NULL;
        if ((lib = lib_in_range(a)) != NULL || find_obj(addr, &o) != 0 || !o.name[0])
                goto out;
        h = ds_real_dlopen(o.name, RTLD_NOLOAD | RTLD_LAZY);
        if (!h || !own_symbol(h, "PQconnectStart", &o))
                goto out;
        int n = atomic_load_explicit(&ds_hot.n_libs, memory_order_relaxed);
        if (n == DS_MAX_LIBS) {
                ds_log(DS_LOG_WARN, "more than %d libpq copies in one process; %s is not routed",
                       DS_MAX_LIBS, o.name);
                goto out;
        }
        lib = &libs[n];
        lib->start = ds_hot.lib_at[n].start = o.start;
        lib->end = ds_hot.lib_at[n].end = o.end;
        lib->handle = h;
        snprintf(lib->path, sizeof(lib->path), "%s", o.name);
        for (int i = 0; i < DS_ID_COUNT; i++)
                lib->fn[i] = own_symbol(h, ds_fn_names[i], &o);
        lib->status = (ConnStatusType(*)(const PGconn *))own_symbol(h, "PQstatus", &o);
        lib->socket = (int (*)(const PGconn *))own_symbol(h, "PQsocket", &o);
        lib->backend_pid = (int (*)(const PGconn *))own_symbol(h, "PQbackendPID", &o);
        lib->pipeline = (PGpipelineStatus(*)(const PGconn *))own_symbol(h, "PQpipelineStatus", &o);
        lib->encoding_name = (const char *(*)(int))own_symbol(h, "pg_encoding_to_char", &o);
        lib->re.set_processor = own_symbol(h, "PQsetNoticeProcessor", &o);
        lib->re.set_receiver = own_symbol(h, "PQsetNoticeReceiver", &o);
        lib->re.set_verbosity = own_symbol(h, "PQsetErrorVerbosity", &o);
        lib->re.set_context = own_symbol(h, "PQsetErrorContextVisibility", &o);
        lib->re.untrace = own_symbol(h, "PQuntrace", &o);
        lib->re.notifies = own_symbol(h, "PQnotifies", &o);
        lib->re.freemem = own_symbol(h, "PQfreemem", &o);
        lib->result_status = own_symbol(h, "PQresultStatus", &o);
        lib->ntuples = own_symbol(h, "PQntuples", &o);
        lib->getvalue = own_symbol(h, "PQgetvalue", &o);
        lib->clear = own_symbol(h, "PQclear", &o);
        lib->idx = n;
        h = NULL; /* kept: the reference keeps the copy mapped while we route to it */
        atomic_store_explicit(&ds_hot.n_libs, n + 1, memory_order_release);
        ds_debug("libpq copy %d is %s", n, lib->path);
out:
        if (h)
                dlclose(h);
        pthread_mutex_unlock(&libs_mutex);
        return lib;
}

struct ds_lib *ds_lib_slot(int k)
{
        return k >= 0 && k < atomic_load_explicit(&ds_hot.n_libs, memory_order_acquire) ? &libs[k]
                                                                                        : NULL;
}

/* ---- which copy a caller reaches ---- */

struct caller {
        uintptr_t start, end;
        struct ds_lib *lib;
};

#define DS_MAX_CALLERS 32
static pthread_mutex_t callers_mutex = PTHREAD_MUTEX_INITIALIZER;
static struct caller callers[DS_MAX_CALLERS];
static _Atomic int n_callers;

static struct ds_lib *cached_caller(uintptr_t a)
{
        /* the object that called last: one comparison in the usual case */
        static _Atomic(const struct caller *) last;
        const struct caller *l = atomic_load_explicit(&last, memory_order_acquire);
        if (l && a >= l->start && a < l->end)
                return l->lib;
        int n = atomic_load_explicit(&n_callers, memory_order_acquire);
        for (int i = 0; i < n; i++)
                if (a >= callers[i].start && a < callers[i].end) {
                        atomic_store_explicit(&last, &callers[i], memory_order_release);
                        return callers[i].lib;
                }
        return NULL;
}

/* What the object `o` itself resolves PQconnectStart to: its own
 * dependencies first (a module opened RTLD_LOCAL sees only those). */
static struct ds_lib *lib_seen_by(const struct obj *o)
{
        if (!o->name[0])
                return NULL; /* the main program: its scope is the global one */
        void *h = ds_real_dlopen(o->name, RTLD_NOLOAD | RTLD_LAZY);
        if (!h)
                return NULL;
        struct ds_lib *lib = ds_lib_containing(ds_real_dlsym(h, "PQconnectStart"));
        dlclose(h);
        return lib;
}

struct scan {
        const char *names[256];
        int n;
};

static int scan_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
        (void)size;
        struct scan *s = arg;
        if (info->dlpi_name[0] && s->n < 256)
                s->names[s->n++] = info->dlpi_name;
        return 0;
}

/* Any libpq copy in the process, for callers whose own scope has none. */
static struct ds_lib *any_lib(void)
{
        if (atomic_load(&ds_hot.n_libs) > 0)
                return &libs[0];
        struct scan s = {.n = 0};
        dl_iterate_phdr(scan_cb, &s);
        for (int i = 0; i < s.n; i++) {
                void *h = ds_real_dlopen(s.names[i], RTLD_NOLOAD | RTLD_LAZY);
                if (!h)
                        continue;
                void *p = ds_real_dlsym(h, "PQconnectStart");
                dlclose(h);
                struct ds_lib *lib = ds_lib_containing(p);
                if (lib)
                        return lib;
        }
        return NULL;
}

struct ds_lib *ds_lib_for_caller(const void *ra)
{
        uintptr_t a = (uintptr_t)ra;
        struct ds_lib *lib = lib_in_range(a);
        if (lib || (lib = cached_caller(a)) != NULL)
                return lib;
        ensure_real();
        pthread_mutex_lock(&callers_mutex);
        if ((lib = cached_caller(a)) != NULL)
                goto out;
        struct obj o;
        int have = find_obj(ra, &o) == 0;
        if (have)
                lib = lib_seen_by(&o);
        if (!lib)
                lib = ds_lib_containing(ds_real_dlsym(RTLD_NEXT, "PQconnectStart"));
        if (!lib)
                lib = any_lib();
        if (lib && have) {
                int n = atomic_load_explicit(&n_callers, memory_order_relaxed);
                if (n < DS_MAX_CALLERS) {
                        callers[n] = (struct caller){o.start, o.end, lib};
                        atomic_store_explicit(&n_callers, n + 1, memory_order_release);
                }
                ds_debug("calls from %s go to %s", o.name[0] ? o.name : "the main program",
                         lib->path);
        }
out:
        pthread_mutex_unlock(&callers_mutex);
        return lib;
}

/* ---- GOT patching after dlopen(..., RTLD_DEEPBIND) ---- */

struct snapshot {
        uintptr_t base[512];
        const char *name[512];
        int n;
};

static int snapshot_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
        (void)size;
        struct snapshot *s = arg;
        if (s->n < 512) {
                s->base[s->n] = info->dlpi_addr;
                s->name[s->n] = info->dlpi_name;
                s->n++;
        }
        return 0;
}

struct fresh {
        const struct snapshot *before;
        struct obj objs[64];
        int n;
};

static int fresh_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
        (void)size;
        struct fresh *f = arg;
        for (int i = 0; i < f->before->n; i++)
                if (f->before->base[i] == info->dlpi_addr && f->before->name[i] == info->dlpi_name)
                        return 0;
        if (f->n < 64) {
                struct obj *o = &f->objs[f->n++];
                memset(o, 0, sizeof(*o));
                o->base = info->dlpi_addr;
                obj_range(info, &o->start, &o->end);
                o->name = info->dlpi_name;
                o->phdr = info->dlpi_phdr;
                o->phnum = info->dlpi_phnum;
        }
        return 0;
}

static void write_got(const struct obj *o, void **slot, void *value)
{
        if (*slot == value)
                return;
        uintptr_t a = (uintptr_t)slot;
        for (int i = 0; i < o->phnum; i++) {
                const ElfW(Phdr) *p = &o->phdr[i];
                if (p->p_type != PT_GNU_RELRO)
                        continue;
                uintptr_t s = o->base + p->p_vaddr, e = s + p->p_memsz;
                if (a < s || a >= e)
                        continue;
                uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
                void *page = (void *)(a & ~(pg - 1));
                if (mprotect(page, pg, PROT_READ | PROT_WRITE) != 0) {
                        ds_log(DS_LOG_WARN, "cannot patch the GOT of %s: mprotect failed", o->name);
                        return;
                }
                *slot = value;
                mprotect(page, pg, PROT_READ);
                return;
        }
        *slot = value;
}

static void patch_relocs(const struct obj *o, void *group, const ElfW(Rela) * r, size_t size,
                         const ElfW(Sym) * symtab, const char *strtab)
{
        for (size_t i = 0; r && i < size / sizeof(*r); i++) {
                unsigned type = ELF64_R_TYPE(r[i].r_info), si = ELF64_R_SYM(r[i].r_info);
                if ((type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT) || si == 0)
                        continue;
                const char *name = strtab + symtab[si].st_name;
                int id = ds_fn_id(name);
                if (id < 0)
                        continue;
                struct ds_lib *lib = ds_lib_containing(ds_real_dlsym(group, name));
                if (!lib)
                        continue;
                write_got(o, (void **)(o->base + r[i].r_offset), ds_slot_fns[lib->idx][id]);
                ds_debug("%s: %s now goes through dynshim to %s", o->name, name, lib->path);
        }
}

/* Points the intercepted names in o's GOT at the wrappers of the libpq copy
 * that o's RTLD_DEEPBIND scope resolves them to. */
static void patch_object(const struct obj *o, void *group)
{
        if (in_self(o->start) || ds_lib_containing((const void *)o->start) ||
            lib_in_range(o->start))
                return; /* libpq itself: its calls into itself are nested calls */
        const ElfW(Dyn) *dyn = NULL;
        for (int i = 0; i < o->phnum; i++)
                if (o->phdr[i].p_type == PT_DYNAMIC)
                        dyn = (const ElfW(Dyn) *)(o->base + o->phdr[i].p_vaddr);
        if (!dyn)
                return;
        uintptr_t symtab = 0, strtab = 0, jmprel = 0, rela = 0;
        size_t pltrelsz = 0, relasz = 0;
        for (; dyn->d_tag != DT_NULL; dyn++) {
                switch (dyn->d_tag) {
                case DT_SYMTAB:
                        symtab = dyn->d_un.d_ptr;
                        break;
                case DT_STRTAB:
                        strtab = dyn->d_un.d_ptr;
                        break;
                case DT_JMPREL:
                        jmprel = dyn->d_un.d_ptr;
                        break;
                case DT_RELA:
                        rela = dyn->d_un.d_ptr;
                        break;
                case DT_PLTRELSZ:
                        pltrelsz = dyn->d_un.d_val;
                        break;
                case DT_RELASZ:
                        relasz = dyn->d_un.d_val;
                        break;
                }
        }
        /* ld.so relocates these in place unless .dynamic is read-only. */
#define FIX(p) ((p) && (p) < o->base ? (p) + o->base : (p))
        symtab = FIX(symtab), strtab = FIX(strtab), jmprel = FIX(jmprel), rela = FIX(rela);
#undef FIX
        if (!symtab || !strtab)
                return;
        patch_relocs(o, group, (const ElfW(Rela) *)jmprel, pltrelsz, (const ElfW(Sym) *)symtab,
                     (const char *)strtab);
        patch_relocs(o, group, (const ElfW(Rela) *)rela, relasz, (const ElfW(Sym) *)symtab,
                     (const char *)strtab);
}

/* ---- the hooks ---- */

struct ds_decision {
        void *result;
        uintptr_t handled; /* 0: jump to the real function with the original arguments */
};

/* dlsym(handle, name): a handle-relative lookup of an intercepted name in
 * a libpq copy returns that copy's wrappers (ctypes, psycopg 3). Everything
 * else, RTLD_DEFAULT and RTLD_NEXT included, goes to the real dlsym as if
 * called directly. */
static struct ds_decision dlsym_intercepted(void *handle, const char *name)
{
        struct ds_decision d = {NULL, 0};
        int id = ds_fn_id(name);
        if (id < 0)
                return d;
        void *p = ds_real_dlsym(handle, name);
        struct ds_lib *lib = p ? ds_lib_containing(p) : NULL;
        if (!lib || lib->fn[id] != p)
                return d;
        d.result = ds_slot_fns[lib->idx][id];
        d.handled = 1;
        ds_debug("dlsym(%p, \"%s\") answered with the wrapper for %s", handle, name, lib->path);
        return d;
}

/* A RTLD_DEEPBIND dlopen this thread left to the real dlopen (its file name
 * is resolved relative to the caller): the name, to patch the module at
 * this thread's next dlsym or dlopen, once the dlopen has returned. */
static __thread char *pending_deepbind __attribute__((tls_model("initial-exec")));

static void note_pending_deepbind(const char *file)
{
        free(pending_deepbind);
        pending_deepbind = strdup(file);
}

struct root_query {
        const struct link_map *lm;
        struct obj o;
};

static int root_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
        (void)size;
        struct root_query *q = arg;
        if (info->dlpi_addr != q->lm->l_addr || strcmp(info->dlpi_name, q->lm->l_name) != 0)
                return 0;
        q->o.base = info->dlpi_addr;
        obj_range(info, &q->o.start, &q->o.end);
        q->o.name = info->dlpi_name;
        q->o.phdr = info->dlpi_phdr;
        q->o.phnum = info->dlpi_phnum;
        q->o.found = 1;
        return 1;
}

/* Patches the module of the pending RTLD_DEEPBIND dlopen (found by the
 * name it was opened under; its dependencies are not patched). */
static void patch_pending_deepbind(void)
{
        char *file = pending_deepbind;
        pending_deepbind = NULL;
        void *h = ds_real_dlopen(file, RTLD_NOLOAD | RTLD_LAZY);
        struct root_query q = {.lm = NULL};
        if (h && dlinfo(h, RTLD_DI_LINKMAP, &q.lm) == 0 && q.lm) {
                dl_iterate_phdr(root_cb, &q);
                if (q.o.found)
                        patch_object(&q.o, h);
        }
        if (h)
                dlclose(h);
        free(file);
}

__attribute__((used)) DS_EARLY struct ds_decision ds_dlsym_decide(void *handle, const char *name)
{
        ensure_real();
        if (pending_deepbind)
                patch_pending_deepbind();
        if (handle == RTLD_DEFAULT || handle == RTLD_NEXT || !name || name[0] != 'P' ||
            name[1] != 'Q')
                return (struct ds_decision){NULL, 0};
        return dlsym_intercepted(handle, name);
}

/* dlopen(file, RTLD_DEEPBIND) with a path: done here, then the new
 * objects' GOTs are patched. A file name without '/' (searched along the
 * caller's RPATH) or with a '$' (expanded relative to the caller) is left
 * to the real dlopen, and the module is patched at this thread's next dlsym
 * or dlopen. Every other dlopen goes to the real one untouched. */
static struct ds_decision dlopen_deepbind(const char *file, int mode)
{
        struct ds_decision d = {NULL, 0};
        static struct snapshot before; /* under deep_mutex; too big for small stacks */
        static struct fresh fresh;
        static pthread_mutex_t deep_mutex = PTHREAD_MUTEX_INITIALIZER;
        pthread_mutex_lock(&deep_mutex);
        before.n = 0;
        dl_iterate_phdr(snapshot_cb, &before);
        d.result = ds_real_dlopen(file, mode);
        d.handled = 1;
        if (d.result) {
                fresh.before = &before;
                fresh.n = 0;
                dl_iterate_phdr(fresh_cb, &fresh);
                for (int i = 0; i < fresh.n; i++)
                        patch_object(&fresh.objs[i], d.result);
        }
        pthread_mutex_unlock(&deep_mutex);
        return d;
}

__attribute__((used)) DS_EARLY struct ds_decision ds_dlopen_decide(const char *file, int mode)
{
        ensure_real();
        if (pending_deepbind)
                patch_pending_deepbind();
        if (!(mode & RTLD_DEEPBIND) || !file)
                return (struct ds_decision){NULL, 0};
        if (!strchr(file, '/') || strchr(file, '$')) {
                note_pending_deepbind(file);
                return (struct ds_decision){NULL, 0};
        }
        return dlopen_deepbind(file, mode);
}

/* The exported dlsym and dlopen: call the decision, then either return its
 * result or jump to the real function with the caller's return address
 * still on the stack, so glibc's RTLD_NEXT, RTLD_DEFAULT and RPATH logic
 * sees the original caller. A guaranteed tail jump, not a compiler's
 * optional tail call. */
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym, @function\n"
        "dlsym:\n"
        "	.cfi_startproc\n"
        "	pushq %rdi\n"
        "	.cfi_adjust_cfa_offset 8\n"
        "	pushq %rsi\n"
        "	.cfi_adjust_cfa_offset 8\n"
        "	subq $8, %rsp\n"
        "	.cfi_adjust_cfa_offset 8\n"
        "	call ds_dlsym_decide\n"
        "	addq $8, %rsp\n"
        "	.cfi_adjust_cfa_offset -8\n"
        "	popq %rsi\n"
        "	.cfi_adjust_cfa_offset -8\n"
        "	popq %rdi\n"
        "	.cfi_adjust_cfa_offset -8\n"
        "	testq %rdx, %rdx\n"
        "	jz 1f\n"
        "	ret\n"
        "1:	jmp *ds_real_dlsym_ptr(%rip)\n"
        "	.cfi_endproc\n"
        ".size dlsym, .-dlsym\n"
        ".globl dlopen\n"
        ".type dlopen, @function\n"
        "dlopen:\n"
        "	.cfi_startproc\n"
        "	pushq %rdi\n"
        "	.cfi_adjust_cfa_offset 8\n"
        "	pushq %rsi\n"
        "	.cfi_adjust_cfa_offset 8\n"
        "	subq $8, %rsp\n"
        "	.cfi_adjust_cfa_offset 8\n"
        "	call ds_dlopen_decide\n"
        "	addq $8, %rsp\n"
        "	.cfi_adjust_cfa_offset -8\n"
        "	popq %rsi\n"
        "	.cfi_adjust_cfa_offset -8\n"
        "	popq %rdi\n"
        "	.cfi_adjust_cfa_offset -8\n"
        "	testq %rdx, %rdx\n"
        "	jz 1f\n"
        "	ret\n"
        "1:	jmp *ds_real_dlopen_ptr(%rip)\n"
        "	.cfi_endproc\n"
        ".size dlopen, .-dlopen\n");

/* ---- fork ---- */

void ds_libs_lock(void)
{
        pthread_mutex_lock(&callers_mutex);
        pthread_mutex_lock(&libs_mutex);
}

void ds_libs_unlock(void)
{
        pthread_mutex_unlock(&libs_mutex);
        pthread_mutex_unlock(&callers_mutex);
}
