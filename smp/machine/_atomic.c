/*
 * _atomic.c -- the simulated CPU's atomic instructions, and the only C in smp.
 *
 * Every simulated CPU is a host process; they share one segment (see
 * smp/machine/segment.py).  This module gives a CPU what the real i386 gave
 * the kernel: cmpxchg, xadd, pause, and a clock -- plus the few things that
 * must be cheap enough to run on every lock operation of the simulated kernel:
 *
 *   - spin locks (simple_lock), a spinning reader/writer lock (spinlockmgr,
 *     as pmap_main_lock is), a recursive spin lock (the big kernel lock);
 *   - their statistics, per CPU, per lock, per call site and per mode:
 *     acquisitions, contended acquisitions, spins, cross-CPU bounces, wait and
 *     hold time (total, min, max, log2 histogram), and on contention the
 *     holder's call site (the waiter x holder matrix of lock_stat);
 *   - futex wait/wake on words of the segment (sleep channels, idle CPUs);
 *   - per-CPU trace rings of fixed-size binary records (printf/UVMHIST).
 *
 * A call site is the Python function that called lock(): found from the
 * calling frame's code object, registered once in a segment-wide table so
 * every CPU gives the same function the same id.  Workers are forked after
 * the kernel is imported, so a code object has the same address in all of
 * them; the name is compared too, so a late-created function cannot alias.
 *
 * LOCKDEBUG-style lock-order checking (off unless the kernel turns it on,
 * which it does in DIAGNOSTIC mode): the kernel hands every lock class a
 * rank (set_lock_order); a blocking acquisition of a ranked lock while this
 * CPU holds a lock of a higher or equal rank -- or an instance of the same
 * class with a higher id -- is recorded as a finding in a small per-CPU
 * array of the segment (held class, wanted class, both call sites, a count).
 * It never refuses the lock and never adds a scheduling point: the run goes
 * on exactly as it would have.  Try-locks cannot deadlock and are not
 * checked (their holds are, as held locks).
 *
 * While a CPU spins it keeps servicing its IPI mailbox (the handler is a
 * Python callable), stops when the machine is halted (raises Halted), and
 * after spin_limit turns gives the host CPU away with sched_yield(): there
 * are more simulated CPUs than host cores.
 *
 * The structures below are the segment's ABI; smp/machine/layout.py mirrors
 * them as numpy dtypes and checks the sizes exported here at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000 && \
    defined(__has_include)
#if __has_include(<internal/pycore_frame.h>)
/* The caller's code object without materialising a frame object (caller_site); an
 * installation without CPython's internal headers keeps the public call */
#define Py_BUILD_CORE 1
#include <internal/pycore_frame.h>
#undef Py_BUILD_CORE
#define SMP_FAST_CODE 1
#endif
#endif
#include <linux/futex.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>

#define MAXHELD 32
#define NHIST 32
#define SITE_NAME 48
#define NARGS 6
#define MAXCLASS 256

/* lock word state encodings */
#define RW_WRITER 0x80000000u
#define RW_WANT 0x40000000u
#define RW_CPU_MASK 0x0000ffffu
#define LF_RW 0x1u        /* lock flags: reader/writer lock */
#define LF_RECURSE 0x2u   /* may be re-taken by its holder (kernel_lock) */
#define LF_CLASS 0x4u     /* statistics per class, not per instance (pvh, anon: many) */
#define LOCK_CLASS_KEY 0x80000000u

/* held-lock modes */
#define M_EXCL 0
#define M_SHARED 1

/* CPU states (cpu_area.state), read by the parent's supervisor */
enum { CS_OFFLINE, CS_IDLE, CS_RUNNING, CS_SPINNING, CS_HALTED, CS_PANIC, CS_DONE };

/* One per lock in the lock table, a cache line each: two CPUs taking different locks
 * whose words shared a line slowed each other's uncontended pairs 2.5-3.5x (the line
 * moved at every acquire and release), and neighbouring ids are the norm -- the pmaps'
 * locks, the anons', the pv heads'. */
struct lock_word {            /* 64 bytes */
    uint32_t state;           /* simple: 0 free / holder cpu+1; rw: see RW_* */
    uint32_t klass;           /* lock class id (names kept by Python) */
    uint32_t flags;           /* LF_* */
    uint32_t last_cpu;        /* cpu+1 of the most recent acquirer (bounces) */
    uint32_t holder_site;     /* site id of the most recent acquirer */
    uint32_t recurse;         /* recursion depth beyond the first (LF_RECURSE) */
    uint32_t sleepers;        /* waiters parked on wakeseq (a release wakes them) */
    uint32_t wakeseq;         /* futex word of parked waiters, bumped by each wake */
    uint32_t pad[8];          /* the rest of the cache line */
};

struct held {                 /* 24 bytes: one lock a CPU holds */
    uint32_t lock;
    uint32_t site;
    uint32_t mode;
    uint32_t slot;            /* stats slot to charge the hold time to (or ~0) */
    uint64_t t_acq;
};

struct cpu_area {             /* per-CPU control block, CPU_AREA_SIZE apart */
    uint64_t ipi_pending;     /* IPI bits; senders OR, the CPU exchanges with 0 */
    uint32_t kick;            /* futex word: bumped to wake the CPU from idle */
    uint32_t state;           /* CS_* */
    uint32_t nheld;           /* depth of held[] */
    uint32_t spinning_on;     /* lock id + 1 while spinning, else 0 */
    int32_t curproc;          /* simulated pid running here, -1 when idle */
    uint32_t cursite;         /* site of the last lock op (where the CPU is) */
    uint64_t heartbeat;       /* bumped by the dispatch loop */
    uint64_t nslots;          /* stats slots in use */
    uint64_t slot_overflow;   /* acquisitions charged to the overflow slot */
    uint64_t npairs;          /* waiter/holder pairs in use */
    uint64_t pair_overflow;
    uint64_t spins_total;
    struct held held[MAXHELD];
};

struct stat_slot {            /* 360 bytes: one (lock, site, mode) on one CPU */
    uint32_t lock;            /* lock id, or ~0 for the overflow slot */
    uint32_t site;
    uint32_t klass;
    uint32_t mode;
    uint64_t acq, contended, spins, bounces, con_bounces;
    uint64_t wait_total, wait_max, wait_min;
    uint64_t hold_total, hold_max, hold_min;
    uint32_t wait_hist[NHIST];
    uint32_t hold_hist[NHIST];
};

struct pair_slot {            /* 32 bytes: waiter site waited on holder site */
    uint32_t klass;
    uint32_t waiter;
    uint32_t holder;
    uint32_t mode;
    uint64_t count;
    uint64_t wait_total;
};

struct site_entry {           /* 64 bytes: one call site, segment-wide */
    uint64_t key;             /* code object address */
    char name[SITE_NAME];
    uint32_t id;
    uint32_t pad;
};

struct site_table {           /* header of the site registry */
    uint32_t lock;
    uint32_t count;
    uint32_t capacity;
    uint32_t pad;
    uint64_t pad2[7];
};

struct ring_hdr {             /* 64 bytes before each CPU's ring of records */
    uint64_t head;            /* next slot the CPU writes (monotonic) */
    uint64_t tail;            /* next slot the drainer reads (monotonic) */
    uint64_t dropped;         /* records lost because the ring was full */
    uint64_t seq;             /* per-CPU sequence, counts dropped ones too */
    uint64_t capacity;        /* records, a power of two */
    uint64_t pad[3];
};

struct record {               /* 72 bytes: one printf/UVMHIST record */
    uint64_t time;            /* ns since boot */
    uint64_t seq;
    uint16_t cpu;
    uint16_t msgid;
    uint32_t call;
    int64_t args[NARGS];
};

struct seg_hdr {              /* the segment's first 4096 bytes */
    uint64_t magic;
    uint64_t boot_ns;         /* CLOCK_MONOTONIC at boot; now() subtracts it */
    uint32_t halt;            /* non-zero: every CPU stops (panic, end, Ctrl-C) */
    uint32_t panic_cpu;       /* cpu+1 of the CPU that panicked first */
    uint64_t vclock;          /* virtual clock (lockstep mode) */
    uint32_t stop;            /* non-zero: CPUs leave their dispatch loops (normal end) */
    uint32_t pad;
    uint64_t tsc_boot;        /* the time-stamp counter's origin (its calibration) ... */
    uint64_t tsc_mult;        /* ... and ns per tick in 32.32 fixed point; 0: no usable TSC */
};

struct order_finding {        /* 32 bytes: one lock-order violation, counted */
    uint32_t held_class;      /* the class held ... */
    uint32_t wanted_class;    /* ... when this one was wanted */
    uint32_t held_site;       /* where the held lock was taken */
    uint32_t site;            /* where the wanted lock was asked for */
    uint32_t held_lock;       /* the instances, the first time it was seen */
    uint32_t wanted_lock;
    uint64_t count;
};

/* ------------------------------------------------------------------ */

static PyObject *HaltedError;     /* raised in a CPU when the machine halts */
static PyObject *LockError;       /* lock protocol violation (LOCKDEBUG) */

/* Raise LockError about lock id: the message, and the facts as attributes of the
 * exception object (``lock``: the id; ``myself``: a CPU re-taking a lock it holds),
 * so the kernel never has to parse them back out of the text.  Returns -1. */
static int lock_error(uint32_t id, int myself, const char *fmt, ...)
{
    va_list va;
    va_start(va, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (msg == NULL)
        return -1;
    PyObject *exc = PyObject_CallOneArg(LockError, msg);
    Py_DECREF(msg);
    if (exc == NULL)
        return -1;
    PyObject *lk = PyLong_FromUnsignedLong(id);
    if (lk == NULL || PyObject_SetAttrString(exc, "lock", lk) < 0 ||
        PyObject_SetAttrString(exc, "myself", myself ? Py_True : Py_False) < 0) {
        Py_XDECREF(lk);
        Py_DECREF(exc);
        return -1;
    }
    Py_DECREF(lk);
    PyErr_SetObject(LockError, exc);
    Py_DECREF(exc);
    return -1;
}

typedef struct {
    uint32_t *keys;               /* hash: key -> slot index + 1 (0 empty) */
    uint64_t *kv;
    uint32_t cap;                 /* power of two */
} hmap;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    int cpu;
    uint32_t nlocks;
    struct seg_hdr *hdr;
    struct lock_word *locks;
    struct cpu_area *me;
    char *cpu_base;
    Py_ssize_t cpu_stride;
    int ncpu;
    struct stat_slot *slots;
    uint32_t nslots;
    struct pair_slot *pairs;
    uint32_t npairs;
    struct site_table *sites;
    struct site_entry *site_entries;
    struct ring_hdr *ring;
    struct record *records;
    uint64_t ring_mask;
    int stats_on;
    int spin_limit;
    int park_after;           /* spin turns before a waiter parks on a futex (0: never) */
    long park_ns;             /* longest park before looking at halts and IPIs again */
    uint64_t parks;           /* how often this CPU parked */
    int lockstep;             /* virtual clock, scheduling points while spinning */
    PyObject *ipi_handler;
    PyObject *sched_hook;
    /* lockstep scheduler (ls_setup): the turn, the strategy, hand-over by futex */
    int ls_on;                    /* scheduling points run ls_point, not sched_hook */
    int ls_proxy;                 /* take spinners' turns by proxy (on; off: to compare) */
    int ls_strategy;              /* LS_RANDOM, LS_PCT, LS_PB */
    uint32_t *ls_go;              /* [ncpu] 1: that CPU holds the turn (its futex word) */
    uint64_t *ls_st;              /* [LS_NSTATE] generator, counters, bounds (ST_*) */
    int64_t *ls_prio;             /* [ncpu] pct priorities */
    uint64_t *ls_change;          /* [LS_NCHANGE] pct change / pb preemption points */
    uint64_t *ls_wait;            /* [ncpu][4] a spinner's (lock+1, want, proxied turns) */
    int32_t *ls_cycle;            /* [ncpu][2] deadlock cycle: (cpu, lock) */
    uint64_t ls_vtick;            /* virtual ns of one scheduling point */
    uint64_t ls_depth;            /* pct depth / pb preemption bound, as formatted */
    uint64_t ls_handoffs;         /* host hand-overs this CPU made (the costly part) */
    uint64_t ls_proxied;          /* spin turns this CPU took on behalf of others */
    struct { uint32_t lock; uint32_t n; } ls_extra[4];   /* proxied spins to count */
    /* private caches */
    hmap slotmap;                 /* (lock, site, mode) -> slot */
    hmap pairmap;                 /* (klass, waiter, holder, mode) -> pair */
    uint64_t *site_keys;          /* code address -> site id (open addressing) */
    uint32_t *site_vals;
    uint32_t site_cap;
    uint32_t site_used;
    uint64_t last_site_key;       /* the last cached code object looked up ... */
    uint32_t last_site;           /* ... and its site: lock() and unlock() of one function */
    uint32_t overflow_slot;
    int ndelays;                  /* fault injection: extra hold time per class/site */
    uint64_t delay_ns[MAXCLASS];
    char delay_site[MAXCLASS][SITE_NAME];       /* index of the per-CPU overflow slot */
    int order_on;                 /* lock-order checking (set_lock_order) */
    uint16_t order_rank[MAXCLASS];          /* 0: class not ranked, not checked */
    uint16_t order_serializer[MAXCLASS];    /* class+1 whose exclusive hold exempts */
    uint16_t order_guard[MAXCLASS][2];      /* [held class+1, guard class+1]: this class
                                               under the first needs the second held */
    struct order_finding *findings;         /* this CPU's findings in the segment */
    uint64_t *findings_count;               /* [0] entries used, [1] overflowed */
    uint32_t findings_cap;
    uint32_t order_base;          /* held[] below this: an interrupted context (intr_enter) */
} Core;

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Nanoseconds since boot; in lockstep mode the machine's virtual clock, which
 * only the CPU holding the turn advances, so every timestamp is reproducible. */
