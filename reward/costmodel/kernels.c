/* fusiongym.reward.costmodel._kernels: the cost model's network, compiled.
 *
 * forward(static_proj, plan_node, w_plan, in_indptr, in_src, in_mask, in_edge_attr, w_self, w_msg, w_edge, b_msg,
 *         labels, group_input, w_head, schedule_bias, schedule, w_out, prior, h0, pooled, out, b_out, y_std,
 *         y_mean, prior_scale)
 *
 * computes, for n nodes in G groups (H hidden, P plan node features, F edge features, K group inputs, D head):
 *   h0[i]  = relu(static_proj[i] + plan_node[i] w_plan)                        [n, H]
 *   m[i]   = sum of h0[in_src e] over the in-edges e of i with in_mask[e]       (CSR by consumer)
 *   a[i]   = sum of in_edge_attr[e] over the same edges                         [n, F]
 *   h1[i]  = h0[i] + relu(h0[i] w_self + m[i] w_msg + a[i] w_edge + b_msg)     (only pooled per group)
 *   z[g]   = relu([mean of h1 over g ; group_input[g] ; prior[g] prior_scale] w_head + schedule_bias[schedule[g]])
 *   out[g] = prior[g] + (z[g] . w_out + b_out) y_std + y_mean                   [G] ln µs
 *
 * which is ``CostModel``'s network (reward/costmodel/model.py). In numpy it was fifteen
 * passes over [N, H] and [G, D] arrays, ~0.9 ms of a 10k-edge plan; here it is one pass over
 * nodes and edges and one over groups. At the shipped widths (H = 16, D = 32) on a CPU with
 * AVX2 and FMA the rows are held in vector registers (two for a node, four for a group);
 * other widths or CPUs take the plain loops, which compute the same sums (4x slower: their
 * accumulators live in memory). h0 [n, H] and pooled [G, H] (the group sums, then scaled by
 * each group's 1 / size as its row enters the head) are the caller's scratch,
 * kept between calls: fresh pages would cost more faults than the arithmetic. Float arrays
 * are contiguous float32 (prior and out float64), indices int64.
 *
 * group_sums(values, labels, out): out[g] = sum of values[i] over the nodes i of group g
 * ([N, C] float32 rows, int64 labels, [G, C] float32 out): a plan's group features.
 *
 * edge_pass(src, dst, labels, edge_bytes, internal, external_read, leaves, in_degree, out_degree):
 * one pass over a plan's edges: internal[e] (uint8) when both ends share a group; otherwise
 * the bytes add to the consumer's external_read (float64, pre-filled with its own reads) and
 * the producer leaves[] its group (uint8); internal edges count in the in/out degrees (float64).
 * The same numbers as ``features.group_example`` computes with bincounts for one group.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "../buffers.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FAST_HIDDEN 16
#define FAST_HEAD 32
#define MAX_FAST_EDGE_FEATURES 8
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_PATH 1   /* compiled for AVX2 + FMA, chosen at run time; other CPUs take the plain loops */
#include <immintrin.h>
#endif

typedef struct {
    Py_ssize_t n, hidden, plan, edge_features, groups, inputs, head;
    const float *static_proj, *plan_node, *w_plan, *in_edge_attr, *w_self, *w_msg, *w_edge, *b_msg, *group_input,
        *w_head, *schedule_bias, *w_out;
    const int64_t *indptr, *in_src, *label, *schedule;
    const unsigned char *in_mask;
    const double *prior;
    double b_out, y_std, y_mean, prior_scale;
    float *h0, *pooled, *scratch;   /* scratch [2 * max(H, D) + F] */
    float *inverse_size;            /* [G] 1 / nodes of the group */
    double *out;
} Network;

static inline float relu(float x) { return x > 0.0f ? x : 0.0f; }

/* acc[0:cols] += x[0:rows] W (W row-major [rows, cols]). */
static void add_vector_matrix(float *acc, const float *x, const float *w, Py_ssize_t rows, Py_ssize_t cols) {
    for (Py_ssize_t r = 0; r < rows; r++)
        for (Py_ssize_t c = 0; c < cols; c++) acc[c] += x[r] * w[r * cols + c];
}

