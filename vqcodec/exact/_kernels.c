/* Exact inference on the CPU, compiled (fused.py): the elementwise work between the integer products
   of a prior's layers and of a VQ-VAE convolution over whole maps, and a whole wavefront step (or an
   encoder's band of rows) in one call, its int8 products included (step()).

   Execution only, not normative: each function computes exactly what a chain of torch calls of
   quantise.py, arithmetic.py, attention.py and vqvae.py computes (exact.md §3.2, §5 to §7, §10), on
   integers held in doubles (every value and every intermediate an integer, or an integer times
   2**-t_c, below 2**53: exact whatever the compiler contracts or vectorises) and int32 sums, in one pass
   instead of one pass and one call per operation. Outside step(), the products stay torch._int_mm's.
   Pointers and sizes come from the caller, which owns the tensors and checks their shapes: this
   module trusts them. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ACT_MAX 1048575.0 /* arithmetic.ACT_MAX, checked by fused.py on import */
#define KERNELS_VERSION 11 /* fused.KERNELS_VERSION: a build older than the Python code is not used */

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__AVX2__)
/* Every loop in two versions, chosen when the module loads: AVX2 (packed rounding, 4 doubles at a
   time) where the CPU has it, else x86-64's baseline. */
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

static inline double clamp_act(double v) {
    v = v < -ACT_MAX ? -ACT_MAX : v;
    return v > ACT_MAX ? ACT_MAX : v;
}

/* Work split by rows (or values) over up to `threads` threads where it is large (a VQ-VAE map, a
   step's frequency tables), run by the pool's workers below. */
typedef void (*Part)(void *context, Py_ssize_t start, Py_ssize_t stop);

#define SPLIT_MIN 65536 /* values of work below which one thread does it all */
#define WORKERS_MOST 15

#ifndef _WIN32
#include <pthread.h>

/* Worker threads, started when a job first needs them, then waiting on a condition variable between
   jobs: starting a thread per call cost about 90 us here, more than a part of a small map takes. A
   job is run(context, part, parts) for part 0 .. parts - 1, part 0 in the calling thread. */
typedef void (*PoolRun)(void *context, int part, int parts);

static pthread_mutex_t pool_in_use = PTHREAD_MUTEX_INITIALIZER; /* one job at a time in the pool */

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int started;                     /* workers running */
    unsigned long generation;        /* jobs handed out */
    unsigned long created;           /* the generation when the last workers were started */
    int parts;                       /* of the current job */
    unsigned long finished;          /* its parts done, but the caller's */
    PoolRun run;
    void *context;
    pthread_cond_t turn;             /* the barrier of sync_parts: */
    int waiting;
    unsigned long round;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, NULL, NULL,
          PTHREAD_COND_INITIALIZER, 0, 0};

/* Before blocking on a condition variable, a thread spins up to SPIN_NS for the value it waits on to
   change: a thread woken from sleep started its part about 60 us late here (a virtual machine's idle
   core), longer than a step's part of a small wavefront takes. */
#define SPIN_NS 100000

typedef struct {
    struct timespec start;
    int pauses;
} Spin;

/* Pause once; whether the spin that `spin` counts may go on (start it zeroed). */
static int spinning(Spin *spin) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (spin->pauses++ % 64) return 1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (spin->pauses == 1) spin->start = now;
    return (now.tv_sec - spin->start.tv_sec) * 1000000000L + (now.tv_nsec - spin->start.tv_nsec) < SPIN_NS;
}

static void spin_while_equal(const unsigned long *value, unsigned long old) {
    for (Spin spin = {0}; __atomic_load_n(value, __ATOMIC_ACQUIRE) == old && spinning(&spin);) continue;
}

/* Wait until every part of the job has come here. */
static void sync_parts(void) {
    pthread_mutex_lock(&pool.lock);
    const unsigned long round = pool.round;
    if (++pool.waiting == pool.parts) {
        pool.waiting = 0;
        __atomic_store_n(&pool.round, round + 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&pool.turn);
        pthread_mutex_unlock(&pool.lock);
        return;
    }
    pthread_mutex_unlock(&pool.lock);
    spin_while_equal(&pool.round, round);
    pthread_mutex_lock(&pool.lock);
    while (pool.round == round) pthread_cond_wait(&pool.turn, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
}

static void *worker(void *arg) {
    const int part = (int)(intptr_t)arg; /* 1 .. WORKERS_MOST: part 0 is the caller's */
    pthread_mutex_lock(&pool.lock);
    unsigned long seen = pool.created; /* the jobs before this thread's first */
    for (;;) {
        if (pool.generation == seen) {
            pthread_mutex_unlock(&pool.lock);
            spin_while_equal(&pool.generation, seen);
            pthread_mutex_lock(&pool.lock);
        }
        while (pool.generation == seen) pthread_cond_wait(&pool.wake, &pool.lock);
        seen = pool.generation;
        if (part >= pool.parts) continue; /* a job of fewer parts */
        const PoolRun run = pool.run;
        void *context = pool.context;
        const int parts = pool.parts;
        pthread_mutex_unlock(&pool.lock);
        run(context, part, parts);
        pthread_mutex_lock(&pool.lock);
        if (__atomic_add_fetch(&pool.finished, 1, __ATOMIC_RELEASE) == (unsigned long)parts - 1)
            pthread_cond_signal(&pool.done);
    }
    return NULL;
}

/* After fork() only the calling thread exists: the child starts its own workers. */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool_in_use, NULL);
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pthread_cond_init(&pool.turn, NULL);
    pool.started = 0;
}

/* Workers for a job of `parts` parts (the caller holds pool_in_use): returns the parts it may have,
   fewer where threads could not start. */
static int pool_start(int parts) {
    parts = parts > WORKERS_MOST + 1 ? WORKERS_MOST + 1 : parts;
    pthread_mutex_lock(&pool.lock);
    pool.created = pool.generation;
    while (pool.started < parts - 1) {
        pthread_t id;
        if (pthread_create(&id, NULL, worker, (void *)(intptr_t)(pool.started + 1)) != 0) break;
        pthread_detach(id);
        pool.started++;
    }
    parts = pool.started + 1 < parts ? pool.started + 1 : parts;
    pthread_mutex_unlock(&pool.lock);
    return parts;
}