static inline uint64_t core_now(Core *c)
{
    if (c->lockstep)
        return __atomic_load_n(&c->hdr->vclock, __ATOMIC_RELAXED);
    return mono_ns() - c->hdr->boot_ns;
}

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#define HAVE_TSC 1
#endif

/* The clock of lock statistics (wait and hold times: only differences are used).
 * clock_gettime costs ~50 ns on these hosts and a lock pair reads the clock twice,
 * so free mode reads the time-stamp counter (~20 ns) when the host kernel trusts it
 * (see tsc_calibrate), converted with the segment's calibration.  Trace records and
 * Core.now() keep CLOCK_MONOTONIC; lockstep keeps the virtual clock. */
static inline uint64_t stat_now(Core *c)
{
    if (c->lockstep)
        return __atomic_load_n(&c->hdr->vclock, __ATOMIC_RELAXED);
#ifdef HAVE_TSC
    uint64_t mult = c->hdr->tsc_mult;
    if (mult) {
        uint64_t d = __rdtsc() - c->hdr->tsc_boot;
        return (uint64_t)(((unsigned __int128)d * mult) >> 32);
    }
#endif
    return mono_ns() - c->hdr->boot_ns;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause");
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int hist_bucket(uint64_t ns)
{
    if (ns == 0)
        return 0;
    int b = 64 - __builtin_clzll(ns);     /* bucket b holds [2^(b-1), 2^b) */
    return b < NHIST ? b : NHIST - 1;
}

static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* ---------- call sites ---------- */

static uint32_t site_register(Core *c, uint64_t key, const char *name)
{
    struct site_table *t = c->sites;
    uint32_t id = 0;
    /* the registry is tiny and touched once per (CPU, function) */
    while (!__atomic_compare_exchange_n(&t->lock, &(uint32_t){0}, 1, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        sched_yield();
    for (uint32_t i = 0; i < t->count; i++) {
        struct site_entry *e = &c->site_entries[i];
        if (e->key == key && strncmp(e->name, name, SITE_NAME - 1) == 0) {
            id = e->id;
            goto out;
        }
    }
    if (t->count < t->capacity && t->count > 0) {
        struct site_entry *e = &c->site_entries[t->count];
        e->key = key;
        strncpy(e->name, name, SITE_NAME - 1);
        e->name[SITE_NAME - 1] = 0;
        e->id = t->count;
        id = e->id;
        __atomic_store_n(&t->count, t->count + 1, __ATOMIC_RELEASE);
    }
    /* else: table full (or not formatted): id 0, "<unknown>" */
out:
    __atomic_store_n(&t->lock, 0, __ATOMIC_RELEASE);
    return id;
}

/* The site of code object co (borrowed): the function that takes a lock -- its
 * caller (caller_site), or the function the core takes one for (ptread).  The private
 * cache keeps a reference to every code object it holds, so an address in it can never
 * be reused by another function; once the cache is half full, further functions take
 * the (slow, correct) registry path. */
static uint32_t code_site(Core *c, PyCodeObject *co)
{
    uint64_t key = (uint64_t)(uintptr_t)co;
    if (key == c->last_site_key)
        return c->last_site;
    uint32_t mask = c->site_cap - 1;
    uint32_t i = (uint32_t)mix64(key) & mask;
    for (;;) {
        if (c->site_keys[i] == key) {
            c->last_site_key = key;
            c->last_site = c->site_vals[i];
            return c->site_vals[i];
        }
        if (c->site_keys[i] == 0)
            break;
        i = (i + 1) & mask;
    }
    const char *name = PyUnicode_AsUTF8(co->co_qualname);
    if (name == NULL) {
        PyErr_Clear();
        name = "<unknown>";
    }
    uint32_t id = site_register(c, key, name);
    if (c->site_used < c->site_cap / 2) {
        Py_INCREF(co);                  /* kept: the address is never reused while cached */
        c->site_keys[i] = key;
        c->site_vals[i] = id;
        c->site_used++;
    }
    return id;
}

/* The caller's site: the code object of the Python frame that called us. */
static uint32_t caller_site(Core *c)
{
#ifdef SMP_FAST_CODE
    /* PyEval_GetFrame() would allocate a frame object for every kernel function that
     * takes a lock (3.11 creates them lazily); the interpreter frame names the code */
    _PyInterpreterFrame *fr = PyThreadState_GET()->cframe->current_frame;
    if (fr == NULL)
        return 0;
    return code_site(c, fr->f_code);
#else
    PyFrameObject *f = PyEval_GetFrame();
    if (f == NULL)
        return 0;
    PyCodeObject *co = PyFrame_GetCode(f);
    uint32_t id = code_site(c, co);
    Py_DECREF(co);
    return id;
#endif
}

/* ---------- statistics ---------- */

static int hmap_init(hmap *m, uint32_t n)
{
    uint32_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    m->cap = cap;
    m->kv = calloc(cap, sizeof(uint64_t));
    m->keys = calloc(cap, sizeof(uint32_t));
    return m->kv && m->keys ? 0 : -1;
}

static void hmap_free(hmap *m)
{
    free(m->kv);
    free(m->keys);
    m->kv = NULL;
    m->keys = NULL;
}

/* find the slot of a 64-bit key; returns index + 1, 0 when absent and *pos
 * is where to insert */
static inline uint32_t hmap_get(hmap *m, uint64_t key, uint32_t *pos)
{
    uint32_t mask = m->cap - 1;
    uint32_t i = (uint32_t)mix64(key) & mask;
    while (m->keys[i]) {
        if (m->kv[i] == key)
            return m->keys[i];
        i = (i + 1) & mask;
    }
    *pos = i;
    return 0;
}

static uint32_t stat_slot_for(Core *c, uint32_t lock, uint32_t site, uint32_t mode)
{
    uint32_t klass = c->locks[lock].klass;
    if (c->locks[lock].flags & LF_CLASS)
        lock = LOCK_CLASS_KEY | klass;  /* one slot per class and site, not per instance */
    uint64_t key = ((uint64_t)lock << 32) | ((uint64_t)site << 1) | mode;
    uint32_t pos;
    uint32_t v = hmap_get(&c->slotmap, key, &pos);
    if (v)
        return v - 1;
    uint64_t n = c->me->nslots;
    if (n >= c->overflow_slot) {
        /* table full: one overflow slot per CPU, honestly counted */
        c->me->slot_overflow++;
        return c->overflow_slot;
    }
    struct stat_slot *s = &c->slots[n];
    memset(s, 0, sizeof *s);
    s->lock = lock;
    s->site = site;
    s->klass = klass;
    s->mode = mode;
    s->wait_min = UINT64_MAX;
    s->hold_min = UINT64_MAX;
    __atomic_store_n(&c->me->nslots, n + 1, __ATOMIC_RELEASE);
    c->slotmap.kv[pos] = key;
    c->slotmap.keys[pos] = (uint32_t)n + 1;
    return (uint32_t)n;
}

static void record_pair(Core *c, uint32_t klass, uint32_t waiter, uint32_t holder,
                        uint32_t mode, uint64_t wait)
{
    uint64_t key = ((uint64_t)klass << 48) ^ ((uint64_t)waiter << 32) ^
                   ((uint64_t)holder << 1) ^ mode;
    uint32_t pos;
    uint32_t v = hmap_get(&c->pairmap, key, &pos);
    struct pair_slot *p;
    if (v) {
        p = &c->pairs[v - 1];
    } else {
        uint64_t n = c->me->npairs;
        if (n >= c->npairs) {
            c->me->pair_overflow++;
            return;
        }
        p = &c->pairs[n];
        p->klass = klass;
        p->waiter = waiter;
        p->holder = holder;
        p->mode = mode;
        p->count = 0;
        p->wait_total = 0;
        __atomic_store_n(&c->me->npairs, n + 1, __ATOMIC_RELEASE);
        c->pairmap.kv[pos] = key;
        c->pairmap.keys[pos] = (uint32_t)n + 1;
    }
    p->count++;
    p->wait_total += wait;
}

/* ---------- the spin loop ---------- */

/* One turn of waiting: service IPIs, notice a halt, give the host CPU away
 * now and then.  Returns -1 with an exception set when the CPU must stop. */
static inline int sched_point(Core *c);
static int sched_point_spin(Core *c, struct lock_word *lw, int want);

/* What a waiter waits for, to re-check a lock word before it parks. */
enum { W_EXCL, W_READ, W_WRITE };

static inline int still_busy(uint32_t s, int want)
{
    if (want == W_EXCL)
        return s != 0;
    if (want == W_READ)
        return (s & (RW_WRITER | RW_WANT)) != 0;
    return (s & ~RW_WANT) != 0;
}

/* Park a waiter on the lock's wake sequence (free mode, oversubscribed hosts): a
 * spinning waiter whose holder's host process is not running burns the host CPU the
 * holder needs.  The release that sees sleepers wakes them (lock_release_wake); an IPI
 * sent to a parked CPU wakes it too (Core.wake_lock); a park never lasts longer than
 * park_ns, so halts are seen.  The sleepers count is raised before the lock word is
 * looked at again, and a release reads it after its locked store: one of the two sees
 * the other (no lost wakeup). */
static void park(Core *c, struct lock_word *lw, int want)
{
    uint32_t seq = __atomic_load_n(&lw->wakeseq, __ATOMIC_ACQUIRE);
    __atomic_fetch_add(&lw->sleepers, 1, __ATOMIC_SEQ_CST);
    if (still_busy(__atomic_load_n(&lw->state, __ATOMIC_SEQ_CST), want) &&
        !__atomic_load_n(&c->me->ipi_pending, __ATOMIC_RELAXED)) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = c->park_ns};
        c->parks++;
        Py_BEGIN_ALLOW_THREADS
        syscall(SYS_futex, &lw->wakeseq, FUTEX_WAIT, seq, &ts, NULL, 0);
        Py_END_ALLOW_THREADS
    }
    __atomic_fetch_sub(&lw->sleepers, 1, __ATOMIC_RELEASE);
}

static inline void lock_release_wake(struct lock_word *lw)
{
    /* => the caller released the word with a locked (full-barrier) instruction */
    if (__atomic_load_n(&lw->sleepers, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&lw->wakeseq, 1, __ATOMIC_SEQ_CST);
        syscall(SYS_futex, &lw->wakeseq, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
    }
}

/* A waiter stops spinning.  The store is sequentially consistent: a shooter that posts
 * a TLB IPI and then reads this CPU's state as CS_SPINNING acknowledges for it
 * (pmap_tlb_shootnow), trusting that the CPU looks at its IPI word before it uses its
 * TLB again -- so the CPU's later load of the IPI word must not pass this store. */
static inline void leave_spin(Core *c, uint32_t saved)
{
    __atomic_store_n(&c->me->state, saved, __ATOMIC_SEQ_CST);
}

static int spin_turn(Core *c, uint64_t spins, struct lock_word *lw, int want)
{
    if (__atomic_load_n(&c->hdr->halt, __ATOMIC_RELAXED)) {
        PyErr_SetString(HaltedError, "machine halted while spinning");
        return -1;
    }
    if (c->ipi_handler != NULL && __atomic_load_n(&c->me->ipi_pending, __ATOMIC_RELAXED)) {
        PyObject *r = PyObject_CallNoArgs(c->ipi_handler);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    if (c->lockstep) {
        /* only one CPU runs: a spinner must give the turn away, or the holder
         * never gets to release the lock */
        return sched_point_spin(c, lw, want);
    }
    if (lw != NULL && c->park_after > 0 && spins >= (uint64_t)c->park_after) {
        park(c, lw, want);
        if (PyErr_CheckSignals())
            return -1;
    }
    else if (c->spin_limit > 0 && spins % (uint64_t)c->spin_limit == 0) {
        sched_yield();
        if (PyErr_CheckSignals())
            return -1;
    }
    else
        cpu_relax();
    return 0;
}

/* ---------- lockstep: the scheduler at every scheduling point ----------
 *
 * In lockstep mode one CPU holds the turn (its go word is 1).  At each scheduling
 * point it advances the virtual clock, counts the point, checks the time limit, the
 * livelock bound and (every 64th point of a spinning CPU) the deadlock cycle, and asks
 * the strategy which CPU takes the next point:
 *
 *   LS_RANDOM  a CPU drawn from the xorshift64* generator in ls_st[ST_RNG];
 *   LS_PCT     the highest-priority CPU that is not spinning or idle; at the depth
 *              change points the running CPU drops to a low priority;
 *   LS_PB      the running CPU keeps the turn; it passes to an enabled CPU drawn
 *              from the generator when the runner blocks (spins, idles, or the whole
 *              machine made no progress for LS_PB_STALL points), at the depth
 *              preemption points in ls_change, and -- so that virtual time passes for
 *              every CPU alike, as on a time-sharing machine -- at the first point
 *              where it holds no lock once it has had the turn for LS_PB_SLICE of
 *              virtual time (a yield, not a preemption: it does not count).
 *
 * All of that state is in the segment, so whichever CPU decides continues the same
 * sequence.  lockstep.py holds the Python side and documents the layout.
 *
 * Proxy turns.  Most points of a contended run are spin turns: a CPU waiting for a
 * lock gets the turn, finds the lock still held and passes the turn on -- one host
 * process wake-up for nothing.  A CPU that waits for the turn inside a spin loop
 * publishes what it waits for (ls_wait: lock, mode).  When the strategy picks such a
 * CPU, its lock is still busy for its mode and it has no IPI to answer, its turn
 * would change nothing but its spin count and what the scheduler state does: the
 * CPU that holds the turn takes that point on its behalf (the same clock step, the
 * same checks, the same draw, as that CPU) and counts a spin turn for it; the
 * spinner adds those turns when it acquires the lock.  The sequence of points,
 * choices, timestamps and lock statistics is exactly the one without proxies; only
 * the host hand-overs are gone. */

enum { LS_RANDOM, LS_PCT, LS_PB };
enum { ST_RNG, ST_POINTS, ST_SWITCHES, ST_PROGRESS, ST_LASTPROG, ST_LIMIT, ST_DEPTHLEFT,
       ST_BOUND, ST_END, ST_NCYCLE, ST_DEPTH, ST_PIN, ST_HANDOFFS, ST_TURN_AT, ST_STOPPING,
       LS_NSTATE = 16 };
enum { END_NONE, END_TIME_LIMIT, END_DEADLOCK, END_LIVELOCK };
#define LS_NCHANGE 16
#define LS_WAITW 4                /* ls_wait words per CPU */
#define LS_PB_STALL 20000         /* pb: points without progress before it turns random */
#define LS_PB_SLICE 1000000       /* pb: virtual ns of turn before a lock-free point yields */
#define LS_TURN_NS 5000000        /* a waiter looks at the halt word this often */
#define LS_STOP_NS 1000000000ull  /* after the time limit: virtual ns to reach a quiet point */

static inline struct cpu_area *cpu_of(Core *c, int i)
{
    return (struct cpu_area *)(c->cpu_base + (Py_ssize_t)i * c->cpu_stride);
}

static inline uint64_t ls_draw(Core *c)
{
    uint64_t x = c->ls_st[ST_RNG];
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    c->ls_st[ST_RNG] = x;
    return (x * 0x2545F4914F6CDD1Dull) >> 33;
}

static inline int ls_enabled(Core *c, int i)
{
    uint32_t s = __atomic_load_n(&cpu_of(c, i)->state, __ATOMIC_RELAXED);
    return s != CS_SPINNING && s != CS_IDLE;
}

/* Stop the machine from the turn holder: every waiter's go word up and woken, so
 * each sees the halt. */
static void ls_finish(Core *c)
{
    __atomic_store_n(&c->hdr->halt, 1, __ATOMIC_SEQ_CST);
    for (int i = 0; i < c->ncpu; i++) {
        uint32_t z = 0;
        __atomic_compare_exchange_n(&c->ls_go[i], &z, 1, 0, __ATOMIC_SEQ_CST,
                                    __ATOMIC_RELAXED);
        syscall(SYS_futex, &c->ls_go[i], FUTEX_WAKE, 1, NULL, NULL, 0);
    }
}

static int ls_end(Core *c, uint64_t kind, const char *why)
{
    if (!c->ls_st[ST_END])
        c->ls_st[ST_END] = kind;      /* the first reason stays */
    ls_finish(c);
    PyErr_SetString(HaltedError, why);
    return -1;
}

/* The deadlock cycle CPU start is part of or leads into (as waitfor.cycle_from):
 * written to ls_cycle, rotated to begin at its lowest CPU; returns its length. */
static int ls_cycle_from(Core *c, int start)
{
    int seen[64];
    int n = 0, cpu = start;
    for (;;) {
        for (int k = 0; k < n; k++)
            if (seen[k] == cpu)
                goto cycle;
        struct cpu_area *a = cpu_of(c, cpu);
        uint32_t spin = __atomic_load_n(&a->spinning_on, __ATOMIC_RELAXED);
        if (a->state != CS_SPINNING || !spin || n == 64)
            return 0;
        seen[n++] = cpu;
        struct lock_word *lw = &c->locks[spin - 1];
        uint32_t s = __atomic_load_n(&lw->state, __ATOMIC_RELAXED);
        if (lw->flags & LF_RW)
            cpu = (s & RW_WRITER) ? (int)(s & RW_CPU_MASK) - 1 : -1;
        else
            cpu = s ? (int)s - 1 : -1;
        if (cpu < 0 || cpu >= c->ncpu)
            return 0;
    }
cycle:;
    int first = 0;
    while (seen[first] != cpu)
        first++;
    int len = n - first, low = first;
    for (int k = first; k < n; k++)
        if (seen[k] < seen[low])
            low = k;
    for (int k = 0; k < len; k++) {
        int who = seen[first + (low - first + k) % len];
        c->ls_cycle[2 * k] = who;
        c->ls_cycle[2 * k + 1] = (int32_t)cpu_of(c, who)->spinning_on - 1;
    }
    return len;
}

static int ls_choose(Core *c, int me, uint64_t points, uint64_t vclock)
{
    uint64_t *st = c->ls_st;
    int n = c->ncpu;
    if (c->ls_strategy == LS_RANDOM)
        return (int)(ls_draw(c) % (uint64_t)n);
    if (c->ls_strategy == LS_PCT) {
        uint64_t left = st[ST_DEPTHLEFT];
        if (left && points >= c->ls_change[c->ls_depth - left]) {
            c->ls_prio[me] = (int64_t)left;   /* drop the running CPU to a low priority */
            st[ST_DEPTHLEFT] = left - 1;
        }
        int best = -1;
        int64_t best_p = -1;
        for (int i = 0; i < n; i++) {
            if (!ls_enabled(c, i))
                continue;                     /* waiting for someone: not enabled */
            if (c->ls_prio[i] > best_p) {
                best = i;
                best_p = c->ls_prio[i];
            }
        }
        if (best < 0)                         /* nobody can go on by itself: draw */
            return (int)(ls_draw(c) % (uint64_t)n);
        return best;
    }
    /* LS_PB: keep the turn unless blocked, stalled, preempted or yielding */
    int blocked = !ls_enabled(c, me) || points - st[ST_LASTPROG] > LS_PB_STALL;
    int cand[64], k = 0;
    for (int i = 0; i < n && k < 64; i++)
        if (i != me && ls_enabled(c, i))
            cand[k++] = i;
    if (!blocked) {
        uint64_t left = st[ST_DEPTHLEFT];
        if (left && points >= c->ls_change[c->ls_depth - left])
            st[ST_DEPTHLEFT] = left - 1;      /* a preemption: spent, even if nobody is */
        else if (k == 0 || vclock - st[ST_TURN_AT] < LS_PB_SLICE ||
                 __atomic_load_n(&cpu_of(c, me)->nheld, __ATOMIC_RELAXED))
            return me;
        if (k == 0)
            return me;
    }
    if (k == 0)                               /* blocked, nobody enabled: any other CPU */
        for (int i = 0; i < n && k < 64; i++)
            if (i != me)
                cand[k++] = i;
    if (k == 0)
        return me;
    return cand[ls_draw(c) % (uint64_t)k];
}

/* One scheduling point of CPU who (this CPU, or a spinner by proxy): the clock,
 * the checks, the choice.  Returns the next CPU, or -1 with Halted set. */
static int ls_step(Core *c, int who, uint64_t cost)
{
    uint64_t *st = c->ls_st;
    uint64_t vclock = __atomic_add_fetch(&c->hdr->vclock, cost, __ATOMIC_RELAXED);
    uint64_t points = st[ST_POINTS] + 1;
    st[ST_POINTS] = points;
    if (st[ST_LIMIT] && vclock >= st[ST_LIMIT]) {
        /* the time limit: as in a free-running run, the CPUs finish what they are doing
         * in the kernel and stop at their next dispatch, where the last one to get
         * there halts the machine (ls_finish); a machine that finds no quiet point
         * within LS_STOP_NS of virtual time is halted where it is */
        if (!st[ST_STOPPING])
            st[ST_STOPPING] = vclock;
        else if (vclock - st[ST_STOPPING] > LS_STOP_NS)
            return ls_end(c, END_TIME_LIMIT, "time limit reached");
    }
    if (points - st[ST_LASTPROG] > st[ST_BOUND])
        return ls_end(c, END_LIVELOCK, "livelock");
    if (cpu_of(c, who)->state == CS_SPINNING && points % 64 == 0) {
        int len = ls_cycle_from(c, who);
        if (len) {
            st[ST_NCYCLE] = (uint64_t)len;
            return ls_end(c, END_DEADLOCK, "deadlock");
        }
    }
    int nxt = ls_choose(c, who, points, vclock);
    if (nxt != who) {
        st[ST_SWITCHES]++;
        st[ST_TURN_AT] = vclock;
    }
    return nxt;
}

/* Can CPU i's pending point be taken by proxy (see above)? */
static int ls_proxiable(Core *c, int i)
{
    uint64_t *w = &c->ls_wait[LS_WAITW * i];
    if (!w[0])
        return 0;
    struct cpu_area *a = cpu_of(c, i);
    if (a->state != CS_SPINNING || __atomic_load_n(&a->ipi_pending, __ATOMIC_RELAXED))
        return 0;
    uint32_t s = __atomic_load_n(&c->locks[w[0] - 1].state, __ATOMIC_RELAXED);
    switch (w[1]) {
    case W_EXCL:
        return s != 0;
    case W_READ:
        return (s & (RW_WRITER | RW_WANT)) != 0;
    default:            /* a writer whose turn would raise WANT must take it itself */
        return (s & ~RW_WANT) != 0 && (s & RW_WANT);
    }
}

/* Wait until this CPU holds the turn, or the machine halts (Halted). */
static int ls_wait_turn(Core *c)
{
    uint32_t *go = &c->ls_go[c->cpu];
    for (;;) {
        /* ls_finish raises every go word to wake the waiters, who must stop rather
         * than run on in parallel after the end.  It stores the halt word first, so a
         * go word seen up implies the halt word is seen too if that was the reason:
         * look again after the go word (before it, a halt can still come between) */
        int got = __atomic_load_n(go, __ATOMIC_SEQ_CST) != 0;
        if (__atomic_load_n(&c->hdr->halt, __ATOMIC_SEQ_CST)) {
            PyErr_SetString(HaltedError, "machine halted while waiting for the turn");
            return -1;
        }
        if (got)
            return 0;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = LS_TURN_NS};
        Py_BEGIN_ALLOW_THREADS
        syscall(SYS_futex, go, FUTEX_WAIT, 0, &ts, NULL, 0);
        Py_END_ALLOW_THREADS
    }
}

/* A scheduling point of this CPU: decide (taking spinners' points by proxy while the
 * choice falls on one), then hand the turn over -- our go word down, the next one's
 * up, wake it, sleep on ours -- unless it came back to us. */
static int ls_point(Core *c, uint64_t cost)
{
    int nxt = ls_step(c, c->cpu, cost);
    while (nxt >= 0 && nxt != c->cpu && c->ls_proxy && ls_proxiable(c, nxt)) {
        c->ls_wait[LS_WAITW * nxt + 2]++;     /* its spin turn, counted when it acquires */
        c->ls_proxied++;
        nxt = ls_step(c, nxt, c->ls_vtick);
    }
    if (nxt < 0)
        return -1;
    if (nxt == c->cpu)
        return 0;
    c->ls_handoffs++;
    c->ls_st[ST_HANDOFFS]++;
    __atomic_store_n(&c->ls_go[c->cpu], 0, __ATOMIC_SEQ_CST);
    uint32_t z = 0;
    __atomic_compare_exchange_n(&c->ls_go[nxt], &z, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED);
    syscall(SYS_futex, &c->ls_go[nxt], FUTEX_WAKE, 1, NULL, NULL, 0);
    return ls_wait_turn(c);
}

static inline int sched_point(Core *c)
{
    if (c->ls_on)
        return ls_point(c, c->ls_vtick);
    if (c->sched_hook == NULL)
        return 0;
    PyObject *r = PyObject_CallNoArgs(c->sched_hook);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The scheduling point of a spin turn: while we wait for the turn, others may take
 * our spin turns by proxy; we count them as ours for the acquisition. */
static int sched_point_spin(Core *c, struct lock_word *lw, int want)
{
    if (!c->ls_on || lw == NULL)
        return sched_point(c);
    uint64_t *w = &c->ls_wait[LS_WAITW * c->cpu];
    uint32_t id = (uint32_t)(lw - c->locks);
    w[1] = (uint64_t)want;
    w[0] = (uint64_t)id + 1;
    int r = ls_point(c, c->ls_vtick);
    w[0] = 0;
    if (w[2]) {
        int k;
        for (k = 0; k < 4; k++)
            if (c->ls_extra[k].lock == id + 1)
                break;
        if (k == 4)
            for (k = 0; k < 4; k++)
                if (c->ls_extra[k].lock == 0)
                    break;
        if (k < 4) {
            c->ls_extra[k].lock = id + 1;
            c->ls_extra[k].n += (uint32_t)w[2];
        }
        w[2] = 0;
    }
    return r;
}

/* Spin turns taken for us by proxy while we waited for lock id (acquired()). */
static inline uint64_t ls_take_extra(Core *c, uint32_t id)
{
    for (int k = 0; k < 4; k++)
        if (c->ls_extra[k].lock == id + 1) {
            uint64_t n = c->ls_extra[k].n;
            c->ls_extra[k].lock = 0;
            c->ls_extra[k].n = 0;
            return n;
        }
    return 0;
}

/* After winning the lock word: statistics and the held stack. */
static int acquired(Core *c, uint32_t id, uint32_t mode, uint32_t site, uint64_t spins,
                    uint64_t t0, uint32_t holder_site)
{
    struct lock_word *lw = &c->locks[id];
    struct cpu_area *me = c->me;
    uint32_t prev = lw->last_cpu;
    uint32_t mine = (uint32_t)c->cpu + 1;
    lw->last_cpu = mine;
    lw->holder_site = site;
    uint32_t slot = UINT32_MAX;
    uint64_t t = 0;
    if (spins && c->ls_on)
        spins += ls_take_extra(c, id);    /* lockstep: turns spun for us by proxy */
    if (c->stats_on) {
        slot = stat_slot_for(c, id, site, mode);
        struct stat_slot *s = &c->slots[slot];
        int bounce = prev != 0 && prev != mine;
        s->acq++;
        s->bounces += bounce;
        t = stat_now(c);
        if (spins) {
            uint64_t w = t - t0;
            s->contended++;
            s->con_bounces += bounce;
            s->spins += spins;
            s->wait_total += w;
            if (w > s->wait_max)
                s->wait_max = w;
            if (w < s->wait_min)
                s->wait_min = w;
            s->wait_hist[hist_bucket(w)]++;
            me->spins_total += spins;
            record_pair(c, lw->klass, site, holder_site, mode, w);
        }
    }
    struct held *h = &me->held[me->nheld];
    h->lock = id;
    h->site = site;
    h->mode = mode;
    h->slot = slot;
    h->t_acq = t;
    __atomic_store_n(&me->nheld, me->nheld + 1, __ATOMIC_RELEASE);
    me->cursite = site;
    if (c->ndelays) {
        uint32_t k = lw->klass;
        if (k < MAXCLASS && c->delay_ns[k] &&
            (!c->delay_site[k][0] || strncmp(c->delay_site[k], c->site_entries[site].name,
                                             SITE_NAME) == 0)) {
            /* "what if this lock were slower": hold it longer, in the CPU's own time */
            if (c->lockstep)
                __atomic_fetch_add(&c->hdr->vclock, c->delay_ns[k], __ATOMIC_RELAXED);
            else {
                uint64_t end = mono_ns() + c->delay_ns[k];
                while (mono_ns() < end)
                    cpu_relax();
            }
        }
    }
    return 0;
}

/* Pop lock id from the held stack; *t is the release time (stats on).  The
 * caller releases the lock word and only then charges the hold time
 * (charge_hold), so the bookkeeping never lengthens the critical section. */
static int pop_held(Core *c, uint32_t id, uint32_t mode, struct held *out, uint64_t *t)
{
    struct cpu_area *me = c->me;
    int i;
    for (i = (int)me->nheld - 1; i >= 0; i--)
        if (me->held[i].lock == id && me->held[i].mode == mode)
            break;
    if (i < 0) {
        lock_error(id, 0, "cpu%d: unlocking lock %u it does not hold", c->cpu, id);
        return -1;
    }
    *out = me->held[i];
    for (int j = i; j < (int)me->nheld - 1; j++)
        me->held[j] = me->held[j + 1];
    __atomic_store_n(&me->nheld, me->nheld - 1, __ATOMIC_RELEASE);
    *t = (c->stats_on && out->slot != UINT32_MAX) ? stat_now(c) : 0;
    return 0;
}

static void charge_hold(Core *c, const struct held *h, uint64_t t)
{
    if (!t)
        return;
    struct stat_slot *s = &c->slots[h->slot];
    uint64_t d = t - h->t_acq;
    s->hold_total += d;
    if (d > s->hold_max)
        s->hold_max = d;
    if (d < s->hold_min)
        s->hold_min = d;
    s->hold_hist[hist_bucket(d)]++;
}

/* Record a finding: held lock h (index in held[]) before wanted lock id of class wk,
 * taken at site; one record per (held class, wanted class, sites), however often. */
static void record_finding(Core *c, struct held *h, uint32_t wk, uint32_t id, uint32_t site)
{
    uint32_t hk = c->locks[h->lock].klass;
    uint64_t n = c->findings_count[0];
    for (uint64_t i = 0; i < n; i++) {
        struct order_finding *f = &c->findings[i];
        if (f->held_class == hk && f->wanted_class == wk && f->held_site == h->site &&
            f->site == site) {
            f->count++;
            return;
        }
    }
    if (n >= c->findings_cap) {
        c->findings_count[1]++;
        return;
    }
    struct order_finding *f = &c->findings[n];
    f->held_class = hk;
    f->wanted_class = wk;
    f->held_site = h->site;
    f->site = site;
    f->held_lock = h->lock;
    f->wanted_lock = id;
    f->count = 1;
    __atomic_store_n(&c->findings_count[0], n + 1, __ATOMIC_RELEASE);
}

/* Lock-order check of a blocking acquisition of lock id from site (see the top of
 * the file).  Of the held locks that are out of order, the highest-ranked one is
 * recorded: one finding per (held class, wanted class, sites), however often.  A
 * class with a guard (e.g. pvh under a pmap lock needs pmap_main_lock, shared or
 * exclusive: 1.91's PMAP_MAP_TO_HEAD_LOCK, which is what keeps the head-to-map
 * direction's exclusive holder alone) is also recorded when it is taken in order
 * under the guarded class without the guard held. */
static void order_check(Core *c, uint32_t id, uint32_t site)
{
    uint32_t wk = c->locks[id].klass;
    uint32_t wr = wk < MAXCLASS ? c->order_rank[wk] : 0;
    if (!wr)
        return;
    struct cpu_area *me = c->me;
    uint32_t ser = c->order_serializer[wk];
    uint32_t gheld = c->order_guard[wk][0], gguard = c->order_guard[wk][1];
    int worst = -1, under = -1, guarded = 0;
    uint32_t worst_rank = 0;
    for (uint32_t i = 0; i < me->nheld; i++) {
        struct held *h = &me->held[i];
        if (h->lock == id)
            return;             /* recursion, or locking against myself: not an order */
        uint32_t hk = c->locks[h->lock].klass;
        if (gguard && hk == gguard - 1)
            guarded = 1;
        if (i < c->order_base)
            continue;           /* held by the context an interrupt handler interrupted */
        if (gheld && hk == gheld - 1)
            under = (int)i;
        uint32_t hr = hk < MAXCLASS ? c->order_rank[hk] : 0;
        if (!hr || hr < wr || (hk == wk && h->lock < id))
            continue;           /* unranked, in order, or instances in ascending order */
        if (hr >= worst_rank) {
            worst = (int)i;
            worst_rank = hr;
        }
    }
    if (worst < 0) {
        if (under >= 0 && !guarded)
            record_finding(c, &me->held[under], wk, id, site);
        return;
    }
    if (ser)                    /* e.g. pvh -> pmap while pmap_main_lock is held exclusively */
        for (uint32_t i = 0; i < me->nheld; i++)
            if (me->held[i].mode == M_EXCL && c->locks[me->held[i].lock].klass == ser - 1)
                return;
    record_finding(c, &me->held[worst], wk, id, site);
}

static int check_id(Core *c, PyObject *const *args, Py_ssize_t nargs, uint32_t *id);

/* Arguments of a lock operation: one lock id, in range, of the right kind;
 * for acquisitions also room on the held stack (checked before the lock
 * word is touched, so a refused acquisition leaves nothing behind). */
static int check_lock(Core *c, PyObject *const *args, Py_ssize_t nargs, uint32_t *id,
                      int want_rw, int acquire)
{
    if (check_id(c, args, nargs, id))
        return -1;
    if (((c->locks[*id].flags & LF_RW) != 0) != want_rw) {
        lock_error(*id, 0, want_rw ? "lock %u is not a reader/writer lock"
                                  : "lock %u is a reader/writer lock", *id);
        return -1;
    }
    if (acquire && __atomic_load_n(&c->hdr->halt, __ATOMIC_RELAXED) &&
        __atomic_load_n(&c->hdr->panic_cpu, __ATOMIC_RELAXED) != (uint32_t)c->cpu + 1) {
        PyErr_SetString(HaltedError, "machine halted");     /* stop at the next lock */
        return -1;
    }
    if (acquire && c->me->nheld >= MAXHELD) {
        lock_error(*id, 0, "cpu%d: more than %d locks held", c->cpu, MAXHELD);
        return -1;
    }
    return 0;
}

static int check_id(Core *c, PyObject *const *args, Py_ssize_t nargs, uint32_t *id)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "expected one lock id");
        return -1;
    }
    Py_ssize_t v = PyLong_AsSsize_t(args[0]);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || (uint64_t)v >= c->nlocks) {
        PyErr_Format(PyExc_IndexError, "lock id %zd out of range", v);
        return -1;
    }
    *id = (uint32_t)v;
    return 0;
}