static void forward_plain(const Network *f) {
    Py_ssize_t hidden = f->hidden, head = f->head;
    float *acc = f->scratch, *message = f->scratch + (hidden > head ? hidden : head), *edge_sum = message +
        (hidden > head ? hidden : head);
    for (Py_ssize_t i = 0; i < f->n; i++) {
        memcpy(acc, f->static_proj + i * hidden, (size_t)hidden * sizeof(float));
        add_vector_matrix(acc, f->plan_node + i * f->plan, f->w_plan, f->plan, hidden);
        for (Py_ssize_t c = 0; c < hidden; c++) f->h0[i * hidden + c] = relu(acc[c]);
    }
    for (Py_ssize_t i = 0; i < f->n; i++) {
        const float *own = f->h0 + i * hidden;
        memset(message, 0, (size_t)hidden * sizeof(float));
        memset(edge_sum, 0, (size_t)f->edge_features * sizeof(float));
        for (int64_t e = f->indptr[i]; e < f->indptr[i + 1]; e++)
            if (f->in_mask[e]) {
                for (Py_ssize_t c = 0; c < hidden; c++) message[c] += f->h0[f->in_src[e] * hidden + c];
                for (Py_ssize_t k = 0; k < f->edge_features; k++)
                    edge_sum[k] += f->in_edge_attr[e * f->edge_features + k];
            }
        memcpy(acc, f->b_msg, (size_t)hidden * sizeof(float));
        add_vector_matrix(acc, own, f->w_self, hidden, hidden);
        add_vector_matrix(acc, message, f->w_msg, hidden, hidden);
        add_vector_matrix(acc, edge_sum, f->w_edge, f->edge_features, hidden);
        float *sum = f->pooled + f->label[i] * hidden;
        for (Py_ssize_t c = 0; c < hidden; c++) sum[c] += own[c] + relu(acc[c]);
    }
    for (Py_ssize_t g = 0; g < f->groups; g++) {
        memcpy(acc, f->schedule_bias + f->schedule[g] * head, (size_t)head * sizeof(float));
        float *mean = f->pooled + g * hidden;
        for (Py_ssize_t c = 0; c < hidden; c++) mean[c] *= f->inverse_size[g];
        add_vector_matrix(acc, mean, f->w_head, hidden, head);
        add_vector_matrix(acc, f->group_input + g * f->inputs, f->w_head + hidden * head, f->inputs, head);
        float prior_input = (float)(f->prior[g] * f->prior_scale);
        add_vector_matrix(acc, &prior_input, f->w_head + (hidden + f->inputs) * head, 1, head);
        double score = f->b_out;
        for (Py_ssize_t c = 0; c < head; c++) score += (double)f->w_out[c] * relu(acc[c]);
        f->out[g] = f->prior[g] + score * f->y_std + f->y_mean;
    }
}