/* Run a job of `parts` parts (at most pool_start's), part 0 here, and wait for all of them. */
static void pool_run(PoolRun run, void *context, int parts) {
    const unsigned long others = (unsigned long)parts - 1;
    pthread_mutex_lock(&pool.lock);
    pool.run = run;
    pool.context = context;
    pool.parts = parts;
    pool.waiting = 0;
    __atomic_store_n(&pool.finished, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pool.generation, pool.generation + 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run(context, 0, parts);
    for (Spin spin = {0}; __atomic_load_n(&pool.finished, __ATOMIC_ACQUIRE) < others && spinning(&spin);) continue;
    pthread_mutex_lock(&pool.lock);
    while (pool.finished < others) pthread_cond_wait(&pool.done, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
}

typedef struct {
    Part part;
    void *context;
    Py_ssize_t n;
} Split;

static void split_part(void *context, int part, int parts) {
    const Split *s = context;
    s->part(s->context, s->n * part / parts, s->n * (part + 1) / parts);
}
#endif

/* part(context, 0, n), in parts on the pool where the work is large and the pool free (another
   Python thread's job may hold it: then here, in one part). */
static void split(Part part, void *context, Py_ssize_t n, Py_ssize_t work, int threads) {
#ifndef _WIN32
    if (threads > 1 && work >= SPLIT_MIN && n >= threads && pthread_mutex_trylock(&pool_in_use) == 0) {
        Split s = {part, context, n};
        pool_run(split_part, &s, pool_start(threads));
        pthread_mutex_unlock(&pool_in_use);
        return;
    }
#endif
    part(context, 0, n);
}

/* A layer's rounding of one row of its int32 sums (Linear.finish): out = clamp(floor(acc M 2**-t +
   low 2**-t) + high), from scale = M 2**-t, low 2**-t and high per channel; the sums come in one part,
   or two (``more``, or NULL: a product per kernel row), every kernel's acc and more arguments. */
typedef struct {
    const double *scale, *low, *high;
} Rounding;

HOT static void finish_row(const Rounding *r, const int32_t *restrict acc, const int32_t *restrict more,
                           Py_ssize_t count, double *restrict out) {
    const double *restrict scale = r->scale, *restrict low = r->low, *restrict high = r->high;
    if (more) /* acc + more: two parts of sums below 2**31 (exact.md §8) */
        for (Py_ssize_t j = 0; j < count; j++)
            out[j] = clamp_act(floor((double)(acc[j] + more[j]) * scale[j] + low[j]) + high[j]);
    else
        for (Py_ssize_t j = 0; j < count; j++) out[j] = clamp_act(floor((double)acc[j] * scale[j] + low[j]) + high[j]);
}

/* A layer's 8-bit input of an ELU's output (Linear.quantise_elu): table[clamp(x, -size, top) + size],
   from the table's entries as int32 (gathered 8 at a time with AVX2). */
typedef struct {
    const int32_t *table;
    double size, top;
} EluInputs;

HOT static void elu_row(const EluInputs *e, const double *restrict x, Py_ssize_t count, int8_t *restrict out) {
    const double low = -e->size, top = e->top, size = e->size;
    const int32_t *restrict table = e->table;
    for (Py_ssize_t j = 0; j < count; j++) {
        double v = x[j] < low ? low : x[j];
        out[j] = (int8_t)table[(int32_t)((v > top ? top : v) + size)];
    }
}

static Rounding rounding(unsigned long long scale, unsigned long long low, unsigned long long high) {
    Rounding r = {(const double *)(uintptr_t)scale, (const double *)(uintptr_t)low, (const double *)(uintptr_t)high};
    return r;
}

/* Rows i of dst lie at dst + at[i], or where at is NULL at dst + i stride (in values): elu_rows,
   finish_elu_rows, finish_rows, attend_rows. */
static inline Py_ssize_t row_at(const Py_ssize_t *at, Py_ssize_t i, Py_ssize_t stride) { return at ? at[i] : i * stride; }

static void elu_rows(const EluInputs *e, const double *x, Py_ssize_t n, Py_ssize_t c, int8_t *dst, Py_ssize_t stride,
                     const Py_ssize_t *at, const double *mask) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (mask && mask[i] == 0.0)
            memset(dst + row_at(at, i, stride), 0, (size_t)c);
        else
            elu_row(e, x + i * c, c, dst + row_at(at, i, stride));
    }
}

/* elu_store(x, n, c, table, size, top, dst, row_stride, mask): int8 dst[i row_stride + j] = the 8-bit
   input of elu(x[i, j]) (x float64 [n, c]; table int32), 0 where mask (float64 [n], or 0: none) is 0. */
static PyObject *elu_store(PyObject *self, PyObject *args) {
    unsigned long long x_p, table_p, dst_p, mask_p;
    Py_ssize_t n, c, stride;
    double size, top;
    if (!PyArg_ParseTuple(args, "KnnKddKnK", &x_p, &n, &c, &table_p, &size, &top, &dst_p, &stride, &mask_p))
        return NULL;
    EluInputs e = {(const int32_t *)(uintptr_t)table_p, size, top};
    elu_rows(&e, (const double *)(uintptr_t)x_p, n, c, (int8_t *)(uintptr_t)dst_p, stride, NULL,
             (const double *)(uintptr_t)mask_p);
    Py_RETURN_NONE;
}

/* The rows of finish_elu_store; scratch h [c]. */
static void finish_elu_rows(const Rounding *r, const int32_t *acc, const int32_t *more, Py_ssize_t n, Py_ssize_t c,
                            const EluInputs *e, int8_t *dst, Py_ssize_t stride, const Py_ssize_t *at,
                            const double *mask, double *h) {
    for (Py_ssize_t i = 0; i < n; i++) {
        if (mask && mask[i] == 0.0) {
            memset(dst + row_at(at, i, stride), 0, (size_t)c);
            continue;
        }
        finish_row(r, acc + i * c, more ? more + i * c : NULL, c, h);
        elu_row(e, h, c, dst + row_at(at, i, stride));
    }
}

/* finish_elu_store(acc, more, n, c, scale, low, high, table, size, top, dst, row_stride, mask): a layer's
   outputs from its int32 sums acc [n, c], stored as the next layer's 8-bit inputs of their ELU. */
static PyObject *finish_elu_store(PyObject *self, PyObject *args) {
    unsigned long long acc_p, more_p, scale_p, low_p, high_p, table_p, dst_p, mask_p;
    Py_ssize_t n, c, stride;
    double size, top;
    if (!PyArg_ParseTuple(args, "KKnnKKKKddKnK", &acc_p, &more_p, &n, &c, &scale_p, &low_p, &high_p, &table_p, &size,
                          &top, &dst_p, &stride, &mask_p))
        return NULL;
    Rounding r = rounding(scale_p, low_p, high_p);
    EluInputs e = {(const int32_t *)(uintptr_t)table_p, size, top};
    double *h = PyMem_Malloc((size_t)c * sizeof(double));
    if (!h) return PyErr_NoMemory();
    finish_elu_rows(&r, (const int32_t *)(uintptr_t)acc_p, (const int32_t *)(uintptr_t)more_p, n, c, &e,
                    (int8_t *)(uintptr_t)dst_p, stride, NULL, (const double *)(uintptr_t)mask_p, h);
    PyMem_Free(h);
    Py_RETURN_NONE;
}

HOT static void add_row(const double *restrict h, Py_ssize_t count, double *restrict out) {
    for (Py_ssize_t j = 0; j < count; j++) out[j] = clamp_act(out[j] + h[j]);
}

/* The rows of finish_to; scratch h [c]. */
static void finish_rows(const Rounding *r, const int32_t *acc, const int32_t *more, Py_ssize_t n, Py_ssize_t c,
                        double *out, Py_ssize_t stride, const Py_ssize_t *at, const double *mask, int residual,
                        double *h) {
    for (Py_ssize_t i = 0; i < n; i++) {
        double *row = out + row_at(at, i, stride);
        if (mask && mask[i] == 0.0) {
            for (Py_ssize_t j = 0; j < c; j++) row[j] = 0.0;
        } else if (residual) {
            finish_row(r, acc + i * c, more ? more + i * c : NULL, c, h);
            add_row(h, c, row);
        } else {
            finish_row(r, acc + i * c, more ? more + i * c : NULL, c, row);
        }
    }
}

/* finish_to(acc, more, n, c, scale, low, high, out, row_stride, mask, residual): the layer's outputs from
   its sums acc [n, c] into float64 out[i row_stride + j], 0 where mask (float64 [n], or 0: none) is
   0; with residual 1, out = clamp(out + outputs) instead. */
static PyObject *finish_to(PyObject *self, PyObject *args) {
    unsigned long long acc_p, more_p, scale_p, low_p, high_p, out_p, mask_p;
    Py_ssize_t n, c, stride;
    int residual;
    if (!PyArg_ParseTuple(args, "KKnnKKKKnKp", &acc_p, &more_p, &n, &c, &scale_p, &low_p, &high_p, &out_p, &stride, &mask_p,
                          &residual))
        return NULL;
    Rounding r = rounding(scale_p, low_p, high_p);
    double *h = PyMem_Malloc((size_t)c * sizeof(double));
    if (!h) return PyErr_NoMemory();
    finish_rows(&r, (const int32_t *)(uintptr_t)acc_p, (const int32_t *)(uintptr_t)more_p, n, c,
                (double *)(uintptr_t)out_p, stride, NULL, (const double *)(uintptr_t)mask_p, residual, h);
    PyMem_Free(h);
    Py_RETURN_NONE;
}