/* simple_lock / kernel_lock: exclusive spin acquisition of lock id (checked, after
 * the scheduling point) for site.  0, or -1 with an exception set. */
static int lock_excl(Core *c, uint32_t id, uint32_t site)
{
    struct lock_word *lw = &c->locks[id];
    uint32_t mine = (uint32_t)c->cpu + 1;
    uint32_t zero = 0;
    if (c->order_on)
        order_check(c, id, site);
    if (__atomic_compare_exchange_n(&lw->state, &zero, mine, 0, __ATOMIC_ACQUIRE,
                                    __ATOMIC_RELAXED))
        return acquired(c, id, M_EXCL, site, 0, 0, 0);
    if (zero == mine) {
        if (lw->flags & LF_RECURSE) {
            /* counted as an acquisition; hold time belongs to the outermost hold */
            lw->recurse++;
            if (c->stats_on)
                c->slots[stat_slot_for(c, id, site, M_EXCL)].acq++;
            return 0;
        }
        return lock_error(id, 1, "simple_lock: locking against myself (lock %u)", id);
    }
    uint64_t t0 = c->stats_on ? stat_now(c) : 0;
    uint32_t holder_site = lw->holder_site;
    uint64_t spins = 0;
    uint32_t saved_spin = c->me->spinning_on;     /* an IPI handler may spin too */
    __atomic_store_n(&c->me->spinning_on, id + 1, __ATOMIC_RELAXED);
    uint32_t saved = c->me->state;
    c->me->state = CS_SPINNING;
    for (;;) {
        spins++;
        if (spin_turn(c, spins, lw, W_EXCL)) {
            /* when halted, spinning_on stays set: the report says what we waited for */
            if (!PyErr_ExceptionMatches(HaltedError))
                c->me->spinning_on = saved_spin;
            leave_spin(c, saved);
            return -1;
        }
        if (__atomic_load_n(&lw->state, __ATOMIC_RELAXED) == 0) {
            zero = 0;
            if (__atomic_compare_exchange_n(&lw->state, &zero, mine, 0, __ATOMIC_ACQUIRE,
                                            __ATOMIC_RELAXED))
                break;
        }
    }
    c->me->spinning_on = saved_spin;
    leave_spin(c, saved);
    return acquired(c, id, M_EXCL, site, spins, t0, holder_site);
}