#ifdef HAVE_AVX2_PATH
/* The same sums at H = 16, D = 32 and F <= 8, rows in AVX registers. */
__attribute__((target("avx2,fma"))) static void forward_avx2(const Network *f) {
    const __m256 zero = _mm256_setzero_ps();
    const Py_ssize_t features = f->edge_features;
    float message[FAST_HIDDEN], edge_sum[MAX_FAST_EDGE_FEATURES];
    for (Py_ssize_t i = 0; i < f->n; i++) {
        __m256 lo = _mm256_loadu_ps(f->static_proj + i * 16), hi = _mm256_loadu_ps(f->static_proj + i * 16 + 8);
        for (Py_ssize_t r = 0; r < f->plan; r++) {
            __m256 x = _mm256_set1_ps(f->plan_node[i * f->plan + r]);
            lo = _mm256_fmadd_ps(x, _mm256_loadu_ps(f->w_plan + r * 16), lo);
            hi = _mm256_fmadd_ps(x, _mm256_loadu_ps(f->w_plan + r * 16 + 8), hi);
        }
        _mm256_storeu_ps(f->h0 + i * 16, _mm256_max_ps(lo, zero));
        _mm256_storeu_ps(f->h0 + i * 16 + 8, _mm256_max_ps(hi, zero));
    }
    for (Py_ssize_t i = 0; i < f->n; i++) {
        const float *own = f->h0 + i * 16;
        __m256 m_lo = zero, m_hi = zero;
        memset(edge_sum, 0, sizeof(edge_sum));
        for (int64_t e = f->indptr[i]; e < f->indptr[i + 1]; e++)
            if (f->in_mask[e]) {
                const float *from = f->h0 + f->in_src[e] * 16;
                m_lo = _mm256_add_ps(m_lo, _mm256_loadu_ps(from));
                m_hi = _mm256_add_ps(m_hi, _mm256_loadu_ps(from + 8));
                for (Py_ssize_t k = 0; k < features; k++) edge_sum[k] += f->in_edge_attr[e * features + k];
            }
        _mm256_storeu_ps(message, m_lo);
        _mm256_storeu_ps(message + 8, m_hi);
        /* Four accumulator pairs (self / message rows, even / odd): four independent FMA chains
         * instead of one, which would wait on the FMA latency every row. */
        __m256 self_lo = _mm256_loadu_ps(f->b_msg), self_hi = _mm256_loadu_ps(f->b_msg + 8);
        __m256 self_lo2 = zero, self_hi2 = zero, msg_lo = zero, msg_hi = zero, msg_lo2 = zero, msg_hi2 = zero;
        for (int r = 0; r < 16; r += 2) {
            const float *ws = f->w_self + r * 16, *wm = f->w_msg + r * 16;
            __m256 x = _mm256_set1_ps(own[r]), x2 = _mm256_set1_ps(own[r + 1]);
            __m256 y = _mm256_set1_ps(message[r]), y2 = _mm256_set1_ps(message[r + 1]);
            self_lo = _mm256_fmadd_ps(x, _mm256_loadu_ps(ws), self_lo);
            self_hi = _mm256_fmadd_ps(x, _mm256_loadu_ps(ws + 8), self_hi);
            self_lo2 = _mm256_fmadd_ps(x2, _mm256_loadu_ps(ws + 16), self_lo2);
            self_hi2 = _mm256_fmadd_ps(x2, _mm256_loadu_ps(ws + 24), self_hi2);
            msg_lo = _mm256_fmadd_ps(y, _mm256_loadu_ps(wm), msg_lo);
            msg_hi = _mm256_fmadd_ps(y, _mm256_loadu_ps(wm + 8), msg_hi);
            msg_lo2 = _mm256_fmadd_ps(y2, _mm256_loadu_ps(wm + 16), msg_lo2);
            msg_hi2 = _mm256_fmadd_ps(y2, _mm256_loadu_ps(wm + 24), msg_hi2);
        }
        for (Py_ssize_t k = 0; k < features; k++) {
            __m256 a = _mm256_set1_ps(edge_sum[k]);
            msg_lo = _mm256_fmadd_ps(a, _mm256_loadu_ps(f->w_edge + k * 16), msg_lo);
            msg_hi = _mm256_fmadd_ps(a, _mm256_loadu_ps(f->w_edge + k * 16 + 8), msg_hi);
        }
        __m256 lo = _mm256_add_ps(_mm256_add_ps(self_lo, self_lo2), _mm256_add_ps(msg_lo, msg_lo2));
        __m256 hi = _mm256_add_ps(_mm256_add_ps(self_hi, self_hi2), _mm256_add_ps(msg_hi, msg_hi2));
        lo = _mm256_add_ps(_mm256_loadu_ps(own), _mm256_max_ps(lo, zero));
        hi = _mm256_add_ps(_mm256_loadu_ps(own + 8), _mm256_max_ps(hi, zero));
        float *sum = f->pooled + f->label[i] * 16;
        _mm256_storeu_ps(sum, _mm256_add_ps(_mm256_loadu_ps(sum), lo));
        _mm256_storeu_ps(sum + 8, _mm256_add_ps(_mm256_loadu_ps(sum + 8), hi));
    }
    for (Py_ssize_t g = 0; g < f->groups; g++) {
        const float *bias = f->schedule_bias + f->schedule[g] * 32;
        __m256 z[4], y[4];   /* two FMA chains: the pooled rows and the group-input rows */
        for (int q = 0; q < 4; q++) z[q] = _mm256_loadu_ps(bias + 8 * q), y[q] = zero;
        for (int r = 0; r < 16; r++) {
            __m256 x = _mm256_set1_ps(f->pooled[g * 16 + r] * f->inverse_size[g]);
            for (int q = 0; q < 4; q++) z[q] = _mm256_fmadd_ps(x, _mm256_loadu_ps(f->w_head + r * 32 + 8 * q), z[q]);
        }
        const float *w_inputs = f->w_head + 16 * 32;
        for (Py_ssize_t r = 0; r < f->inputs; r++) {
            __m256 x = _mm256_set1_ps(f->group_input[g * f->inputs + r]);
            for (int q = 0; q < 4; q++)
                y[q] = _mm256_fmadd_ps(x, _mm256_loadu_ps(w_inputs + r * 32 + 8 * q), y[q]);
        }
        __m256 prior_input = _mm256_set1_ps((float)(f->prior[g] * f->prior_scale));
        for (int q = 0; q < 4; q++)
            y[q] = _mm256_fmadd_ps(prior_input, _mm256_loadu_ps(w_inputs + f->inputs * 32 + 8 * q), y[q]);
        __m256 dot = zero;
        for (int q = 0; q < 4; q++)
            dot = _mm256_fmadd_ps(_mm256_max_ps(_mm256_add_ps(z[q], y[q]), zero), _mm256_loadu_ps(f->w_out + 8 * q), dot);
        float lanes[8];
        _mm256_storeu_ps(lanes, dot);
        double score = f->b_out;
        for (int q = 0; q < 8; q++) score += lanes[q];
        f->out[g] = f->prior[g] + score * f->y_std + f->y_mean;
    }
}