HOT static void quantise_row(const double *restrict x, Py_ssize_t count, double scale, double top, int8_t *restrict out) {
    for (Py_ssize_t j = 0; j < count; j++) {
        double q = floor(x[j] * scale + 0.5);
        q = q < -top ? -top : q;
        out[j] = (int8_t)(q > top ? top : q);
    }
}

/* quantise(x, n, c, in_scale, top, out): a layer's 8-bit inputs int8 out [n, c] = clamp(floor(x m 2**-t
   + 1/2), -top, top) of activations x float64 [n, c] (Linear.quantise, in_scale = m 2**-t: the
   product g m 2**-t is exact). */
static PyObject *quantise(PyObject *self, PyObject *args) {
    unsigned long long x_p, out_p;
    Py_ssize_t n, c;
    double scale, top;
    if (!PyArg_ParseTuple(args, "KnnddK", &x_p, &n, &c, &scale, &top, &out_p)) return NULL;
    quantise_row((const double *)(uintptr_t)x_p, n * c, scale, top, (int8_t *)(uintptr_t)out_p);
    Py_RETURN_NONE;
}

/* The largest of x [count > 0] and their sum, in LANES independent lanes that vectorise: the values
   are integers whose sums stay below 2**53, exact in any order. */
#define LANES 8

HOT static double largest_of(const double *restrict x, Py_ssize_t count) {
    double lane[LANES];
    for (int q = 0; q < LANES; q++) lane[q] = x[0];
    Py_ssize_t j = 0;
    for (; j + LANES <= count; j += LANES)
        for (int q = 0; q < LANES; q++) lane[q] = x[j + q] > lane[q] ? x[j + q] : lane[q];
    for (; j < count; j++) lane[0] = x[j] > lane[0] ? x[j] : lane[0];
    for (int q = 1; q < LANES; q++) lane[0] = lane[q] > lane[0] ? lane[q] : lane[0];
    return lane[0];
}

HOT static double sum_of(const double *restrict x, Py_ssize_t count) {
    double lane[LANES] = {0.0};
    Py_ssize_t j = 0;
    for (; j + LANES <= count; j += LANES)
        for (int q = 0; q < LANES; q++) lane[q] += x[j + q];
    for (; j < count; j++) lane[0] += x[j];
    for (int q = 1; q < LANES; q++) lane[0] += lane[q];
    return lane[0];
}

/* The attention of one query row (attention.attention_rows, exact.md §6.3): q [c] in heads of d = c /
   heads channels, keys and values at the window's n_off cells (keys + shift[o], values + shift[o]),
   offsets where valid[o] is 0 left out. |q . k| <= d 2**40 and |sum p v| <= 2**36: exact in any order.
   Scratch: logits and weights [heads n_off], products [c]. */
HOT static void attend_row(const double *restrict q, Py_ssize_t c, Py_ssize_t heads, const double *keys,
                           const double *values, const int64_t *restrict shift, const uint8_t *restrict valid,
                           Py_ssize_t n_off, const double *restrict exp_table, double last, double fa_unit,
                           double p_scale, double *restrict logits, double *restrict weights,
                           double *restrict products, double *restrict out) {
    const Py_ssize_t d = c / heads;
    for (Py_ssize_t o = 0; o < n_off; o++) {
        if (!valid[o]) continue;
        const double *restrict k = keys + shift[o];
        for (Py_ssize_t j = 0; j < c; j++) products[j] = q[j] * k[j];
        for (Py_ssize_t h = 0; h < heads; h++) logits[h * n_off + o] = floor(sum_of(products + h * d, d) * fa_unit + 0.5);
    }
    for (Py_ssize_t h = 0; h < heads; h++) {
        const double *restrict logit = logits + h * n_off;
        double *restrict weight = weights + h * n_off;
        double largest = -1.0 / 0.0, total = 0.0;
        for (Py_ssize_t o = 0; o < n_off; o++)
            if (valid[o] && logit[o] > largest) largest = logit[o];
        for (Py_ssize_t o = 0; o < n_off; o++) {
            double z = largest - logit[o];
            weight[o] = valid[o] ? exp_table[(int32_t)(z < last ? z : last)] : 0.0;
            total += weight[o];
        }
        for (Py_ssize_t o = 0; o < n_off; o++) weight[o] = floor(weight[o] * p_scale / total);
    }
    for (Py_ssize_t j = 0; j < c; j++) out[j] = 0.0;
    for (Py_ssize_t o = 0; o < n_off; o++) {
        if (!valid[o]) continue;
        const double *restrict v = values + shift[o];
        for (Py_ssize_t h = 0; h < heads; h++) {
            const double p = weights[h * n_off + o];
            for (Py_ssize_t j = h * d; j < (h + 1) * d; j++) out[j] += p * v[j];
        }
    }
    for (Py_ssize_t j = 0; j < c; j++) out[j] = floor(out[j] / p_scale + 0.5);
}

/* The rows of attend; scratch [2 heads n_off + c]. */
static void attend_rows(const double *q, Py_ssize_t n, Py_ssize_t c, Py_ssize_t heads, const double *keys,
                        const double *values, Py_ssize_t cols, Py_ssize_t row_stride, Py_ssize_t col_stride,
                        const Py_ssize_t *cells, const int64_t *shifts, Py_ssize_t n_off, const uint8_t *valid,
                        const double *exp_table, Py_ssize_t exp_size, int fa, int p_bits, double *out,
                        double *scratch) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const Py_ssize_t at = cells ? cells[i] : (i / cols) * row_stride + (i % cols) * col_stride;
        attend_row(q + i * c, c, heads, keys + at, values + at, shifts, valid + i * n_off, n_off, exp_table,
                   (double)(exp_size - 1), ldexp(1.0, -fa), ldexp(1.0, p_bits), scratch, scratch + heads * n_off,
                   scratch + 2 * heads * n_off, out + i * c);
    }
}

/* attend(q, n, c, heads, keys, values, cols, row_stride, col_stride, shifts, n_off, valid, exp_table,
   exp_size, fa, p_bits, out): attention averages out [n, c] float64 of queries q [n, c]; query i = y
   cols + x has its keys and values at the window's offset o at keys[y row_stride + x col_stride +
   shifts[o] + channel] (values alike: float64 caches; one column for a wavefront, a band's rows
   else), valid [n, n_off] (bool) says which offsets lie on the map. */
static PyObject *attend(PyObject *self, PyObject *args) {
    unsigned long long q_p, keys_p, values_p, shifts_p, valid_p, exp_p, out_p;
    Py_ssize_t n, c, heads, cols, row_stride, col_stride, n_off, exp_size;
    int fa, p_bits;
    if (!PyArg_ParseTuple(args, "KnnnKKnnnKnKKniiK", &q_p, &n, &c, &heads, &keys_p, &values_p, &cols, &row_stride,
                          &col_stride, &shifts_p, &n_off, &valid_p, &exp_p, &exp_size, &fa, &p_bits, &out_p))
        return NULL;
    double *scratch = PyMem_Malloc((size_t)(2 * heads * n_off + c) * sizeof(double));
    if (!scratch) return PyErr_NoMemory();
    attend_rows((const double *)(uintptr_t)q_p, n, c, heads, (const double *)(uintptr_t)keys_p,
                (const double *)(uintptr_t)values_p, cols, row_stride, col_stride, NULL, (const int64_t *)(uintptr_t)shifts_p,
                n_off, (const uint8_t *)(uintptr_t)valid_p, (const double *)(uintptr_t)exp_p, exp_size, fa, p_bits,
                (double *)(uintptr_t)out_p, scratch);
    PyMem_Free(scratch);
    Py_RETURN_NONE;
}