static PyObject *Core_lock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 0, 1) || sched_point(c) ||
        lock_excl(c, id, caller_site(c)))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Core_trylock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 0, 1) || sched_point(c))
        return NULL;
    struct lock_word *lw = &c->locks[id];
    uint32_t zero = 0;
    if (__atomic_compare_exchange_n(&lw->state, &zero, (uint32_t)c->cpu + 1, 0,
                                    __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        if (acquired(c, id, M_EXCL, caller_site(c), 0, 0, 0))
            return NULL;
        Py_RETURN_TRUE;
    }
    if (zero == (uint32_t)c->cpu + 1 && (lw->flags & LF_RECURSE)) {
        lw->recurse++;
        if (c->stats_on)
            c->slots[stat_slot_for(c, id, caller_site(c), M_EXCL)].acq++;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* simple_unlock of lock id (checked), then the scheduling point.  0, or -1 with an
 * exception set. */
static int unlock_excl(Core *c, uint32_t id)
{
    if (__atomic_load_n(&c->hdr->halt, __ATOMIC_RELAXED)) {
        /* halted: keep every lock (also through finally clauses that would release
         * them), so the report shows what the CPU held.  The panicking CPU is already
         * unwinding with its Panic: let that through; any other CPU stops here. */
        if (__atomic_load_n(&c->hdr->panic_cpu, __ATOMIC_RELAXED) == (uint32_t)c->cpu + 1)
            return 0;
        PyErr_SetString(HaltedError, "machine halted");
        return -1;
    }
    struct lock_word *lw = &c->locks[id];
    uint32_t mine = (uint32_t)c->cpu + 1;
    if (__atomic_load_n(&lw->state, __ATOMIC_RELAXED) != mine)
        return lock_error(id, 0, "simple_unlock: lock %u not held by cpu%d", id, c->cpu);
    if (lw->recurse) {
        lw->recurse--;
        return 0;
    }
    struct held h;
    uint64_t t;
    if (pop_held(c, id, M_EXCL, &h, &t))
        return -1;
    __atomic_exchange_n(&lw->state, 0, __ATOMIC_SEQ_CST);   /* locked: see park() */
    lock_release_wake(lw);
    charge_hold(c, &h, t);
    return sched_point(c);
}

static PyObject *Core_unlock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 0, 0) || unlock_excl(c, id))
        return NULL;
    Py_RETURN_NONE;
}