#endif

/* Indices the loops follow unchecked: row pointers, edge sources, group labels, schedules. */
static int check_indices(const Network *f, Py_ssize_t edges, Py_ssize_t schedules) {
    if (f->indptr[0] != 0 || f->indptr[f->n] != edges) {
        PyErr_Format(PyExc_ValueError, "in_indptr must run from 0 to the %zd edges", edges);
        return -1;
    }
    for (Py_ssize_t i = 0; i < f->n; i++)
        if (f->indptr[i + 1] < f->indptr[i] || f->label[i] < 0 || f->label[i] >= f->groups) {
            PyErr_Format(PyExc_ValueError, "node %zd: decreasing in_indptr or group %lld outside 0..%zd", i,
                         (long long)f->label[i], f->groups - 1);
            return -1;
        }
    for (Py_ssize_t e = 0; e < edges; e++)
        if (f->in_src[e] < 0 || f->in_src[e] >= f->n) {
            PyErr_Format(PyExc_ValueError, "edge %zd comes from node %lld outside 0..%zd", e, (long long)f->in_src[e],
                         f->n - 1);
            return -1;
        }
    return check_schedules(f->schedule, f->groups, schedules);
}

/* inverse_size[g] = 1 / (nodes labelled g), from labels already checked; a group without nodes keeps 1. */
static void count_inverse_sizes(const Network *f) {
    memset(f->inverse_size, 0, (size_t)f->groups * sizeof(float));
    for (Py_ssize_t i = 0; i < f->n; i++) f->inverse_size[f->label[i]] += 1.0f;
    for (Py_ssize_t g = 0; g < f->groups; g++)
        f->inverse_size[g] = f->inverse_size[g] > 0.0f ? 1.0f / f->inverse_size[g] : 1.0f;
}

enum {
    STATIC, PLAN_NODE, W_PLAN, IN_INDPTR, IN_SRC, IN_MASK, IN_EDGE_ATTR, W_SELF, W_MSG, W_EDGE, B_MSG, LABELS,
    GROUP_INPUT, W_HEAD, SCHEDULE_BIAS, SCHEDULE, W_OUT, PRIOR, H0, POOLED, OUT, COUNT
};