/* The gate of one row: h [2c] plus the float32 conditioning row cond (or NULL), clamped; then
   x = clamp(floor(x + a sig(b) 2**-fa + 1/2)), [a, b] = h, sig(b) = sigmoid[clamp(b + size, 0, 2 size - 1)]
   (the table's integers as float64): a product below 2**30 and every sum exact in float64. */
HOT static void gate_row(double *restrict h, const float *restrict cond, const double *restrict sigmoid,
                         double size, double unit, Py_ssize_t c, double *restrict x) {
    if (cond)
        for (Py_ssize_t j = 0; j < 2 * c; j++) h[j] = clamp_act(h[j] + (double)cond[j]);
    const double last = 2.0 * size - 1.0;
    for (Py_ssize_t j = 0; j < c; j++) {
        double index = h[c + j] + size;
        index = index < 0.0 ? 0.0 : index;
        index = index > last ? last : index;
        x[j] = clamp_act(floor(x[j] + h[j] * sigmoid[(int32_t)index] * unit + 0.5));
    }
}

/* The rows of finish_gate; scratch h [2c]. */
static void gate_rows(const Rounding *r, const int32_t *acc, const int32_t *more, Py_ssize_t n, Py_ssize_t c,
                      const float *cond, const int64_t *rows, const double *sigmoid, Py_ssize_t size, int fa, double *x,
                      double *h) {
    for (Py_ssize_t i = 0; i < n; i++) {
        finish_row(r, acc + i * 2 * c, more ? more + i * 2 * c : NULL, 2 * c, h);
        gate_row(h, cond ? cond + rows[i] * 2 * c : NULL, sigmoid, (double)size, ldexp(1.0, -fa), c, x + i * c);
    }
}

/* finish_gate(acc, more, n, c, scale, low, high, cond, cond_rows, sigmoid, size, fa, x): a gated block's
   end (stepper.py, arithmetic.gated_residual): h = the layer's outputs from its sums acc [n, 2c],
   plus row cond_rows[i] (int64) of the float32 table cond [*, 2c] and clamped if cond is not 0;
   then x [n, c] = clamp(x + rshr(a sig(b), fa)) with [a, b] = h and sig(b) = sigmoid[clamp(b + size,
   0, 2 size - 1)] (the table of exact.md §4, its integers as float64). */
static PyObject *finish_gate(PyObject *self, PyObject *args) {
    unsigned long long acc_p, more_p, scale_p, low_p, high_p, cond_p, rows_p, sig_p, x_p;
    Py_ssize_t n, c, size;
    int fa;
    if (!PyArg_ParseTuple(args, "KKnnKKKKKKniK", &acc_p, &more_p, &n, &c, &scale_p, &low_p, &high_p, &cond_p, &rows_p,
                          &sig_p, &size, &fa, &x_p))
        return NULL;
    Rounding r = rounding(scale_p, low_p, high_p);
    double *h = PyMem_Malloc((size_t)(2 * c) * sizeof(double));
    if (!h) return PyErr_NoMemory();
    gate_rows(&r, (const int32_t *)(uintptr_t)acc_p, (const int32_t *)(uintptr_t)more_p, n, c,
              (const float *)(uintptr_t)cond_p, (const int64_t *)(uintptr_t)rows_p, (const double *)(uintptr_t)sig_p,
              size, fa, (double *)(uintptr_t)x_p, h);
    PyMem_Free(h);
    Py_RETURN_NONE;
}

/* The frequency table f [k] of one row of logits l [k], using e [k] (all integers as float64); where
   code >= 0, only that code's span f [2]: the frequencies below it and its own, all that a range
   encoder needs of the table (the encoder knows its codes). */
HOT static void frequency_row(const double *restrict l, Py_ssize_t k, const double *restrict exp_table,
                              double last, int precision, int64_t code, double *restrict e, int64_t *restrict f) {
    const double largest = largest_of(l, k);
    for (Py_ssize_t j = 0; j < k; j++) {
        double z = largest - l[j];
        e[j] = exp_table[(int32_t)(z < last ? z : last)];
    }
    const double total = sum_of(e, k), spread = (double)(((int64_t)1 << precision) - k);
    for (Py_ssize_t j = 0; j < k; j++) e[j] = 1.0 + floor(e[j] * spread / total);
    const double used = sum_of(e, k);
    Py_ssize_t first = 0;
    while (l[first] != largest) first++;
    const int64_t rest = ((int64_t)1 << precision) - (int64_t)used;
    if (code >= 0) {
        f[0] = (int64_t)sum_of(e, code) + (first < code ? rest : 0);
        f[1] = (int64_t)e[code] + (first == code ? rest : 0);
        return;
    }
    for (Py_ssize_t j = 0; j < k; j++) { /* e[j] in 1 .. 2**24 as int64: the low bits of e + 2**52 */
        double shifted = e[j] + 4503599627370496.0;
        int64_t bits;
        memcpy(&bits, &shifted, sizeof bits);
        f[j] = bits - (int64_t)0x4330000000000000;
    }
    f[first] += rest;
}

/* frequencies(acc, more, n, k, scale, low, high, exp_table, exp_size, precision, out, threads): the output layer's
   logits from its sums acc [n, k], and their frequency tables, int64 out [n, k]
   (arithmetic.float_frequencies, exact.md §7): z = min(max - l, exp_size - 1), e = exp_table[z]
   (float64), f = 1 + floor(e (2**precision - k) / sum e), the rest to the first largest logit. The
   quotient is the floor of the correctly rounded float64 one (e (2**precision - k) is exact), as
   arithmetic.floor_div proves. */
typedef struct {
    const int32_t *acc, *more;
    Py_ssize_t k, exp_size;
    Rounding r;
    const double *exp_table;
    int precision;
    const int64_t *codes; /* or NULL: tables [n, k], else spans [n, 2] of these codes */
    int64_t *out;
} Frequencies;

static void frequencies_part(void *context, Py_ssize_t start, Py_ssize_t stop) {
    const Frequencies *f = context;
    const Py_ssize_t k = f->k;
    double *row = malloc((size_t)(2 * k) * sizeof(double));
    if (!row) abort(); /* a few kilobytes */
    for (Py_ssize_t i = start; i < stop; i++) {
        finish_row(&f->r, f->acc + i * k, f->more ? f->more + i * k : NULL, k, row);
        frequency_row(row, k, f->exp_table, (double)(f->exp_size - 1), f->precision, f->codes ? f->codes[i] : -1,
                      row + k, f->out + i * (f->codes ? 2 : k));
    }
    free(row);
}

static PyObject *frequencies(PyObject *self, PyObject *args) {
    unsigned long long acc_p, more_p, scale_p, low_p, high_p, exp_p, out_p;
    Py_ssize_t n;
    Frequencies f = {0};
    int threads;
    if (!PyArg_ParseTuple(args, "KKnnKKKKniKi", &acc_p, &more_p, &n, &f.k, &scale_p, &low_p, &high_p, &exp_p,
                          &f.exp_size, &f.precision, &out_p, &threads))
        return NULL;
    f.acc = (const int32_t *)(uintptr_t)acc_p;
    f.more = (const int32_t *)(uintptr_t)more_p;
    f.r = rounding(scale_p, low_p, high_p);
    f.exp_table = (const double *)(uintptr_t)exp_p;
    f.out = (int64_t *)(uintptr_t)out_p;
    split(frequencies_part, &f, n, n * f.k, threads);
    Py_RETURN_NONE;
}