/* pmap_extract's walk of va through page directory page pdir of the physical memory
 * at phys (checked by the caller), as 1.91's: an empty PDE answers 0 at once, without
 * the lock; otherwise the scheduling point, simple_lock(lock) from site, the PDE read
 * again and the PTE read (0 if the PDE is no longer valid), simple_unlock(lock).
 * 0 and *pte, or -1 with an exception set (the lock not held). */
static int pt_walk(Core *c, uint32_t id, uint32_t site, uint32_t *phys, Py_ssize_t off,
                   Py_ssize_t pdir, uint32_t va, uint32_t *pte)
{
    *pte = 0;
    if (!__atomic_load_n(&phys[pdir * 1024 + (va >> 22)], __ATOMIC_RELAXED))
        return 0;
    if (sched_point(c) || lock_excl(c, id, site))
        return -1;
    uint32_t pde = __atomic_load_n(&phys[pdir * 1024 + (va >> 22)], __ATOMIC_RELAXED);
    if (pde & 1) {                                  /* PG_V */
        Py_ssize_t i = (Py_ssize_t)(pde >> 12) * 1024 + ((va >> 12) & 0x3ff);
        if (off + 4 * i + 4 > c->view.len) {
            unlock_excl(c, id);
            PyErr_SetString(PyExc_IndexError, "page-table walk: PDE points out of the segment");
            return -1;
        }
        *pte = __atomic_load_n(&phys[i], __ATOMIC_RELAXED);
    }
    return unlock_excl(c, id);
}

/* The arguments ptread and ptscan share: (lock, code, phys_off, pdir, va, ...). */
static int pt_args(Core *c, PyObject *const *args, const char *name, uint32_t *id,
                   uint32_t *site, uint32_t **phys, Py_ssize_t *off, Py_ssize_t *pdir,
                   Py_ssize_t *va)
{
    if (check_lock(c, args, 1, id, 0, 1))
        return -1;
    if (!PyCode_Check(args[1])) {
        PyErr_Format(PyExc_TypeError, "%s: code must be a code object", name);
        return -1;
    }
    *off = PyLong_AsSsize_t(args[2]);
    *pdir = PyLong_AsSsize_t(args[3]);
    *va = PyLong_AsSsize_t(args[4]);
    if ((*off == -1 || *pdir == -1 || *va == -1) && PyErr_Occurred())
        return -1;
    if (*off < 0 || *off % 4 || *pdir < 0 || *va < 0 || *va > 0xffffffffL ||
        *off + (*pdir + 1) * 4096 > c->view.len) {
        PyErr_Format(PyExc_IndexError, "%s: page directory out of the segment", name);
        return -1;
    }
    *phys = (uint32_t *)(c->base + *off);
    *site = code_site(c, (PyCodeObject *)args[1]);
    return 0;
}

/* ptread(lock, code, phys_off, pdir, va) -> pte: pmap_extract of va in the pmap whose
 * lock is lock and page directory page is pdir (pt_walk), the lock taken as called from
 * code's function -- the call site lockstat and the lock-order checker see.  The same
 * lock operations, statistics and scheduling points as the calls from Python, and
 * nothing in between: a pmap_extract of the current pmap is one call. */
static PyObject *Core_ptread(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id, site, pte, *phys;
    Py_ssize_t off, pdir, va;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "ptread(lock, code, phys_off, pdir, va)");
        return NULL;
    }
    if (pt_args(c, args, "ptread", &id, &site, &phys, &off, &pdir, &va) ||
        pt_walk(c, id, site, phys, off, pdir, (uint32_t)va, &pte))
        return NULL;
    return PyLong_FromUnsignedLong(pte);
}

/* ptscan(lock, code, phys_off, pdir, va, n, skip, slots_off, slot) -> i: the fault
 * lookahead's loop over the n pages from va, in address order, but page skip: each is
 * a ptread of its own (pt_walk: its own lock and unlock); a page found mapped is passed
 * over, and so is one whose int32 at slots_off + 4 * (slot + i) (its amap slot) is
 * negative (no anon); with slots_off -1 there are no slots, and only mapped pages are
 * passed over.  Returns the index of the first page that is neither -- the one the
 * lookahead maps, before it asks about the next --, or n. */
static PyObject *Core_ptscan(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id, site, pte, *phys;
    Py_ssize_t off, pdir, va;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "ptscan(lock, code, phys_off, pdir, va, n, skip, slots_off, slot)");
        return NULL;
    }
    if (pt_args(c, args, "ptscan", &id, &site, &phys, &off, &pdir, &va))
        return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[5]), skip = PyLong_AsSsize_t(args[6]);
    Py_ssize_t soff = PyLong_AsSsize_t(args[7]), slot = PyLong_AsSsize_t(args[8]);
    if ((n == -1 || skip == -1 || soff == -1 || slot == -1) && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > 64 || va + n * 4096 - 1 > 0xffffffffL) {
        PyErr_SetString(PyExc_ValueError, "ptscan: 0 to 64 pages inside the address space");
        return NULL;
    }
    if (soff != -1 &&
        (soff < 0 || soff % 4 || slot < 0 || soff + 4 * (slot + n) > c->view.len)) {
        PyErr_SetString(PyExc_IndexError, "ptscan: slots out of the segment");
        return NULL;
    }
    /* slots_off -1: no slots, the first unmapped page is the answer (a file mapping's
     * lookahead, whose object layer looks at the pages without an anon) */
    const int32_t *slots = soff == -1 ? NULL : (const int32_t *)(c->base + soff) + slot;
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        if (i == skip)
            continue;
        if (pt_walk(c, id, site, phys, off, pdir, (uint32_t)(va + i * 4096), &pte))
            return NULL;
        if (!(pte & 1) && (slots == NULL || __atomic_load_n(&slots[i], __ATOMIC_RELAXED) >= 0))
            break;
    }
    return PyLong_FromSsize_t(i);
}

/* spinlockmgr(LK_SHARED): readers wait while a writer holds or wants it,
 * as NetBSD's lockmgr prefers writers. */
static PyObject *Core_rlock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 1, 1) || sched_point(c))
        return NULL;
    struct lock_word *lw = &c->locks[id];
    uint32_t site = caller_site(c);
    if (c->order_on)
        order_check(c, id, site);
    uint32_t s = __atomic_load_n(&lw->state, __ATOMIC_RELAXED);
    if (!(s & (RW_WRITER | RW_WANT)) &&
        __atomic_compare_exchange_n(&lw->state, &s, s + 1, 0, __ATOMIC_ACQUIRE,
                                    __ATOMIC_RELAXED)) {
        if (acquired(c, id, M_SHARED, site, 0, 0, 0))
            return NULL;
        Py_RETURN_NONE;
    }
    if ((s & RW_WRITER) && (s & RW_CPU_MASK) == (uint32_t)c->cpu + 1) {
        lock_error(id, 1, "spinlockmgr: shared request by the exclusive holder (lock %u)",
                   id);
        return NULL;
    }
    uint64_t t0 = c->stats_on ? stat_now(c) : 0;
    uint32_t holder_site = lw->holder_site;
    uint64_t spins = 0;
    uint32_t saved = c->me->state;
    uint32_t saved_spin = c->me->spinning_on;     /* an IPI handler may spin too */
    c->me->spinning_on = id + 1;
    c->me->state = CS_SPINNING;
    for (;;) {
        spins++;
        if (spin_turn(c, spins, lw, W_READ)) {
            /* when halted, spinning_on stays set: the report says what we waited for */
            if (!PyErr_ExceptionMatches(HaltedError))
                c->me->spinning_on = saved_spin;
            leave_spin(c, saved);
            return NULL;
        }
        s = __atomic_load_n(&lw->state, __ATOMIC_RELAXED);
        if (!(s & (RW_WRITER | RW_WANT)) &&
            __atomic_compare_exchange_n(&lw->state, &s, s + 1, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            break;
    }
    c->me->spinning_on = saved_spin;
    leave_spin(c, saved);
    if (acquired(c, id, M_SHARED, site, spins, t0, holder_site))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Core_runlock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 1, 0))
        return NULL;
    if (__atomic_load_n(&c->hdr->halt, __ATOMIC_RELAXED)) {
        /* halted: keep every lock (also through finally clauses that would release
         * them), so the report shows what the CPU held.  The panicking CPU is already
         * unwinding with its Panic: let that through; any other CPU stops here. */
        if (__atomic_load_n(&c->hdr->panic_cpu, __ATOMIC_RELAXED) == (uint32_t)c->cpu + 1)
            Py_RETURN_NONE;
        PyErr_SetString(HaltedError, "machine halted");
        return NULL;
    }
    struct held h;
    uint64_t t;
    if (pop_held(c, id, M_SHARED, &h, &t))
        return NULL;
    __atomic_fetch_sub(&c->locks[id].state, 1, __ATOMIC_SEQ_CST);
    lock_release_wake(&c->locks[id]);
    charge_hold(c, &h, t);
    if (sched_point(c))
        return NULL;
    Py_RETURN_NONE;
}

/* spinlockmgr(LK_EXCLUSIVE) */
static PyObject *Core_wlock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 1, 1) || sched_point(c))
        return NULL;
    struct lock_word *lw = &c->locks[id];
    uint32_t mine = RW_WRITER | ((uint32_t)c->cpu + 1);
    uint32_t site = caller_site(c);
    if (c->order_on)
        order_check(c, id, site);
    uint32_t s = 0;
    if (__atomic_compare_exchange_n(&lw->state, &s, mine, 0, __ATOMIC_ACQUIRE,
                                    __ATOMIC_RELAXED)) {
        if (acquired(c, id, M_EXCL, site, 0, 0, 0))
            return NULL;
        Py_RETURN_NONE;
    }
    if ((s & RW_WRITER) && (s & RW_CPU_MASK) == (uint32_t)c->cpu + 1) {
        lock_error(id, 1, "spinlockmgr: locking against myself (lock %u)", id);
        return NULL;
    }
    for (uint32_t i = 0; i < c->me->nheld; i++)
        if (c->me->held[i].lock == id) {
            lock_error(id, 1, "spinlockmgr: exclusive request by a shared holder "
                       "(lock %u): would wait for itself", id);
            return NULL;
        }
    uint64_t t0 = c->stats_on ? stat_now(c) : 0;
    uint32_t holder_site = lw->holder_site;
    uint64_t spins = 0;
    uint32_t saved = c->me->state;
    uint32_t saved_spin = c->me->spinning_on;     /* an IPI handler may spin too */
    c->me->spinning_on = id + 1;
    c->me->state = CS_SPINNING;
    for (;;) {
        spins++;
        if (spin_turn(c, spins, lw, W_WRITE)) {
            /* when halted, spinning_on stays set: the report says what we waited for */
            if (!PyErr_ExceptionMatches(HaltedError))
                c->me->spinning_on = saved_spin;
            leave_spin(c, saved);
            return NULL;
        }
        s = __atomic_load_n(&lw->state, __ATOMIC_RELAXED);
        if ((s & ~RW_WANT) == 0) {
            /* free (maybe wanted by us or another writer): take it, clearing WANT;
             * a writer that loses re-announces itself below */
            if (__atomic_compare_exchange_n(&lw->state, &s, mine, 0, __ATOMIC_ACQUIRE,
                                            __ATOMIC_RELAXED))
                break;
        } else if (!(s & RW_WANT)) {
            __atomic_fetch_or(&lw->state, RW_WANT, __ATOMIC_RELAXED);
        }
    }
    c->me->spinning_on = saved_spin;
    leave_spin(c, saved);
    if (acquired(c, id, M_EXCL, site, spins, t0, holder_site))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Core_trywlock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 1, 1) || sched_point(c))
        return NULL;
    uint32_t s = 0;
    if (__atomic_compare_exchange_n(&c->locks[id].state, &s, RW_WRITER | ((uint32_t)c->cpu + 1),
                                    0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        if (acquired(c, id, M_EXCL, caller_site(c), 0, 0, 0))
            return NULL;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *Core_wunlock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 1, 0))
        return NULL;
    if (__atomic_load_n(&c->hdr->halt, __ATOMIC_RELAXED)) {
        /* halted: keep every lock (also through finally clauses that would release
         * them), so the report shows what the CPU held.  The panicking CPU is already
         * unwinding with its Panic: let that through; any other CPU stops here. */
        if (__atomic_load_n(&c->hdr->panic_cpu, __ATOMIC_RELAXED) == (uint32_t)c->cpu + 1)
            Py_RETURN_NONE;
        PyErr_SetString(HaltedError, "machine halted");
        return NULL;
    }
    struct lock_word *lw = &c->locks[id];
    uint32_t s = __atomic_load_n(&lw->state, __ATOMIC_RELAXED);
    if (!(s & RW_WRITER) || (s & RW_CPU_MASK) != (uint32_t)c->cpu + 1) {
        lock_error(id, 0, "spinlockmgr: release of lock %u not held exclusively", id);
        return NULL;
    }
    struct held h;
    uint64_t t;
    if (pop_held(c, id, M_EXCL, &h, &t))
        return NULL;
    /* keep a waiting writer's WANT bit */
    __atomic_and_fetch(&lw->state, RW_WANT, __ATOMIC_SEQ_CST);
    lock_release_wake(lw);
    charge_hold(c, &h, t);
    if (sched_point(c))
        return NULL;
    Py_RETURN_NONE;
}