static PyObject *forward(PyObject *self, PyObject *args) {
    Py_buffer v[COUNT];
    Network f;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*w*w*w*dddd", &v[STATIC], &v[PLAN_NODE],
                          &v[W_PLAN], &v[IN_INDPTR], &v[IN_SRC], &v[IN_MASK], &v[IN_EDGE_ATTR], &v[W_SELF],
                          &v[W_MSG], &v[W_EDGE], &v[B_MSG], &v[LABELS], &v[GROUP_INPUT], &v[W_HEAD],
                          &v[SCHEDULE_BIAS], &v[SCHEDULE], &v[W_OUT], &v[PRIOR], &v[H0], &v[POOLED], &v[OUT],
                          &f.b_out, &f.y_std, &f.y_mean, &f.prior_scale))
        return NULL;
    PyObject *result = NULL;
    f.scratch = NULL;
    f.hidden = v[B_MSG].len / 4, f.n = v[LABELS].len / 8, f.groups = v[OUT].len / 8, f.head = v[W_OUT].len / 4;
    f.plan = f.hidden ? v[W_PLAN].len / (4 * f.hidden) : 0;
    f.edge_features = f.hidden ? v[W_EDGE].len / (4 * f.hidden) : 0;
    f.inputs = f.groups ? v[GROUP_INPUT].len / (4 * f.groups) : 0;
    Py_ssize_t edges = v[IN_SRC].len / 8, schedules = f.head ? v[SCHEDULE_BIAS].len / (4 * f.head) : 0;
    Py_ssize_t n = f.n, hidden = f.hidden, head = f.head;
    if (check(&v[STATIC], "static_proj", 4, n * hidden) < 0 || check(&v[PLAN_NODE], "plan_node", 4, n * f.plan) < 0 ||
        check(&v[W_PLAN], "w_plan", 4, f.plan * hidden) < 0 || check(&v[IN_INDPTR], "in_indptr", 8, n + 1) < 0 ||
        check(&v[IN_SRC], "in_src", 8, edges) < 0 || check(&v[IN_MASK], "in_mask", 1, edges) < 0 ||
        check(&v[IN_EDGE_ATTR], "in_edge_attr", 4, edges * f.edge_features) < 0 ||
        check(&v[W_SELF], "w_self", 4, hidden * hidden) < 0 || check(&v[W_MSG], "w_msg", 4, hidden * hidden) < 0 ||
        check(&v[W_EDGE], "w_edge", 4, f.edge_features * hidden) < 0 ||
        check(&v[GROUP_INPUT], "group_input", 4, f.groups * f.inputs) < 0 ||
        check(&v[W_HEAD], "w_head", 4, (hidden + f.inputs + 1) * head) < 0 ||
        check(&v[SCHEDULE_BIAS], "schedule_bias", 4, schedules * head) < 0 ||
        check(&v[SCHEDULE], "schedule", 8, f.groups) < 0 || check(&v[PRIOR], "prior", 8, f.groups) < 0 ||
        check(&v[H0], "h0", 4, n * hidden) < 0 ||
        check(&v[POOLED], "pooled", 4, f.groups * hidden) < 0)
        goto done;
    f.static_proj = v[STATIC].buf, f.plan_node = v[PLAN_NODE].buf, f.w_plan = v[W_PLAN].buf;
    f.indptr = v[IN_INDPTR].buf, f.in_src = v[IN_SRC].buf, f.in_mask = v[IN_MASK].buf;
    f.in_edge_attr = v[IN_EDGE_ATTR].buf, f.w_edge = v[W_EDGE].buf;
    f.w_self = v[W_SELF].buf, f.w_msg = v[W_MSG].buf, f.b_msg = v[B_MSG].buf, f.label = v[LABELS].buf;
    f.group_input = v[GROUP_INPUT].buf, f.w_head = v[W_HEAD].buf, f.schedule_bias = v[SCHEDULE_BIAS].buf;
    f.schedule = v[SCHEDULE].buf, f.w_out = v[W_OUT].buf, f.prior = v[PRIOR].buf;
    f.h0 = v[H0].buf, f.pooled = v[POOLED].buf, f.out = v[OUT].buf;
    if (check_indices(&f, edges, schedules) < 0) goto done;
    Py_ssize_t scratch_floats = 2 * (hidden > head ? hidden : head) + f.edge_features + 1;
    f.scratch = malloc((size_t)(scratch_floats + f.groups) * sizeof(float));
    if (!f.scratch) {
        PyErr_NoMemory();
        goto done;
    }
    f.inverse_size = f.scratch + scratch_floats;
    count_inverse_sizes(&f);
    memset(f.pooled, 0, (size_t)(f.groups * hidden) * sizeof(float));
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AVX2_PATH
    if (hidden == FAST_HIDDEN && head == FAST_HEAD && f.edge_features <= MAX_FAST_EDGE_FEATURES &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        forward_avx2(&f);
    else
        forward_plain(&f);
#else
    forward_plain(&f);
#endif
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    free(f.scratch);
    for (int i = 0; i < COUNT; i++) PyBuffer_Release(&v[i]);
    return result;
}