HOT static void quantise_map(const double *restrict x, Py_ssize_t count, double scale, double low, double high,
                             int mode, int8_t *restrict a, int8_t *restrict b) {
    for (Py_ssize_t j = 0; j < count; j++) {
        double q = floor(x[j] * scale + 0.5);
        q = q < low ? low : q;
        q = q > high ? high : q;
        if (mode == 2) { /* 16 bits: q = 256 hi + lo, hi and lo - 128 as int8 */
            double hi = floor(q * (1.0 / 256.0));
            a[j] = (int8_t)hi;
            b[j] = (int8_t)(q - 256.0 * hi - 128.0);
        } else {
            a[j] = (int8_t)(mode == 1 ? q - 128.0 : q);
        }
    }
}

typedef struct {
    const double *x;
    double scale, low, high;
    int mode;
    int8_t *a, *b;
} ConvInputs;

static void conv_inputs_part(void *context, Py_ssize_t start, Py_ssize_t stop) {
    const ConvInputs *c = context;
    quantise_map(c->x + start, stop - start, c->scale, c->low, c->high, c->mode, c->a + start,
                 c->b ? c->b + start : NULL);
}

/* conv_inputs(x, count, scale, low, high, mode, a, b, threads): a convolution's rounded inputs q =
   clamp(floor(x m 2**-t + 1/2), low, high) of float64 x [count] (vqvae.IntegerConv._operands) as int8
   maps: mode 0, q (8 bits); 1, q - 128 (unsigned 8 bits); 2, a = hi and b = lo - 128 with q = 256 hi +
   lo (16 bits). */
static PyObject *conv_inputs(PyObject *self, PyObject *args) {
    unsigned long long x_p, a_p, b_p;
    Py_ssize_t count;
    ConvInputs c;
    int threads;
    if (!PyArg_ParseTuple(args, "KndddiKKi", &x_p, &count, &c.scale, &c.low, &c.high, &c.mode, &a_p, &b_p, &threads))
        return NULL;
    c.x = (const double *)(uintptr_t)x_p;
    c.a = (int8_t *)(uintptr_t)a_p;
    c.b = (int8_t *)(uintptr_t)b_p;
    split(conv_inputs_part, &c, count, count, threads);
    Py_RETURN_NONE;
}

HOT static void finish_map_row(const int32_t *restrict a, const int32_t *restrict b, Py_ssize_t cols, Py_ssize_t c,
                               const double *restrict scale_a, const double *restrict scale_b,
                               const double *restrict start, const double *restrict high, double *restrict out,
                               Py_ssize_t out_col_stride) {
    for (Py_ssize_t x = 0; x < cols; x++) {
        const int32_t *restrict sa = a + x * c, *restrict sb = b ? b + x * c : NULL;
        double *restrict o = out + x * out_col_stride;
        if (sb)
            for (Py_ssize_t j = 0; j < c; j++)
                o[j] = clamp_act(floor((double)sa[j] * scale_a[j] + (double)sb[j] * scale_b[j] + start[j]) + high[j]);
        else
            for (Py_ssize_t j = 0; j < c; j++) o[j] = clamp_act(floor((double)sa[j] * scale_a[j] + start[j]) + high[j]);
    }
}

typedef struct {
    const int32_t *a, *b;
    Py_ssize_t cols, c, stride, out_row_stride, out_col_stride;
    const double *scale_a, *scale_b, *start, *high;
    double *out;
    ConvInputs next; /* next.a: the reader's operands instead of out (conv_outputs) */
} ConvOutputs;

static void conv_outputs_part(void *context, Py_ssize_t start, Py_ssize_t stop) {
    const ConvOutputs *o = context;
    const ConvInputs *next = o->next.a ? &o->next : NULL;
    double *row = next ? malloc((size_t)(o->cols * o->c) * sizeof(double)) : NULL; /* one row's outputs */
    if (next && !row) abort();
    for (Py_ssize_t y = start; y < stop; y++) {
        const int32_t *a = o->a + y * o->stride, *b = o->b ? o->b + y * o->stride : NULL;
        if (!next) {
            finish_map_row(a, b, o->cols, o->c, o->scale_a, o->scale_b, o->start, o->high,
                           o->out + y * o->out_row_stride, o->out_col_stride);
            continue;
        }
        finish_map_row(a, b, o->cols, o->c, o->scale_a, o->scale_b, o->start, o->high, row, o->c);
        for (Py_ssize_t x = 0; x < o->cols; x++) {
            const Py_ssize_t at = y * o->out_row_stride + x * o->out_col_stride;
            quantise_map(row + x * o->c, o->c, next->scale, next->low, next->high, next->mode, next->a + at,
                         next->b ? next->b + at : NULL);
        }
    }
    free(row);
}

/* conv_outputs(a, b, rows, cols, c, row_stride, scale_a, scale_b, start, high, out, out_row_stride,
   out_col_stride, next_scale, next_low, next_high, next_mode, next_a, next_b, threads): a convolution's
   outputs from the int32 sums of its one or two int8 operands (b: 0 or the low limb's, laid out as a),
   [rows, cols, c] at row_stride (in values): out = clamp(floor(a scale_a + b scale_b + start) + high)
   per channel (vqvae.IntegerConv.__call__: every sum a multiple of 2**-t_c below 2**53 of them, exact),
   written at out + y out_row_stride + x out_col_stride; or, where next_a is not 0, not written but
   rounded at once into the int8 operands of the convolution that reads them (conv_inputs' with the
   next_ arguments), at next_a (and next_b) + the same offsets. */
static PyObject *conv_outputs(PyObject *self, PyObject *args) {
    unsigned long long a_p, b_p, sa_p, sb_p, start_p, high_p, out_p, next_a_p, next_b_p;
    Py_ssize_t rows;
    ConvOutputs o;
    int threads;
    if (!PyArg_ParseTuple(args, "KKnnnnKKKKKnndddiKKi", &a_p, &b_p, &rows, &o.cols, &o.c, &o.stride, &sa_p, &sb_p,
                          &start_p, &high_p, &out_p, &o.out_row_stride, &o.out_col_stride, &o.next.scale,
                          &o.next.low, &o.next.high, &o.next.mode, &next_a_p, &next_b_p, &threads))
        return NULL;
    o.a = (const int32_t *)(uintptr_t)a_p;
    o.b = (const int32_t *)(uintptr_t)b_p;
    o.scale_a = (const double *)(uintptr_t)sa_p;
    o.scale_b = (const double *)(uintptr_t)sb_p;
    o.start = (const double *)(uintptr_t)start_p;
    o.high = (const double *)(uintptr_t)high_p;
    o.out = (double *)(uintptr_t)out_p;
    o.next.x = NULL;
    o.next.a = (int8_t *)(uintptr_t)next_a_p;
    o.next.b = (int8_t *)(uintptr_t)next_b_p;
    split(conv_outputs_part, &o, rows, rows * o.cols * o.c, threads);
    Py_RETURN_NONE;
}

/* ---- int8 products ----------------------------------------------------------------------------------
   out [m, n] int32 = the sum over a convolution's kernel rows (taps) of their 8-bit inputs a_t [m,
   width_t] (rows lda apart) times the weight rows that multiply them, packed once per layer as [width_t
   / 4][np][4] (np: n rounded up to 16; fused._packed). Integer sums, exact in any order (exact.md §8:
   every partial sum stays below 2**31). With AVX-512 VNNI, four products of an unsigned and a signed
   byte per lane and instruction: the inputs go in as a + 128 and 128 times each column's weight sum
   (bias128) comes off at the end; elsewhere a plain loop of the signed bytes. */
typedef struct {
    const int8_t *a; /* the tap's inputs of the first position */
    const int8_t *b; /* its weight rows, packed */
    Py_ssize_t quads; /* width / 4 */
} Tap;