/* wake_lock(id): wake every CPU parked on lock id (an IPI for one of them is pending:
 * it must answer it, as a spinning CPU would). */
static PyObject *Core_wake_lock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_id(c, args, nargs, &id))
        return NULL;
    struct lock_word *lw = &c->locks[id];
    if (__atomic_load_n(&lw->sleepers, __ATOMIC_SEQ_CST)) {
        __atomic_fetch_add(&lw->wakeseq, 1, __ATOMIC_SEQ_CST);
        syscall(SYS_futex, &lw->wakeseq, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
    }
    Py_RETURN_NONE;
}

/* send_ipi(cpu, bits[, wake]): i386_send_ipi -- post the bits in the target's mailbox,
 * kick it out of its idle sleep, and off the lock futex it may be parked on (a waiting
 * CPU answers IPIs).  With wake false only the bits are posted: the sender answers for
 * a waiting or idle target itself (pmap_tlb_shootnow).  One C call: IPIs are on the
 * TLB-shootdown path of every unmap. */
static PyObject *Core_send_ipi(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_ipi(cpu, bits[, wake])");
        return NULL;
    }
    long cpu = PyLong_AsLong(args[0]);
    unsigned long long bits = PyLong_AsUnsignedLongLong(args[1]);
    int wake = nargs == 3 ? PyObject_IsTrue(args[2]) : 1;
    if (PyErr_Occurred())
        return NULL;
    if (cpu < 0 || cpu >= c->ncpu) {
        PyErr_Format(PyExc_IndexError, "cpu %ld out of range", cpu);
        return NULL;
    }
    struct cpu_area *t = (struct cpu_area *)(c->cpu_base + cpu * c->cpu_stride);
    __atomic_fetch_or(&t->ipi_pending, (uint64_t)bits, __ATOMIC_SEQ_CST);
    if (!wake)
        Py_RETURN_NONE;
    __atomic_fetch_add(&t->kick, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, &t->kick, FUTEX_WAKE, 1, NULL, NULL, 0);
    uint32_t lk = __atomic_load_n(&t->spinning_on, __ATOMIC_SEQ_CST);
    if (lk && lk - 1 < c->nlocks) {
        struct lock_word *lw = &c->locks[lk - 1];
        if (__atomic_load_n(&lw->sleepers, __ATOMIC_SEQ_CST)) {
            __atomic_fetch_add(&lw->wakeseq, 1, __ATOMIC_SEQ_CST);
            syscall(SYS_futex, &lw->wakeseq, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
        }
    }
    Py_RETURN_NONE;
}

/* Does this CPU hold lock id (in any mode)?  For "=> caller holds" checks. */
static PyObject *Core_held(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_id(c, args, nargs, &id))
        return NULL;
    for (uint32_t i = 0; i < c->me->nheld; i++)
        if (c->me->held[i].lock == id)
            Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

/* How many locks this CPU holds (the depth of its held stack). */
static PyObject *Core_nheld(Core *c, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLong(c->me->nheld);
}

/* ---------- words of the segment ---------- */

static int word_args(Core *c, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                     size_t width, char **p, long long *v)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments", want);
        return -1;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    if (off == -1 && PyErr_Occurred())
        return -1;
    if (off < 0 || off + (Py_ssize_t)width > c->view.len || off % (Py_ssize_t)width) {
        PyErr_Format(PyExc_IndexError, "offset %zd out of the segment or misaligned", off);
        return -1;
    }
    *p = c->base + off;
    for (Py_ssize_t i = 1; i < nargs; i++) {
        v[i - 1] = PyLong_AsLongLong(args[i]);
        if (v[i - 1] == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            v[i - 1] = (long long)PyLong_AsUnsignedLongLong(args[i]);
            if (PyErr_Occurred())
                return -1;
        }
    }
    return 0;
}

