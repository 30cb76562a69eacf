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

struct lock_word {            /* 32 bytes, one per lock in the lock table */
    uint32_t state;           /* simple: 0 free / holder cpu+1; rw: see RW_* */
    uint32_t klass;           /* lock class id (names kept by Python) */
    uint32_t flags;           /* LF_* */
    uint32_t last_cpu;        /* cpu+1 of the most recent acquirer (bounces) */
    uint32_t holder_site;     /* site id of the most recent acquirer */
    uint32_t recurse;         /* recursion depth beyond the first (LF_RECURSE) */
    uint32_t pad[2];
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
    int lockstep;             /* virtual clock, scheduling points while spinning */
    PyObject *ipi_handler;
    PyObject *sched_hook;
    /* private caches */
    hmap slotmap;                 /* (lock, site, mode) -> slot */
    hmap pairmap;                 /* (klass, waiter, holder, mode) -> pair */
    uint64_t *site_keys;          /* code address -> site id (open addressing) */
    uint32_t *site_vals;
    uint32_t site_cap;
    uint32_t site_used;
    uint32_t overflow_slot;
    int ndelays;                  /* fault injection: extra hold time per class/site */
    uint64_t delay_ns[MAXCLASS];
    char delay_site[MAXCLASS][SITE_NAME];       /* index of the per-CPU overflow slot */
    int order_on;                 /* lock-order checking (set_lock_order) */
    uint16_t order_rank[MAXCLASS];          /* 0: class not ranked, not checked */
    uint16_t order_serializer[MAXCLASS];    /* class+1 whose exclusive hold exempts */
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

/* The caller's site: the code object of the Python frame that called us.
 * The private cache keeps a reference to every code object it holds, so an
 * address in it can never be reused by another function; once the cache is
 * half full, further functions take the (slow, correct) registry path. */
static uint32_t caller_site(Core *c)
{
    PyFrameObject *f = PyEval_GetFrame();
    if (f == NULL)
        return 0;
    PyCodeObject *co = PyFrame_GetCode(f);
    uint64_t key = (uint64_t)(uintptr_t)co;
    uint32_t mask = c->site_cap - 1;
    uint32_t i = (uint32_t)mix64(key) & mask;
    for (;;) {
        if (c->site_keys[i] == key) {
            Py_DECREF(co);
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
        c->site_keys[i] = key;          /* the reference from PyFrame_GetCode is kept */
        c->site_vals[i] = id;
        c->site_used++;
    } else {
        Py_DECREF(co);
    }
    return id;
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

static int spin_turn(Core *c, uint64_t spins)
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
        return sched_point(c);
    }
    if (c->spin_limit > 0 && spins % (uint64_t)c->spin_limit == 0) {
        sched_yield();
        if (PyErr_CheckSignals())
            return -1;
    }
    else
        cpu_relax();
    return 0;
}

static inline int sched_point(Core *c)
{
    if (c->sched_hook == NULL)
        return 0;
    PyObject *r = PyObject_CallNoArgs(c->sched_hook);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
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
    if (c->stats_on) {
        slot = stat_slot_for(c, id, site, mode);
        struct stat_slot *s = &c->slots[slot];
        int bounce = prev != 0 && prev != mine;
        s->acq++;
        s->bounces += bounce;
        t = core_now(c);
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
    *t = (c->stats_on && out->slot != UINT32_MAX) ? core_now(c) : 0;
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

/* Lock-order check of a blocking acquisition of lock id from site (see the top of
 * the file).  Of the held locks that are out of order, the highest-ranked one is
 * recorded: one finding per (held class, wanted class, sites), however often. */
static void order_check(Core *c, uint32_t id, uint32_t site)
{
    uint32_t wk = c->locks[id].klass;
    uint32_t wr = wk < MAXCLASS ? c->order_rank[wk] : 0;
    if (!wr)
        return;
    struct cpu_area *me = c->me;
    uint32_t ser = c->order_serializer[wk];
    int worst = -1;
    uint32_t worst_rank = 0;
    for (uint32_t i = 0; i < me->nheld; i++) {
        struct held *h = &me->held[i];
        if (h->lock == id)
            return;             /* recursion, or locking against myself: not an order */
        if (i < c->order_base)
            continue;           /* held by the context an interrupt handler interrupted */
        uint32_t hk = c->locks[h->lock].klass;
        uint32_t hr = hk < MAXCLASS ? c->order_rank[hk] : 0;
        if (!hr || hr < wr || (hk == wk && h->lock < id))
            continue;           /* unranked, in order, or instances in ascending order */
        if (hr >= worst_rank) {
            worst = (int)i;
            worst_rank = hr;
        }
    }
    if (worst < 0)
        return;
    if (ser)                    /* e.g. pvh -> pmap while pmap_main_lock is held exclusively */
        for (uint32_t i = 0; i < me->nheld; i++)
            if (me->held[i].mode == M_EXCL && c->locks[me->held[i].lock].klass == ser - 1)
                return;
    struct held *h = &me->held[worst];
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

/* simple_lock / kernel_lock: exclusive spin acquisition */
static PyObject *Core_lock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 0, 1) || sched_point(c))
        return NULL;
    struct lock_word *lw = &c->locks[id];
    uint32_t mine = (uint32_t)c->cpu + 1;
    uint32_t zero = 0;
    uint32_t site = caller_site(c);
    if (c->order_on)
        order_check(c, id, site);
    if (__atomic_compare_exchange_n(&lw->state, &zero, mine, 0, __ATOMIC_ACQUIRE,
                                    __ATOMIC_RELAXED)) {
        if (acquired(c, id, M_EXCL, site, 0, 0, 0))
            return NULL;
        Py_RETURN_NONE;
    }
    if (zero == mine) {
        if (lw->flags & LF_RECURSE) {
            /* counted as an acquisition; hold time belongs to the outermost hold */
            lw->recurse++;
            if (c->stats_on)
                c->slots[stat_slot_for(c, id, site, M_EXCL)].acq++;
            Py_RETURN_NONE;
        }
        lock_error(id, 1, "simple_lock: locking against myself (lock %u)", id);
        return NULL;
    }
    uint64_t t0 = c->stats_on ? core_now(c) : 0;
    uint32_t holder_site = lw->holder_site;
    uint64_t spins = 0;
    uint32_t saved_spin = c->me->spinning_on;     /* an IPI handler may spin too */
    __atomic_store_n(&c->me->spinning_on, id + 1, __ATOMIC_RELAXED);
    uint32_t saved = c->me->state;
    c->me->state = CS_SPINNING;
    for (;;) {
        spins++;
        if (spin_turn(c, spins)) {
            /* when halted, spinning_on stays set: the report says what we waited for */
            if (!PyErr_ExceptionMatches(HaltedError))
                c->me->spinning_on = saved_spin;
            c->me->state = saved;
            return NULL;
        }
        if (__atomic_load_n(&lw->state, __ATOMIC_RELAXED) == 0) {
            zero = 0;
            if (__atomic_compare_exchange_n(&lw->state, &zero, mine, 0, __ATOMIC_ACQUIRE,
                                            __ATOMIC_RELAXED))
                break;
        }
    }
    c->me->spinning_on = saved_spin;
    c->me->state = saved;
    if (acquired(c, id, M_EXCL, site, spins, t0, holder_site))
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

static PyObject *Core_unlock(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    uint32_t id;
    if (check_lock(c, args, nargs, &id, 0, 0))
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
    uint32_t mine = (uint32_t)c->cpu + 1;
    if (__atomic_load_n(&lw->state, __ATOMIC_RELAXED) != mine) {
        lock_error(id, 0, "simple_unlock: lock %u not held by cpu%d", id, c->cpu);
        return NULL;
    }
    if (lw->recurse) {
        lw->recurse--;
        Py_RETURN_NONE;
    }
    struct held h;
    uint64_t t;
    if (pop_held(c, id, M_EXCL, &h, &t))
        return NULL;
    __atomic_store_n(&lw->state, 0, __ATOMIC_RELEASE);
    charge_hold(c, &h, t);
    if (sched_point(c))
        return NULL;
    Py_RETURN_NONE;
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
    uint64_t t0 = c->stats_on ? core_now(c) : 0;
    uint32_t holder_site = lw->holder_site;
    uint64_t spins = 0;
    uint32_t saved = c->me->state;
    uint32_t saved_spin = c->me->spinning_on;     /* an IPI handler may spin too */
    c->me->spinning_on = id + 1;
    c->me->state = CS_SPINNING;
    for (;;) {
        spins++;
        if (spin_turn(c, spins)) {
            /* when halted, spinning_on stays set: the report says what we waited for */
            if (!PyErr_ExceptionMatches(HaltedError))
                c->me->spinning_on = saved_spin;
            c->me->state = saved;
            return NULL;
        }
        s = __atomic_load_n(&lw->state, __ATOMIC_RELAXED);
        if (!(s & (RW_WRITER | RW_WANT)) &&
            __atomic_compare_exchange_n(&lw->state, &s, s + 1, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED))
            break;
    }
    c->me->spinning_on = saved_spin;
    c->me->state = saved;
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
    __atomic_fetch_sub(&c->locks[id].state, 1, __ATOMIC_RELEASE);
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
    uint64_t t0 = c->stats_on ? core_now(c) : 0;
    uint32_t holder_site = lw->holder_site;
    uint64_t spins = 0;
    uint32_t saved = c->me->state;
    uint32_t saved_spin = c->me->spinning_on;     /* an IPI handler may spin too */
    c->me->spinning_on = id + 1;
    c->me->state = CS_SPINNING;
    for (;;) {
        spins++;
        if (spin_turn(c, spins)) {
            /* when halted, spinning_on stays set: the report says what we waited for */
            if (!PyErr_ExceptionMatches(HaltedError))
                c->me->spinning_on = saved_spin;
            c->me->state = saved;
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
    c->me->state = saved;
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
    __atomic_and_fetch(&lw->state, RW_WANT, __ATOMIC_RELEASE);
    charge_hold(c, &h, t);
    if (sched_point(c))
        return NULL;
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

/* set_lock_order(ranks, serializers, findings_off, count_off, capacity): turn on
 * lock-order checking.  ranks and serializers are bytes of native uint16, one per
 * lock class id (rank 0: not checked; serializer: class id + 1 whose exclusive
 * hold allows this class out of order, 0 none); findings go to capacity records
 * of struct order_finding at findings_off, the two counters to count_off.
 * set_lock_order(None) turns checking off. */
static PyObject *Core_set_lock_order(Core *c, PyObject *args)
{
    Py_buffer ranks, sers;
    Py_ssize_t foff, coff;
    unsigned int cap;
    if (PyTuple_GET_SIZE(args) == 1 && PyTuple_GET_ITEM(args, 0) == Py_None) {
        c->order_on = 0;
        Py_RETURN_NONE;
    }
    if (!PyArg_ParseTuple(args, "y*y*nnI", &ranks, &sers, &foff, &coff, &cap))
        return NULL;
    PyObject *r = NULL;
    Py_ssize_t n = ranks.len / 2;
    if (ranks.len % 2 || sers.len != ranks.len || n > MAXCLASS) {
        PyErr_SetString(PyExc_ValueError, "set_lock_order: one uint16 rank and serializer "
                        "per class, at most MAXCLASS classes");
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
    c->findings = (struct order_finding *)(c->base + foff);
    c->findings_count = (uint64_t *)(c->base + coff);
    c->findings_cap = cap;
    c->order_on = 1;
    r = Py_None;
    Py_INCREF(r);
out:
    PyBuffer_Release(&ranks);
    PyBuffer_Release(&sers);
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
    {"spin_limit", (getter)Core_get_spin_limit, (setter)Core_set_spin_limit,
     "spin turns between sched_yield() calls (0: never yield)", NULL},
    {"ipi_handler", (getter)Core_get_ipi, (setter)Core_set_ipi,
     "called with no arguments while spinning when the IPI mailbox is non-zero", NULL},
    {"sched_hook", (getter)Core_get_hook, (setter)Core_set_hook,
     "called at every scheduling point (lock operations): the lockstep scheduler", NULL},
    {"cpu", (getter)Core_get_cpu, NULL, "this CPU's number", NULL},
    {"lockstep", (getter)Core_get_lockstep, (setter)Core_set_lockstep,
     "lockstep mode: now() is the virtual clock, spinning is a scheduling point", NULL},
    {NULL},
};

#define FC(name, doc) {#name, (PyCFunction)(void (*)(void))Core_##name, METH_FASTCALL, doc}
static PyMethodDef Core_methods[] = {
    FC(lock, "lock(id): simple_lock -- spin until the lock is ours"),
    FC(trylock, "trylock(id) -> bool: simple_lock_try"),
    FC(unlock, "unlock(id): simple_unlock"),
    FC(rlock, "rlock(id): spinlockmgr(LK_SHARED)"),
    FC(runlock, "runlock(id): spinlockmgr(LK_RELEASE) of a shared hold"),
    FC(wlock, "wlock(id): spinlockmgr(LK_EXCLUSIVE)"),
    FC(trywlock, "trywlock(id) -> bool: spinlockmgr(LK_EXCLUSIVE|LK_NOWAIT)"),
    FC(wunlock, "wunlock(id): spinlockmgr(LK_RELEASE) of an exclusive hold"),
    FC(held, "held(id) -> bool: does this CPU hold the lock"),
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
    FC(store64, "store64(off, v)"),
    FC(futex_wait, "futex_wait(off, expected, timeout_ns) -> 0 woken, 1 timeout, 2 changed"),
    FC(futex_wake, "futex_wake(off, n) -> number woken"),
    FC(trace, "trace(msgid, call, *args) -> bool: append a record to this CPU's ring"),
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
     "set_lock_order(ranks, serializers, findings_off, count_off, capacity): check the "
     "lock order of blocking acquisitions, recording findings (None: off)"},
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

static PyMethodDef mod_methods[] = {
    {"monotonic_ns", mod_monotonic_ns, METH_NOARGS, "CLOCK_MONOTONIC in nanoseconds"},
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
#undef C
    return m;
}