typedef struct {
    const Tap *taps;
    int count;
    Py_ssize_t lda;        /* position i's inputs at a + i lda, */
    const Py_ssize_t *at;  /* or at a + at[i] if not NULL */
    Py_ssize_t n, np;
    const int32_t *bias128; /* [np] */
} Product;

HOT static void product_plain(const Product *p, Py_ssize_t m, int32_t *out) {
    const Py_ssize_t np = p->np;
    int32_t *acc = malloc((size_t)np * sizeof(int32_t));
    if (!acc) abort(); /* a few kilobytes */
    for (Py_ssize_t i = 0; i < m; i++) {
        memset(acc, 0, (size_t)np * sizeof(int32_t));
        for (int t = 0; t < p->count; t++) {
            const int8_t *a = p->taps[t].a + row_at(p->at, i, p->lda);
            for (Py_ssize_t kq = 0; kq < p->taps[t].quads; kq++) {
                const int8_t *restrict b = p->taps[t].b + kq * np * 4;
                const int32_t a0 = a[4 * kq], a1 = a[4 * kq + 1], a2 = a[4 * kq + 2], a3 = a[4 * kq + 3];
                for (Py_ssize_t j = 0; j < np; j++)
                    acc[j] += a0 * b[4 * j] + a1 * b[4 * j + 1] + a2 * b[4 * j + 2] + a3 * b[4 * j + 3];
            }
        }
        memcpy(out + i * p->n, acc, (size_t)p->n * sizeof(int32_t));
    }
    free(acc);
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* rows x 16 vecs outputs from row i0 and column j0: all accumulators in registers. */
VNNI static inline __attribute__((always_inline)) void vnni_block(const Product *p, Py_ssize_t i0, Py_ssize_t j0,
                                                                 const int rows, const int vecs, int32_t *out) {
    __m512i acc[4][4];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vecs; v++) acc[r][v] = _mm512_setzero_si512();
    const Py_ssize_t np4 = p->np * 4;
    Py_ssize_t row[4];
    for (int r = 0; r < rows; r++) row[r] = row_at(p->at, i0 + r, p->lda);
    for (int t = 0; t < p->count; t++) {
        const int8_t *a = p->taps[t].a, *b = p->taps[t].b + j0 * 4;
        for (Py_ssize_t kq = 0; kq < p->taps[t].quads; kq++, b += np4) {
            __m512i w[4];
            for (int v = 0; v < vecs; v++) w[v] = _mm512_loadu_si512((const void *)(b + 64 * v));
            for (int r = 0; r < rows; r++) {
                int32_t word;
                memcpy(&word, a + row[r] + 4 * kq, 4);
                const __m512i x = _mm512_set1_epi32(word ^ (int32_t)0x80808080);
                for (int v = 0; v < vecs; v++) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], x, w[v]);
            }
        }
    }
    for (int v = 0; v < vecs; v++) {
        const Py_ssize_t j = j0 + 16 * v, left = p->n - j;
        const __m512i bias = _mm512_loadu_si512((const void *)(p->bias128 + j));
        const __mmask16 keep = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        for (int r = 0; r < rows; r++)
            _mm512_mask_storeu_epi32(out + (i0 + r) * p->n + j, keep, _mm512_sub_epi32(acc[r][v], bias));
    }
}

VNNI static void product_vnni(const Product *p, Py_ssize_t m, int32_t *out) {
    for (Py_ssize_t j0 = 0; j0 < p->np; j0 += 64) {
        const int vecs = p->np - j0 >= 64 ? 4 : (int)((p->np - j0) / 16);
        for (Py_ssize_t i0 = 0; i0 < m; i0 += 4) {
            const int rows = m - i0 >= 4 ? 4 : (int)(m - i0);
            switch (rows * 8 + vecs) {
#define BLOCK(R, V) \
    case (R) * 8 + (V): vnni_block(p, i0, j0, R, V, out); break;
                BLOCK(1, 1) BLOCK(1, 2) BLOCK(1, 3) BLOCK(1, 4) BLOCK(2, 1) BLOCK(2, 2) BLOCK(2, 3) BLOCK(2, 4)
                BLOCK(3, 1) BLOCK(3, 2) BLOCK(3, 3) BLOCK(3, 4) BLOCK(4, 1) BLOCK(4, 2) BLOCK(4, 3) BLOCK(4, 4)
#undef BLOCK
            }
        }
    }
}

static int has_vnni(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl");
    }
    return known;
}
#endif

static int vnni_allowed = 1; /* products(0) turns the VNNI path off, for tests of the plain one */

static void product(const Product *p, Py_ssize_t m, int32_t *out) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (vnni_allowed && has_vnni()) {
        product_vnni(p, m, out);
        return;
    }
#endif
    product_plain(p, m, out);
}

/* use_vnni(flag): whether products may use AVX-512 VNNI where the CPU has it; returns whether it
   does now. */
static PyObject *use_vnni(PyObject *self, PyObject *args) {
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag)) return NULL;
    vnni_allowed = flag;
#if defined(__GNUC__) && defined(__x86_64__)
    return PyBool_FromLong(vnni_allowed && has_vnni());
#else
    return PyBool_FromLong(0);
#endif
}

/* ---- a wavefront step ---------------------------------------------------------------------------------
   fused.StepProgram writes a prior's layers at a wavefront as a program of int64 words (doubles as
   their bits), and step() runs it: the same calls, in the same order and on the same integers, as
   stepper._fused_freqs makes through fused.py and torch._int_mm, without returning to Python between
   them. Buffers of the step: x [n, C] (float64 activations), s [n, widest] (a layer's int32 sums), q [n,
   C] (8-bit inputs of a 1x1 layer), query and mixed [n, C] (the attention's). */
enum {
    OP_CONV = 1,        /* cache, taps, (shift, width, row)*taps, LAYER: s = the masked convolution */
    OP_LINEAR,          /* source (0 x, 1 mixed), LAYER: s = LAYER(quantise(source)) */
    OP_PRODUCT,         /* LAYER: s = q W */
    OP_FINISH,          /* target (0 x, 1 query, 2 x + residual), LAYER */
    OP_FINISH_CELLS,    /* cache, LAYER: float64 cells = finish(s), masked */
    OP_ELU,             /* cache (0: q), LAYER: cells or q = LAYER's inputs of elu(x), masked */
    OP_FINISH_ELU,      /* cache (0: q), LAYER, READER: READER's inputs of elu(LAYER's outputs) */
    OP_GATE,            /* cond (0: none), LAYER: x = the gated residual */
    OP_ATTEND,          /* keys, values, heads, shifts: mixed = the averages */
    OP_FREQUENCIES,     /* LAYER: the frequency tables */
};

/* A layer: packed weight, bias128, k, n, np, scale, low, high, ELU inputs' table (0: none), its size
   and top, in_scale (doubles as bits). */
enum { LAYER_WORDS = 12 };

typedef struct {
    const int8_t *packed;
    const int32_t *bias128;
    Py_ssize_t k, n, np;
    Rounding r;
    EluInputs elu;
    double in_scale;
} Layer;

static double as_double(int64_t word) {
    double value;
    memcpy(&value, &word, sizeof value);
    return value;
}

static Layer read_layer(const int64_t *w) {
    Layer l;
    l.packed = (const int8_t *)(uintptr_t)w[0];
    l.bias128 = (const int32_t *)(uintptr_t)w[1];
    l.k = w[2];
    l.n = w[3];
    l.np = w[4];
    l.r = rounding((unsigned long long)w[5], (unsigned long long)w[6], (unsigned long long)w[7]);
    l.elu = (EluInputs){(const int32_t *)(uintptr_t)w[8], as_double(w[9]), as_double(w[10])};
    l.in_scale = as_double(w[11]);
    return l;
}