static PyObject *Core_cas32(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    char *p;
    long long v[2];
    if (word_args(c, args, nargs, 3, 4, &p, v))
        return NULL;
    uint32_t old = (uint32_t)v[0];     /* the MMU's locked cmpxchg on a PTE, too */
    return PyBool_FromLong(__atomic_compare_exchange_n((uint32_t *)p, &old, (uint32_t)v[1], 0,
                                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
}

static PyObject *Core_cas64(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    char *p;
    long long v[2];
    if (word_args(c, args, nargs, 3, 8, &p, v))
        return NULL;
    int64_t old = v[0];
    return PyBool_FromLong(__atomic_compare_exchange_n((int64_t *)p, &old, (int64_t)v[1], 0,
                                                       __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
}

static inline PyObject *box_i32(uint32_t x) { return PyLong_FromLong((int32_t)x); }
static inline PyObject *box_u32(uint32_t x) { return PyLong_FromUnsignedLong(x); }
static inline PyObject *box_i64(int64_t x) { return PyLong_FromLongLong(x); }

/* name(off, v) -> old value: one locked read-modify-write of a word of the segment.
 * xchg32 is how the pmap zaps a PTE and keeps the U/M bits the MMU may be setting at
 * the same moment; or32 sets them the way the MMU does. */
#define WORD_RMW(name, type, op, box)                                                  \
    static PyObject *Core_##name(Core *c, PyObject *const *args, Py_ssize_t nargs)     \
    {                                                                                  \
        char *p;                                                                       \
        long long v[1];                                                                \
        if (word_args(c, args, nargs, 2, sizeof(type), &p, v))                         \
            return NULL;                                                               \
        return box(op((type *)p, (type)v[0], __ATOMIC_SEQ_CST));                       \
    }

WORD_RMW(fadd32, uint32_t, __atomic_fetch_add, box_i32)
WORD_RMW(fadd64, int64_t, __atomic_fetch_add, box_i64)
WORD_RMW(or32, uint32_t, __atomic_fetch_or, box_u32)
WORD_RMW(or64, int64_t, __atomic_fetch_or, box_i64)
WORD_RMW(and64, int64_t, __atomic_fetch_and, box_i64)
WORD_RMW(xchg32, uint32_t, __atomic_exchange_n, box_u32)
WORD_RMW(xchg64, int64_t, __atomic_exchange_n, box_i64)

static PyObject *Core_load64(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    char *p;
    long long v[1];
    if (word_args(c, args, nargs, 1, 8, &p, v))
        return NULL;
    return PyLong_FromLongLong(__atomic_load_n((int64_t *)p, __ATOMIC_SEQ_CST));
}

/* ipi_pending() -> bits: this CPU's pending IPI bits, without taking them.  trap.memref
 * asks at every memory reference, so it is one call with no arguments (a numpy field
 * read of the CPU area cost ~1 us). */
static PyObject *Core_ipi_pending(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    (void)args;
    if (nargs != 0) {
        PyErr_SetString(PyExc_TypeError, "ipi_pending() takes no arguments");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&c->me->ipi_pending, __ATOMIC_ACQUIRE));
}

static PyObject *Core_store64(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    char *p;
    long long v[1];
    if (word_args(c, args, nargs, 2, 8, &p, v))
        return NULL;
    __atomic_store_n((int64_t *)p, (int64_t)v[0], __ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* futex_wait(off, expected, timeout_ns): sleep while the 32-bit word at off
 * equals expected.  Returns 0 woken, 1 timed out, 2 the word had changed. */
static PyObject *Core_futex_wait(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    char *p;
    long long v[2];
    if (word_args(c, args, nargs, 3, 4, &p, v))
        return NULL;
    struct timespec ts = {.tv_sec = v[1] / 1000000000ll, .tv_nsec = v[1] % 1000000000ll};
    long r;
    Py_BEGIN_ALLOW_THREADS
    r = syscall(SYS_futex, (uint32_t *)p, FUTEX_WAIT, (uint32_t)v[0], v[1] >= 0 ? &ts : NULL,
                NULL, 0);
    Py_END_ALLOW_THREADS
    if (r == 0)
        return PyLong_FromLong(0);
    if (errno == ETIMEDOUT)
        return PyLong_FromLong(1);
    if (errno == EAGAIN || errno == EINTR)
        return PyLong_FromLong(2);      /* changed, or a signal: look again */
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *Core_futex_wake(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    char *p;
    long long v[1];
    if (word_args(c, args, nargs, 2, 4, &p, v))
        return NULL;
    long r = syscall(SYS_futex, (uint32_t *)p, FUTEX_WAKE, (int)v[0], NULL, NULL, 0);
    if (r < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLong(r);
}

/* set_delay(klass, site, ns): every acquisition of a lock of class klass taken by
 * the function named site ("" = any) holds it ns longer (fault injection). */
static PyObject *Core_set_delay(Core *c, PyObject *args)
{
    unsigned int klass;
    const char *site;
    unsigned long long ns;
    if (!PyArg_ParseTuple(args, "IsK", &klass, &site, &ns))
        return NULL;
    if (klass >= MAXCLASS) {
        PyErr_SetString(PyExc_ValueError, "lock class out of range");
        return NULL;
    }
    c->delay_ns[klass] = ns;
    strncpy(c->delay_site[klass], site, SITE_NAME - 1);
    c->delay_site[klass][SITE_NAME - 1] = 0;
    c->ndelays = 0;
    for (int i = 0; i < MAXCLASS; i++)
        c->ndelays += c->delay_ns[i] != 0;
    Py_RETURN_NONE;
}

/* set_lock_order(ranks, serializers, findings_off, count_off, capacity[, guards]): turn
 * on lock-order checking.  ranks and serializers are bytes of native uint16, one per
 * lock class id (rank 0: not checked; serializer: class id + 1 whose exclusive
 * hold allows this class out of order, 0 none); guards, two native uint16 per class
 * id: held class id + 1 and guard class id + 1 (this class taken under the first
 * needs the second held; 0, 0 none); findings go to capacity records
 * of struct order_finding at findings_off, the two counters to count_off.
 * set_lock_order(None) turns checking off. */
static PyObject *Core_set_lock_order(Core *c, PyObject *args)
{
    Py_buffer ranks, sers, guards = {0};
    Py_ssize_t foff, coff;
    unsigned int cap;
    if (PyTuple_GET_SIZE(args) == 1 && PyTuple_GET_ITEM(args, 0) == Py_None) {
        c->order_on = 0;
        Py_RETURN_NONE;
    }
    if (!PyArg_ParseTuple(args, "y*y*nnI|y*", &ranks, &sers, &foff, &coff, &cap, &guards))
        return NULL;
    PyObject *r = NULL;
    Py_ssize_t n = ranks.len / 2;
    if (ranks.len % 2 || sers.len != ranks.len || n > MAXCLASS ||
        (guards.buf && guards.len != 2 * ranks.len)) {
        PyErr_SetString(PyExc_ValueError, "set_lock_order: one uint16 rank and serializer "
                        "(and two guard uint16s) per class, at most MAXCLASS classes");
        goto out;
    }
    if (foff < 0 || coff < 0 || coff % 8 || foff % 8 ||
        foff + (Py_ssize_t)cap * (Py_ssize_t)sizeof(struct order_finding) > c->view.len ||
        coff + 16 > c->view.len) {
        PyErr_SetString(PyExc_IndexError, "set_lock_order: findings out of the segment");
        goto out;
    }
    memset(c->order_rank, 0, sizeof c->order_rank);
    memset(c->order_serializer, 0, sizeof c->order_serializer);
    memcpy(c->order_rank, ranks.buf, (size_t)ranks.len);
    memcpy(c->order_serializer, sers.buf, (size_t)sers.len);
    memset(c->order_guard, 0, sizeof c->order_guard);
    if (guards.buf)
        memcpy(c->order_guard, guards.buf, (size_t)guards.len);
    c->findings = (struct order_finding *)(c->base + foff);
    c->findings_count = (uint64_t *)(c->base + coff);
    c->findings_cap = cap;
    c->order_on = 1;
    r = Py_None;
    Py_INCREF(r);
out:
    PyBuffer_Release(&ranks);
    PyBuffer_Release(&sers);
    if (guards.buf)
        PyBuffer_Release(&guards);
    return r;
}

/* An interrupt handler starts on this CPU: the locks held so far belong to the context
 * it interrupted, not to the handler, and are left out of its lock-order checks (as a
 * real handler runs on its own, at an spl that already excludes those locks' users).
 * Returns the previous base for intr_exit. */
static PyObject *Core_intr_enter(Core *c, PyObject *Py_UNUSED(ignored))
{
    uint32_t prev = c->order_base;
    c->order_base = c->me->nheld;
    return PyLong_FromUnsignedLong(prev);
}

static PyObject *Core_intr_exit(Core *c, PyObject *arg)
{
    unsigned long prev = PyLong_AsUnsignedLong(arg);
    if (prev == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    c->order_base = (uint32_t)prev;
    Py_RETURN_NONE;
}

static PyObject *Core_now(Core *c, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(core_now(c));
}

/* ---------- trace ring ---------- */

/* trace(msgid, call, *args): append one record to this CPU's ring.  Never
 * blocks and never overwrites unread records: a full ring drops the new
 * record and counts it.  Returns True if written. */
static PyObject *Core_trace(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || nargs > 2 + NARGS) {
        PyErr_SetString(PyExc_TypeError, "trace(msgid, call, up to 6 integer args)");
        return NULL;
    }
    struct record r;
    long msgid = PyLong_AsLong(args[0]);
    long call = PyLong_AsLong(args[1]);
    if ((msgid == -1 || call == -1) && PyErr_Occurred())
        return NULL;
    if (msgid < 0 || msgid > 0xffff || call < 0 || call > 0xffffffffL) {
        PyErr_SetString(PyExc_ValueError, "trace: msgid must fit 16 bits, call 32 bits");
        return NULL;
    }
    r.cpu = (uint16_t)c->cpu;
    r.msgid = (uint16_t)msgid;
    r.call = (uint32_t)call;
    for (Py_ssize_t i = 0; i < NARGS; i++) {
        if (i + 2 < nargs) {
            long long a = PyLong_AsLongLong(args[i + 2]);
            if (a == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                a = (long long)PyLong_AsUnsignedLongLongMask(args[i + 2]);
                if (PyErr_Occurred())
                    return NULL;
            }
            r.args[i] = a;
        } else {
            r.args[i] = 0;
        }
    }
    struct ring_hdr *h = c->ring;
    r.seq = h->seq++;
    r.time = core_now(c);
    uint64_t head = h->head;
    uint64_t tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
    while (head - tail >= h->capacity) {
        if (!c->lockstep || __atomic_load_n(&c->hdr->halt, __ATOMIC_RELAXED)) {
            __atomic_fetch_add(&h->dropped, 1, __ATOMIC_RELAXED);
            Py_RETURN_FALSE;
        }
        /* lockstep: a drop would depend on the drainer's speed; wait for room */
        sched_yield();
        tail = __atomic_load_n(&h->tail, __ATOMIC_ACQUIRE);
    }
    c->records[head & c->ring_mask] = r;
    __atomic_store_n(&h->head, head + 1, __ATOMIC_RELEASE);
    Py_RETURN_TRUE;
}

/* ---------- lockstep: the Python side's entry points ---------- */

static int ls_off(Core *c, PyObject *o, Py_ssize_t size, Py_ssize_t align, void **out)
{
    Py_ssize_t off = PyLong_AsSsize_t(o);
    if (off == -1 && PyErr_Occurred())
        return -1;
    if (off < 0 || off + size > c->view.len || off % align) {
        PyErr_Format(PyExc_IndexError, "ls_setup: offset %zd out of the segment or misaligned",
                     off);
        return -1;
    }
    *out = c->base + off;
    return 0;
}

/* ls_setup(go_off, state_off, prio_off, change_off, wait_off, cycle_off, strategy,
 *          vtick): scheduling points run the lockstep scheduler from now on. */
static PyObject *Core_ls_setup(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "ls_setup expects 8 arguments");
        return NULL;
    }
    void *go, *st, *prio, *chg, *wait, *cyc;
    Py_ssize_t n = c->ncpu;
    if (ls_off(c, args[0], 4 * n, 4, &go) || ls_off(c, args[1], 8 * LS_NSTATE, 8, &st) ||
        ls_off(c, args[2], 8 * n, 8, &prio) || ls_off(c, args[3], 8 * LS_NCHANGE, 8, &chg) ||
        ls_off(c, args[4], 8 * LS_WAITW * n, 8, &wait) || ls_off(c, args[5], 8 * n, 4, &cyc))
        return NULL;
    long strategy = PyLong_AsLong(args[6]);
    unsigned long long vtick = PyLong_AsUnsignedLongLong(args[7]);
    if (PyErr_Occurred())
        return NULL;
    if (strategy < LS_RANDOM || strategy > LS_PB || c->ncpu > 64) {
        PyErr_SetString(PyExc_ValueError, "ls_setup: unknown strategy, or more than 64 CPUs");
        return NULL;
    }
    c->ls_go = go;
    c->ls_st = st;
    c->ls_prio = prio;
    c->ls_change = chg;
    c->ls_wait = wait;
    c->ls_cycle = cyc;
    c->ls_strategy = (int)strategy;
    c->ls_vtick = vtick;
    c->ls_depth = c->ls_st[ST_DEPTH];
    if (c->ls_depth > LS_NCHANGE) {
        PyErr_SetString(PyExc_ValueError, "ls_setup: depth larger than the change points");
        return NULL;
    }
    memset(c->ls_extra, 0, sizeof c->ls_extra);
    c->ls_proxy = 1;
    c->ls_on = 1;
    c->lockstep = 1;
    Py_RETURN_NONE;
}

static int ls_ready(Core *c)
{
    if (!c->ls_on) {
        PyErr_SetString(PyExc_RuntimeError, "lockstep scheduler not set up (ls_setup)");
        return -1;
    }
    return 0;
}

/* ls_point(cost=vtick): a scheduling point that passes cost ns of virtual time */
static PyObject *Core_ls_point(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (ls_ready(c))
        return NULL;
    uint64_t cost = c->ls_vtick;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "ls_point([cost])");
        return NULL;
    }
    if (nargs == 1) {
        long long v = PyLong_AsLongLong(args[0]);
        if (v == -1 && PyErr_Occurred())
            return NULL;
        if (v < 0) {
            PyErr_SetString(PyExc_ValueError, "ls_point: negative cost");
            return NULL;
        }
        cost = (uint64_t)v;
    }
    if (ls_point(c, cost))
        return NULL;
    Py_RETURN_NONE;
}

/* ls_progress(): something useful happened (the livelock watch) */
static PyObject *Core_ls_progress(Core *c, PyObject *Py_UNUSED(ignored))
{
    if (ls_ready(c))
        return NULL;
    c->ls_st[ST_LASTPROG] = c->ls_st[ST_POINTS];
    if (c->ls_st[ST_STOPPING])        /* past the time limit: end the slice here */
        Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

static PyObject *Core_ls_wait_turn(Core *c, PyObject *Py_UNUSED(ignored))
{
    if (ls_ready(c) || ls_wait_turn(c))
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Core_ls_finish(Core *c, PyObject *Py_UNUSED(ignored))
{
    if (ls_ready(c))
        return NULL;
    if (c->ls_st[ST_STOPPING] && !c->ls_st[ST_END])
        c->ls_st[ST_END] = END_TIME_LIMIT;    /* the quiet point after the time limit */
    ls_finish(c);
    Py_RETURN_NONE;
}

/* ls_end(kind, why): record why the run ends (the first reason stays), halt, raise */
static PyObject *Core_ls_end(Core *c, PyObject *args)
{
    unsigned long long kind;
    const char *why;
    if (ls_ready(c) || !PyArg_ParseTuple(args, "Ks", &kind, &why))
        return NULL;
    ls_end(c, kind, why);
    return NULL;
}

static PyObject *Core_get_ls_proxy(Core *c, void *u) { return PyBool_FromLong(c->ls_proxy); }
static int Core_set_ls_proxy(Core *c, PyObject *v, void *u)
{
    int b = PyObject_IsTrue(v);
    if (b < 0)
        return -1;
    c->ls_proxy = b;
    return 0;
}

static PyObject *Core_get_ls_handoffs(Core *c, void *u)
{
    return PyLong_FromUnsignedLongLong(c->ls_handoffs);
}
static PyObject *Core_get_ls_proxied(Core *c, void *u)
{
    return PyLong_FromUnsignedLongLong(c->ls_proxied);
}

/* ---------- object ---------- */

static void Core_dealloc(Core *c)
{
    hmap_free(&c->slotmap);
    hmap_free(&c->pairmap);
    if (c->site_keys)
        for (uint32_t i = 0; i < c->site_cap; i++)
            if (c->site_keys[i])
                Py_DECREF((PyObject *)(uintptr_t)c->site_keys[i]);
    free(c->site_keys);
    free(c->site_vals);
    Py_CLEAR(c->ipi_handler);
    Py_CLEAR(c->sched_hook);
    if (c->view.obj)
        PyBuffer_Release(&c->view);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* Core(buffer, cpu, ncpu, nlocks, lock_off, cpu_off, cpu_stride, stats_off,
 *      stats_stride, nslots, npairs, sites_off, site_capacity, rings_off,
 *      ring_stride, ring_capacity) -- offsets in bytes; see layout.py. */
static int Core_init(Core *c, PyObject *args, PyObject *kw)
{
    Py_buffer view;
    int cpu, ncpu;
    unsigned long nlocks, nslots, npairs, site_cap;
    Py_ssize_t lock_off, cpu_off, cpu_stride, stats_off, stats_stride, sites_off;
    Py_ssize_t rings_off, ring_stride;
    unsigned long long ring_cap;
    if (!PyArg_ParseTuple(args, "w*iiknnnnnkknknnK", &view, &cpu, &ncpu, &nlocks, &lock_off,
                          &cpu_off, &cpu_stride, &stats_off, &stats_stride, &nslots, &npairs,
                          &sites_off, &site_cap, &rings_off, &ring_stride, &ring_cap))
        return -1;
    c->view = view;
    c->base = view.buf;
    if (cpu < 0 || cpu >= ncpu || nslots < 2 || (ring_cap & (ring_cap - 1)) ||
        rings_off + ncpu * ring_stride > view.len) {
        PyErr_SetString(PyExc_ValueError, "Core: layout does not fit the segment");
        return -1;
    }
    c->cpu = cpu;
    c->ncpu = ncpu;
    c->nlocks = (uint32_t)nlocks;
    c->hdr = (struct seg_hdr *)c->base;
    c->locks = (struct lock_word *)(c->base + lock_off);
    c->cpu_base = c->base + cpu_off;
    c->cpu_stride = cpu_stride;
    c->me = (struct cpu_area *)(c->cpu_base + cpu * cpu_stride);
    char *st = c->base + stats_off + cpu * stats_stride;
    c->slots = (struct stat_slot *)st;
    c->nslots = (uint32_t)nslots;
    c->overflow_slot = (uint32_t)nslots - 1;
    c->pairs = (struct pair_slot *)(st + nslots * sizeof(struct stat_slot));
    c->npairs = (uint32_t)npairs;
    c->sites = (struct site_table *)(c->base + sites_off);
    c->site_entries = (struct site_entry *)(c->base + sites_off + sizeof(struct site_table));
    c->ring = (struct ring_hdr *)(c->base + rings_off + cpu * ring_stride);
    c->records = (struct record *)((char *)c->ring + sizeof(struct ring_hdr));
    c->ring_mask = ring_cap - 1;
    c->stats_on = 1;
    c->spin_limit = 64;
    c->park_after = 256;          /* ~ a few microseconds of spinning, then sleep */
    c->park_ns = 1000000;         /* a park is re-checked at least every millisecond */
    c->site_cap = 16;
    while (c->site_cap < 4 * site_cap)
        c->site_cap <<= 1;
    c->site_keys = calloc(c->site_cap, sizeof(uint64_t));
    c->site_vals = calloc(c->site_cap, sizeof(uint32_t));
    if (!c->site_keys || !c->site_vals || hmap_init(&c->slotmap, (uint32_t)nslots) ||
        hmap_init(&c->pairmap, (uint32_t)npairs)) {
        PyErr_NoMemory();
        return -1;
    }
    /* the overflow slot absorbs acquisitions once the table is full */
    struct stat_slot *o = &c->slots[c->overflow_slot];
    if (o->lock != UINT32_MAX) {
        memset(o, 0, sizeof *o);
        o->lock = UINT32_MAX;
        o->wait_min = UINT64_MAX;
        o->hold_min = UINT64_MAX;
    }
    /* a CPU re-created on the same area (tests) re-learns its slots */
    for (uint64_t i = 0; i < c->me->nslots; i++) {
        struct stat_slot *s = &c->slots[i];
        uint64_t key = ((uint64_t)s->lock << 32) | ((uint64_t)s->site << 1) | s->mode;
        uint32_t pos;
        if (!hmap_get(&c->slotmap, key, &pos)) {
            c->slotmap.kv[pos] = key;
            c->slotmap.keys[pos] = (uint32_t)i + 1;
        }
    }
    for (uint64_t i = 0; i < c->me->npairs; i++) {
        struct pair_slot *p = &c->pairs[i];
        uint64_t key = ((uint64_t)p->klass << 48) ^ ((uint64_t)p->waiter << 32) ^
                       ((uint64_t)p->holder << 1) ^ p->mode;
        uint32_t pos;
        if (!hmap_get(&c->pairmap, key, &pos)) {
            c->pairmap.kv[pos] = key;
            c->pairmap.keys[pos] = (uint32_t)i + 1;
        }
    }
    return 0;
}

static PyObject *Core_get_stats_on(Core *c, void *u) { return PyBool_FromLong(c->stats_on); }
static int Core_set_stats_on(Core *c, PyObject *v, void *u)
{
    int b = PyObject_IsTrue(v);
    if (b < 0)
        return -1;
    c->stats_on = b;
    return 0;
}
static PyObject *Core_get_spin_limit(Core *c, void *u) { return PyLong_FromLong(c->spin_limit); }
static int Core_set_spin_limit(Core *c, PyObject *v, void *u)
{
    long n = PyLong_AsLong(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    c->spin_limit = (int)n;
    return 0;
}
static PyObject *Core_get_park_after(Core *c, void *u) { return PyLong_FromLong(c->park_after); }
static int Core_set_park_after(Core *c, PyObject *v, void *u)
{
    long n = PyLong_AsLong(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "park_after must be >= 0");
        return -1;
    }
    c->park_after = (int)n;
    return 0;
}
static PyObject *Core_get_parks(Core *c, void *u) { return PyLong_FromUnsignedLongLong(c->parks); }
static PyObject *get_obj(PyObject *o) { if (!o) Py_RETURN_NONE; Py_INCREF(o); return o; }
static int set_obj(PyObject **slot, PyObject *v)
{
    if (v == Py_None)
        v = NULL;
    if (v && !PyCallable_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "expected a callable or None");
        return -1;
    }
    Py_XINCREF(v);
    Py_XSETREF(*slot, v);
    return 0;
}
static PyObject *Core_get_ipi(Core *c, void *u) { return get_obj(c->ipi_handler); }
static int Core_set_ipi(Core *c, PyObject *v, void *u) { return set_obj(&c->ipi_handler, v); }
static PyObject *Core_get_hook(Core *c, void *u) { return get_obj(c->sched_hook); }
static int Core_set_hook(Core *c, PyObject *v, void *u) { return set_obj(&c->sched_hook, v); }
static PyObject *Core_get_cpu(Core *c, void *u) { return PyLong_FromLong(c->cpu); }
static PyObject *Core_get_lockstep(Core *c, void *u) { return PyBool_FromLong(c->lockstep); }
static int Core_set_lockstep(Core *c, PyObject *v, void *u)
{
    int b = PyObject_IsTrue(v);
    if (b < 0)
        return -1;
    c->lockstep = b;
    return 0;
}

static PyGetSetDef Core_getset[] = {
    {"stats_on", (getter)Core_get_stats_on, (setter)Core_set_stats_on,
     "record lock statistics (lockstat on/off)", NULL},
    {"park_after", (getter)Core_get_park_after, (setter)Core_set_park_after,
     "spin turns before a waiter parks on the lock's futex (0: spin only)", NULL},
    {"parks", (getter)Core_get_parks, NULL, "how often this CPU parked on a lock", NULL},
    {"spin_limit", (getter)Core_get_spin_limit, (setter)Core_set_spin_limit,
     "spin turns between sched_yield() calls (0: never yield)", NULL},
    {"ipi_handler", (getter)Core_get_ipi, (setter)Core_set_ipi,
     "called with no arguments while spinning when the IPI mailbox is non-zero", NULL},
    {"sched_hook", (getter)Core_get_hook, (setter)Core_set_hook,
     "called at every scheduling point (lock operations): the lockstep scheduler", NULL},
    {"cpu", (getter)Core_get_cpu, NULL, "this CPU's number", NULL},
    {"lockstep", (getter)Core_get_lockstep, (setter)Core_set_lockstep,
     "lockstep mode: now() is the virtual clock, spinning is a scheduling point", NULL},
    {"ls_proxy", (getter)Core_get_ls_proxy, (setter)Core_set_ls_proxy,
     "lockstep: take the turns of spinners whose lock is still held by proxy (default on; "
     "the schedule is the same either way)", NULL},
    {"ls_handoffs", (getter)Core_get_ls_handoffs, NULL,
     "lockstep: host hand-overs of the turn this CPU made", NULL},
    {"ls_proxied", (getter)Core_get_ls_proxied, NULL,
     "lockstep: spin turns this CPU took on behalf of waiting CPUs", NULL},
    {NULL},
};

#define FC(name, doc) {#name, (PyCFunction)(void (*)(void))Core_##name, METH_FASTCALL, doc}
static PyMethodDef Core_methods[] = {
    FC(lock, "lock(id): simple_lock -- spin until the lock is ours"),
    FC(trylock, "trylock(id) -> bool: simple_lock_try"),
    FC(unlock, "unlock(id): simple_unlock"),
    FC(ptread, "ptread(lock, code, phys_off, pdir, va) -> pte: pmap_extract's walk; an "
       "empty PDE unlocked, else lock (as from code), walk the page tables, unlock"),
    FC(ptscan, "ptscan(lock, code, phys_off, pdir, va, n, skip, slots_off, slot) -> i: "
       "ptread of the pages from va (but skip) up to the first unmapped one whose slot "
       "is >= 0 (slots_off -1: the first unmapped one)"),
    FC(rlock, "rlock(id): spinlockmgr(LK_SHARED)"),
    FC(runlock, "runlock(id): spinlockmgr(LK_RELEASE) of a shared hold"),
    FC(wlock, "wlock(id): spinlockmgr(LK_EXCLUSIVE)"),
    FC(trywlock, "trywlock(id) -> bool: spinlockmgr(LK_EXCLUSIVE|LK_NOWAIT)"),
    FC(wunlock, "wunlock(id): spinlockmgr(LK_RELEASE) of an exclusive hold"),
    FC(held, "held(id) -> bool: does this CPU hold the lock"),
    FC(wake_lock, "wake_lock(id): wake the CPUs parked on the lock (an IPI is for one)"),
    FC(send_ipi, "send_ipi(cpu, bits[, wake]): post IPI bits to cpu and wake it (idle or "
       "parked) unless wake is false"),
    FC(cas32, "cas32(off, old, new) -> bool"),
    FC(cas64, "cas64(off, old, new) -> bool"),
    FC(fadd32, "fadd32(off, v) -> old value"),
    FC(fadd64, "fadd64(off, v) -> old value"),
    FC(or64, "or64(off, bits) -> old value"),
    FC(xchg64, "xchg64(off, v) -> old value"),
    FC(or32, "or32(off, bits) -> old value"),
    FC(xchg32, "xchg32(off, v) -> old value"),
    FC(and64, "and64(off, bits) -> old value"),
    FC(load64, "load64(off) -> value"),
    FC(ipi_pending, "ipi_pending() -> bits: this CPU's pending IPI bits, not taken"),
    FC(store64, "store64(off, v)"),
    FC(futex_wait, "futex_wait(off, expected, timeout_ns) -> 0 woken, 1 timeout, 2 changed"),
    FC(futex_wake, "futex_wake(off, n) -> number woken"),
    FC(trace, "trace(msgid, call, *args) -> bool: append a record to this CPU's ring"),
    FC(ls_setup, "ls_setup(go_off, state_off, prio_off, change_off, wait_off, cycle_off, "
       "strategy, vtick): run the lockstep scheduler at every scheduling point"),
    FC(ls_point, "ls_point([cost]): a lockstep scheduling point passing cost ns (default vtick)"),
    {"ls_progress", (PyCFunction)Core_ls_progress, METH_NOARGS,
     "lockstep: the load made progress (livelock watch); True once past the time limit "
     "(the slice should end)"},
    {"ls_wait_turn", (PyCFunction)Core_ls_wait_turn, METH_NOARGS,
     "lockstep: wait until this CPU holds the turn (Halted if the machine halts)"},
    {"ls_finish", (PyCFunction)Core_ls_finish, METH_NOARGS,
     "lockstep: halt the machine and wake every CPU waiting for the turn"},
    {"ls_end", (PyCFunction)Core_ls_end, METH_VARARGS,
     "ls_end(kind, why): record why the run ends, halt the machine, raise Halted"},
    {"nheld", (PyCFunction)Core_nheld, METH_NOARGS, "number of locks this CPU holds"},
    {"intr_enter", (PyCFunction)Core_intr_enter, METH_NOARGS,
     "an interrupt handler starts: held locks so far are not its own (lock order); "
     "returns the previous base"},
    {"intr_exit", (PyCFunction)Core_intr_exit, METH_O,
     "the handler is done: restore the base intr_enter returned"},
    {"now", (PyCFunction)Core_now, METH_NOARGS, "nanoseconds since boot"},
    {"set_delay", (PyCFunction)Core_set_delay, METH_VARARGS,
     "set_delay(klass, site, ns): hold locks of a class longer when taken by site"},
    {"set_lock_order", (PyCFunction)Core_set_lock_order, METH_VARARGS,
     "set_lock_order(ranks, serializers, findings_off, count_off, capacity[, guards]): "
     "check the lock order of blocking acquisitions, recording findings (None: off)"},
    {NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "smp.machine._atomic.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One simulated CPU's view of the shared segment: atomic instructions, "
              "instrumented locks, futexes and its trace ring.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Core_init,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_methods = Core_methods,
    .tp_getset = Core_getset,
};

static PyObject *mod_monotonic_ns(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(mono_ns());
}

/* (tsc_boot, tsc_mult) for a segment's header: the counter now and ns per tick in
 * 32.32 fixed point, measured against CLOCK_MONOTONIC over `ns` nanoseconds; (0, 0)
 * where there is no counter (then lock statistics read CLOCK_MONOTONIC).  Whether the
 * host keeps the counter invariant is the caller's to decide (segment.stat_clock). */
static PyObject *mod_tsc_calibrate(PyObject *m, PyObject *arg)
{
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
#ifdef HAVE_TSC
    if (ns <= 0)
        ns = 1;
    uint64_t m0 = mono_ns(), t0 = __rdtsc(), m1, t1;
    do {
        m1 = mono_ns();
        t1 = __rdtsc();
    } while (m1 - m0 < (uint64_t)ns);
    if (t1 <= t0)
        return Py_BuildValue("(KK)", 0ULL, 0ULL);
    uint64_t mult = (uint64_t)((((unsigned __int128)(m1 - m0)) << 32) / (t1 - t0));
    return Py_BuildValue("(KK)", (unsigned long long)__rdtsc(), (unsigned long long)mult);
#else
    return Py_BuildValue("(KK)", 0ULL, 0ULL);
#endif
}

static PyMethodDef mod_methods[] = {
    {"monotonic_ns", mod_monotonic_ns, METH_NOARGS, "CLOCK_MONOTONIC in nanoseconds"},
    {"tsc_calibrate", mod_tsc_calibrate, METH_O,
     "tsc_calibrate(ns) -> (tsc_boot, tsc_mult): the lock statistics' clock"},
    {NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "_atomic",
    "The simulated CPU's atomic core: lock words, statistics, futexes, trace rings.", -1,
    mod_methods,
};

PyMODINIT_FUNC PyInit__atomic(void)
{
    if (PyType_Ready(&CoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CoreType);
    PyModule_AddObject(m, "Core", (PyObject *)&CoreType);
    HaltedError = PyErr_NewException("smp.machine._atomic.Halted", NULL, NULL);
    LockError = PyErr_NewException("smp.machine._atomic.LockError", NULL, NULL);
    PyModule_AddObject(m, "Halted", HaltedError);
    PyModule_AddObject(m, "LockError", LockError);
#define C(n, v) PyModule_AddIntConstant(m, n, (long)(v))
    C("LOCK_SIZE", sizeof(struct lock_word));
    C("HELD_SIZE", sizeof(struct held));
    C("CPU_SIZE", sizeof(struct cpu_area));
    C("SLOT_SIZE", sizeof(struct stat_slot));
    C("PAIR_SIZE", sizeof(struct pair_slot));
    C("SITE_SIZE", sizeof(struct site_entry));
    C("SITE_HDR_SIZE", sizeof(struct site_table));
    C("RING_HDR_SIZE", sizeof(struct ring_hdr));
    C("REC_SIZE", sizeof(struct record));
    C("HDR_SIZE", sizeof(struct seg_hdr));
    C("FINDING_SIZE", sizeof(struct order_finding));
    C("MAXHELD", MAXHELD);
    C("NHIST", NHIST);
    C("NARGS", NARGS);
    C("SITE_NAME", SITE_NAME);
    C("LF_RW", LF_RW);
    C("LF_RECURSE", LF_RECURSE);
    C("LF_CLASS", LF_CLASS);
    C("LOCK_CLASS_KEY", LOCK_CLASS_KEY);
    C("RW_WRITER", RW_WRITER);
    C("RW_WANT", RW_WANT);
    C("CS_OFFLINE", CS_OFFLINE);
    C("CS_IDLE", CS_IDLE);
    C("CS_RUNNING", CS_RUNNING);
    C("CS_SPINNING", CS_SPINNING);
    C("CS_HALTED", CS_HALTED);
    C("CS_PANIC", CS_PANIC);
    C("CS_DONE", CS_DONE);
    C("LS_RANDOM", LS_RANDOM);
    C("LS_PCT", LS_PCT);
    C("LS_PB", LS_PB);
    C("LS_NSTATE", LS_NSTATE);
    C("LS_NCHANGE", LS_NCHANGE);
    C("LS_WAITW", LS_WAITW);
    C("LS_PB_STALL", LS_PB_STALL);
    C("ST_RNG", ST_RNG);
    C("ST_POINTS", ST_POINTS);
    C("ST_SWITCHES", ST_SWITCHES);
    C("ST_LASTPROG", ST_LASTPROG);
    C("ST_LIMIT", ST_LIMIT);
    C("ST_DEPTHLEFT", ST_DEPTHLEFT);
    C("ST_BOUND", ST_BOUND);
    C("ST_END", ST_END);
    C("ST_NCYCLE", ST_NCYCLE);
    C("ST_DEPTH", ST_DEPTH);
    C("ST_PIN", ST_PIN);
    C("ST_HANDOFFS", ST_HANDOFFS);
    C("ST_TURN_AT", ST_TURN_AT);
    C("ST_STOPPING", ST_STOPPING);
    C("LS_PB_SLICE", LS_PB_SLICE);
#undef C
    return m;
}