static PyObject *group_sums(PyObject *self, PyObject *args) {
    Py_buffer values, labels, out;
    if (!PyArg_ParseTuple(args, "y*y*w*", &values, &labels, &out)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = labels.len / 8, columns = n ? values.len / (4 * n) : 0, groups = columns ? out.len / (4 * columns) : 0;
    if (check(&labels, "labels", 8, n) < 0 || check(&values, "values", 4, n * columns) < 0 ||
        check(&out, "out", 4, groups * columns) < 0)
        goto done;
    const int64_t *label = labels.buf;
    const float *row = values.buf;
    float *sums = out.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (label[i] < 0 || label[i] >= groups) {
            PyErr_Format(PyExc_ValueError, "node %zd has group %lld outside 0..%zd", i, (long long)label[i], groups - 1);
            goto done;
        }
    memset(sums, 0, (size_t)(groups * columns) * sizeof(float));
    for (Py_ssize_t i = 0; i < n; i++)
        for (Py_ssize_t c = 0; c < columns; c++) sums[label[i] * columns + c] += row[i * columns + c];
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&values); PyBuffer_Release(&labels); PyBuffer_Release(&out);
    return result;
}

static PyObject *edge_pass(PyObject *self, PyObject *args) {
    enum { SRC, DST, LABELS_, BYTES, INTERNAL, EXTERNAL, LEAVES, IN_DEG, OUT_DEG, COUNT_ };
    Py_buffer v[COUNT_];
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*w*w*w*w*", &v[SRC], &v[DST], &v[LABELS_], &v[BYTES], &v[INTERNAL],
                          &v[EXTERNAL], &v[LEAVES], &v[IN_DEG], &v[OUT_DEG]))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t edges = v[SRC].len / 8, n = v[LABELS_].len / 8;
    if (check(&v[DST], "dst", 8, edges) < 0 || check(&v[BYTES], "edge_bytes", 8, edges) < 0 ||
        check(&v[INTERNAL], "internal", 1, edges) < 0 || check(&v[EXTERNAL], "external_read", 8, n) < 0 ||
        check(&v[LEAVES], "leaves", 1, n) < 0 || check(&v[IN_DEG], "in_degree", 8, n) < 0 ||
        check(&v[OUT_DEG], "out_degree", 8, n) < 0)
        goto done;
    const int64_t *src = v[SRC].buf, *dst = v[DST].buf, *label = v[LABELS_].buf;
    const double *bytes = v[BYTES].buf;
    unsigned char *internal = v[INTERNAL].buf, *leaves = v[LEAVES].buf;
    double *external = v[EXTERNAL].buf, *in_degree = v[IN_DEG].buf, *out_degree = v[OUT_DEG].buf;
    for (Py_ssize_t e = 0; e < edges; e++)
        if (src[e] < 0 || src[e] >= n || dst[e] < 0 || dst[e] >= n) {
            PyErr_Format(PyExc_ValueError, "edge %zd (%lld -> %lld) names a node outside 0..%zd", e, (long long)src[e],
                         (long long)dst[e], n - 1);
            goto done;
        }
    for (Py_ssize_t e = 0; e < edges; e++) {
        int inside = label[src[e]] == label[dst[e]];
        internal[e] = (unsigned char)inside;
        if (inside) {
            in_degree[dst[e]] += 1.0;
            out_degree[src[e]] += 1.0;
        } else {
            external[dst[e]] += bytes[e];
            leaves[src[e]] = 1;
        }
    }
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < COUNT_; i++) PyBuffer_Release(&v[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS,
     "forward(static_proj, plan_node, w_plan, in_indptr, in_src, in_mask, in_edge_attr, w_self, w_msg, w_edge, b_msg, "
     "labels, group_input, w_head, schedule_bias, schedule, w_out, prior, h0, pooled, out, b_out, y_std, y_mean, "
     "prior_scale): "
     "ln µs of every group."},
    {"group_sums", group_sums, METH_VARARGS, "group_sums(values, labels, out): per-group sums of node rows."},
    {"edge_pass", edge_pass, METH_VARARGS,
     "edge_pass(src, dst, labels, edge_bytes, internal, external_read, leaves, in_degree, out_degree): "
     "a plan's per-edge features in one pass."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