/* Header words: channels, widest sums, codebook size, exp table, its size, sigmoid table, its half
   size, fa, p_bits, precision. */
enum { HEADER_WORDS = 10 };

/* The job of one step: positions 0 .. n - 1 (a wavefront, or a band of whole rows), position i at
   cache cell first + (i / cols) row_cells + (i % cols) col_cells (the arguments of step() below). */
typedef struct {
    const int64_t *program;
    Py_ssize_t words, n, first, cols, row_cells, col_cells;
    int sync_convs; /* whether parts wait for each other before each convolution too */
    const double *mask;
    const int64_t *cond_rows;
    const uint8_t *valid;
    const int64_t *codes; /* or NULL: out holds tables [n, K], else spans [n, 2] of these codes */
    int64_t *out;
} StepJob;

/* The bytes of run_program's buffers for n positions. */
static size_t buffer_bytes(const int64_t *program, Py_ssize_t n) {
    const Py_ssize_t c = program[0], widest = program[1];
    return (size_t)(3 * n * c + 2 * 1024 + 2 * c + widest) * sizeof(double) + (size_t)(n * widest) * sizeof(int32_t) +
           (size_t)n * sizeof(Py_ssize_t) + (size_t)(n * c);
}

/* Run the program at positions start .. stop - 1 of the job's sites, in `buffer` (buffer_bytes);
   threads: for the frequency tables; sync (or NULL): called before each attention, where every part
   must have written its keys and values (a window reaches rows above on the same wavefront), and
   with job->sync_convs before each convolution. */
static void run_program(const StepJob *job, Py_ssize_t start, Py_ssize_t stop, int threads, void *buffer,
                        void (*sync)(void)) {
    const int64_t *program = job->program;
    const Py_ssize_t words = job->words, n = stop - start;
    const Py_ssize_t c = program[0], widest = program[1], codes = program[2], first = job->first;
    const double *mask = job->mask ? job->mask + start : NULL;
    const int64_t *cond_rows = job->cond_rows ? job->cond_rows + start : NULL;
    const double *exp_table = (const double *)(uintptr_t)program[3], *sigmoid = (const double *)(uintptr_t)program[5];
    const Py_ssize_t exp_size = program[4], table_size = program[6];
    const int fa = (int)program[7], p_bits = (int)program[8], precision = (int)program[9];
    const Py_ssize_t offsets_most = 1024; /* attention scratch: heads x offsets each, checked below */
    const Py_ssize_t scratch_size = 2 * offsets_most + 2 * c + widest; /* attend's, a row's */
    double *x = buffer;
    double *query = x + n * c, *mixed = query + n * c, *scratch = mixed + n * c;
    int32_t *s = (int32_t *)(scratch + scratch_size);
    Py_ssize_t *cells = (Py_ssize_t *)(s + n * widest); /* each position's cell, in values from first's */
    int8_t *q = (int8_t *)(cells + n);
    for (Py_ssize_t i = 0; i < n; i++)
        cells[i] = ((start + i) / job->cols * job->row_cells + (start + i) % job->cols * job->col_cells) * c;
    Tap taps[16];
    for (Py_ssize_t at = HEADER_WORDS; at < words;) {
        const int64_t op = program[at++];
        switch (op) {
        case OP_CONV: {
            const int8_t *cache = (const int8_t *)(uintptr_t)program[at] + first * c;
            const int count = (int)program[at + 1];
            if (count < 1 || count > 16) abort(); /* fused.StepProgram.conv refuses such layers */
            const int64_t *tap = program + at + 2;
            Layer l = read_layer(tap + 3 * count);
            for (int t = 0; t < count; t++)
                taps[t] = (Tap){cache + tap[3 * t] * c, l.packed + tap[3 * t + 2] * l.np, tap[3 * t + 1] / 4};
            Product p = {taps, count, 0, cells, l.n, l.np, l.bias128};
            if (sync && job->sync_convs) sync();
            product(&p, n, s);
            at += 2 + 3 * count + LAYER_WORDS;
            break;
        }
        case OP_LINEAR: {
            Layer l = read_layer(program + at + 1);
            quantise_row(program[at] ? mixed : x, n * c, l.in_scale, 127.0, q);
            taps[0] = (Tap){q, l.packed, l.k / 4};
            Product p = {taps, 1, l.k, NULL, l.n, l.np, l.bias128};
            product(&p, n, s);
            at += 1 + LAYER_WORDS;
            break;
        }
        case OP_PRODUCT: {
            Layer l = read_layer(program + at);
            taps[0] = (Tap){q, l.packed, l.k / 4};
            Product p = {taps, 1, l.k, NULL, l.n, l.np, l.bias128};
            product(&p, n, s);
            at += LAYER_WORDS;
            break;
        }
        case OP_FINISH: {
            Layer l = read_layer(program + at + 1);
            const int64_t target = program[at];
            finish_rows(&l.r, s, NULL, n, l.n, target == 1 ? query : x, l.n, NULL, NULL, target == 2, scratch);
            at += 1 + LAYER_WORDS;
            break;
        }
        case OP_FINISH_CELLS: {
            Layer l = read_layer(program + at + 1);
            finish_rows(&l.r, s, NULL, n, l.n, (double *)(uintptr_t)program[at] + first * c, 0, cells, mask, 0, scratch);
            at += 1 + LAYER_WORDS;
            break;
        }
        case OP_ELU: {
            Layer l = read_layer(program + at + 1);
            int8_t *cache = (int8_t *)(uintptr_t)program[at];
            if (cache)
                elu_rows(&l.elu, x, n, c, cache + first * c, 0, cells, mask);
            else
                elu_rows(&l.elu, x, n, c, q, c, NULL, NULL);
            at += 1 + LAYER_WORDS;
            break;
        }
        case OP_FINISH_ELU: {
            Layer l = read_layer(program + at + 1), reader = read_layer(program + at + 1 + LAYER_WORDS);
            int8_t *cache = (int8_t *)(uintptr_t)program[at];
            if (cache)
                finish_elu_rows(&l.r, s, NULL, n, l.n, &reader.elu, cache + first * c, 0, cells, mask, scratch);
            else
                finish_elu_rows(&l.r, s, NULL, n, l.n, &reader.elu, q, l.n, NULL, NULL, scratch);
            at += 1 + 2 * LAYER_WORDS;
            break;
        }
        case OP_GATE: {
            Layer l = read_layer(program + at + 1);
            gate_rows(&l.r, s, NULL, n, l.n / 2, (const float *)(uintptr_t)program[at], cond_rows, sigmoid,
                      table_size, fa, x, scratch);
            at += 1 + LAYER_WORDS;
            break;
        }
        case OP_ATTEND: {
            const double *keys = (const double *)(uintptr_t)program[at] + first * c;
            const double *values = (const double *)(uintptr_t)program[at + 1] + first * c;
            const Py_ssize_t heads = program[at + 2], n_off = program[at + 3];
            if (heads * n_off > offsets_most) abort(); /* fused.StepProgram refuses such priors */
            if (sync) sync();
            attend_rows(query, n, c, heads, keys, values, 1, 0, 0, cells, (const int64_t *)(uintptr_t)program[at + 4],
                        n_off, job->valid + start * n_off, exp_table, exp_size, fa, p_bits, mixed, scratch);
            at += 5;
            break;
        }
        case OP_FREQUENCIES: {
            Layer l = read_layer(program + at);
            const int64_t *known = job->codes ? job->codes + start : NULL;
            Frequencies f = {s, NULL, l.n, exp_size, l.r, exp_table, precision, known,
                             job->out + start * (known ? 2 : codes)};
            split(frequencies_part, &f, n, n * l.n, threads);
            at += LAYER_WORDS;
            break;
        }
        default:
            abort(); /* fused.StepProgram writes only the codes above */
        }
    }
}

#ifndef _WIN32
/* A step in parts on the pool: each part's positions in a buffer of its own. */
typedef struct {
    StepJob job;
    char *buffers; /* buffer_bytes(the most positions of a part) apart */
    size_t size;
} StepParts;

static Py_ssize_t part_start(Py_ssize_t n, int part, int parts) { return n * part / parts; }

static void step_part(void *context, int part, int parts) {
    const StepParts *s = context;
    run_program(&s->job, part_start(s->job.n, part, parts), part_start(s->job.n, part + 1, parts), 1,
                s->buffers + s->size * (size_t)part, parts > 1 ? sync_parts : NULL);
}

/* Run the job in up to `parts` parts (the caller holds pool_in_use): returns 0, or -1 out of memory. */
static int run_parts(const StepJob *job, int parts) {
    parts = pool_start(parts);
    const size_t size = buffer_bytes(job->program, part_start(job->n, 1, parts) + 1);
    StepParts s = {*job, malloc(size * (size_t)parts), size};
    if (!s.buffers) return -1;
    pool_run(step_part, &s, parts);
    free(s.buffers);
    return 0;
}
#endif

#define ROWS_PER_PART 16 /* positions below which a part is not worth a thread */

/* step(program, words, n, first, cols, row_cells, col_cells, mask, cond_rows, valid, codes, out, threads,
   sync_convs): the frequency tables int64 out [n, K] of n positions (with codes int64 [n], not 0:
   only each code's span out [n, 2], frequency_row), position i at cache cell first +
   (i / cols) row_cells + (i % cols) col_cells (a wavefront: rows of one stride; a band of whole rows);
   mask float64 [n] or 0, cond_rows int64 [n] or 0, valid bool [n, offsets] or 0: as stepper._context
   gives them. The positions are split over up to `threads` threads, which wait for each other before
   each attention (a window reaches rows above on the same wavefront) and, with sync_convs, before each
   convolution (its taps read other positions of the same call). */
static PyObject *step(PyObject *self, PyObject *args) {
    unsigned long long program_p, mask_p, rows_p, valid_p, codes_p, out_p;
    StepJob job;
    int threads, rc;
    if (!PyArg_ParseTuple(args, "KnnnnnnKKKKKip", &program_p, &job.words, &job.n, &job.first, &job.cols,
                          &job.row_cells, &job.col_cells, &mask_p, &rows_p, &valid_p, &codes_p, &out_p, &threads,
                          &job.sync_convs))
        return NULL;
    job.program = (const int64_t *)(uintptr_t)program_p;
    job.mask = (const double *)(uintptr_t)mask_p;
    job.cond_rows = (const int64_t *)(uintptr_t)rows_p;
    job.valid = (const uint8_t *)(uintptr_t)valid_p;
    job.codes = (const int64_t *)(uintptr_t)codes_p;
    job.out = (int64_t *)(uintptr_t)out_p;
    int parts = (int)(job.n / ROWS_PER_PART);
    parts = parts > threads ? threads : parts;
    parts = parts > WORKERS_MOST + 1 ? WORKERS_MOST + 1 : parts;
    Py_BEGIN_ALLOW_THREADS
#ifndef _WIN32
    /* Python threads may step side by side (the GIL is released): the pool serves one of them at a
       time, the others run their step in one part. */
    if (parts > 1 && pthread_mutex_trylock(&pool_in_use) == 0) {
        rc = run_parts(&job, parts);
        pthread_mutex_unlock(&pool_in_use);
    } else
#endif
    {
        void *buffer = malloc(buffer_bytes(job.program, job.n));
        rc = buffer ? 0 : -1;
        if (buffer) run_program(&job, 0, job.n, threads, buffer, NULL);
        free(buffer);
    }
    Py_END_ALLOW_THREADS
    if (rc) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* The products of a convolution over a whole map, split by rows over threads. */
typedef struct {
    Product p;
    int32_t *out;
} MapProduct;

static void map_product_part(void *context, Py_ssize_t start, Py_ssize_t stop) {
    const MapProduct *m = context;
    Tap taps[16];
    for (int t = 0; t < m->p.count; t++) {
        taps[t] = m->p.taps[t];
        taps[t].a += start * m->p.lda;
    }
    Product p = m->p;
    p.taps = taps;
    product(&p, stop - start, m->out + start * p.n);
}

/* tap_product(map, rows, width, c, taps, shifts, packed, n, np, bias128, out, threads): int32 out [rows,
   n] = the sum over taps t of the int8 map's rows i + shifts[t] (int64, in rows of c values: a tap's flat
   slice, gather.tap_sums) times the weight rows t c .. (t + 1) c - 1, packed [taps c / 4][np][4]
   (fused._packed). c is a multiple of 4; at most 16 taps. */
static PyObject *tap_product(PyObject *self, PyObject *args) {
    unsigned long long map_p, shifts_p, packed_p, bias_p, out_p;
    Py_ssize_t rows, c, count, n, np;
    int threads;
    if (!PyArg_ParseTuple(args, "KnnnKKnnKKi", &map_p, &rows, &c, &count, &shifts_p, &packed_p, &n, &np, &bias_p,
                          &out_p, &threads))
        return NULL;
    if (count < 1 || count > 16 || c % 4) {
        PyErr_SetString(PyExc_ValueError, "1 to 16 taps of a multiple of 4 channels");
        return NULL;
    }
    const int8_t *map = (const int8_t *)(uintptr_t)map_p, *packed = (const int8_t *)(uintptr_t)packed_p;
    const int64_t *shifts = (const int64_t *)(uintptr_t)shifts_p;
    Tap taps[16];
    for (Py_ssize_t t = 0; t < count; t++) taps[t] = (Tap){map + shifts[t] * c, packed + t * c * np, c / 4};
    MapProduct m = {{taps, (int)count, c, NULL, n, np, (const int32_t *)(uintptr_t)bias_p},
                    (int32_t *)(uintptr_t)out_p};
    Py_BEGIN_ALLOW_THREADS
    split(map_product_part, &m, rows, rows * c * count * n / 64, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"elu_store", elu_store, METH_VARARGS, "8-bit inputs of ELU outputs, into a cache."},
    {"finish_elu_store", finish_elu_store, METH_VARARGS, "A layer's outputs as the next layer's 8-bit inputs."},
    {"finish_to", finish_to, METH_VARARGS, "A layer's outputs, or a residual sum with them."},
    {"quantise", quantise, METH_VARARGS, "A layer's 8-bit inputs."},
    {"attend", attend, METH_VARARGS, "Attention averages over a causal window."},
    {"finish_gate", finish_gate, METH_VARARGS, "A gated block's end: conditioning, gate, residual."},
    {"frequencies", frequencies, METH_VARARGS, "The output layer's logits as frequency tables."},
    {"conv_inputs", conv_inputs, METH_VARARGS, "A VQ-VAE convolution's int8 operands."},
    {"conv_outputs", conv_outputs, METH_VARARGS, "A VQ-VAE convolution's outputs from its sums."},
    {"tap_product", tap_product, METH_VARARGS, "A convolution's int8 products over a whole map."},
    {"use_vnni", use_vnni, METH_VARARGS, "Whether int8 products may use AVX-512 VNNI."},
    {"step", step, METH_VARARGS, "A wavefront step's frequency tables from its program."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) {
#ifndef _WIN32
    pthread_atfork(NULL, NULL, pool_after_fork);
#endif
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddObject(m, "ACT_MAX", PyFloat_FromDouble(ACT_MAX)) < 0 ||
              PyModule_AddIntConstant(m, "VERSION", KERNELS_VERSION) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

