/* fusiongym.reward.costmodel._kernels: the cost model's network, compiled.
 *
 * forward(static_proj, plan_node, w_plan, in_indptr, in_src, in_mask, in_edge_attr, w_self, w_msg, w_edge, b_msg,
 *         labels, group_input, w_head, schedule_bias, schedule, w_out, prior, h0, pooled, out, b_out, y_std,
 *         y_mean, prior_scale)
 *
 * computes, for n nodes in G groups (H hidden, P plan node features, F edge features, K group inputs, D head):
 *   h0[i]  = relu(static_proj[i] + plan_node[:, i] w_plan)                     [n, H]
 *   m[i]   = sum of h0[in_src e] over the in-edges e of i with in_mask[e]       (CSR by consumer)
 *   a[i]   = sum of in_edge_attr[e] over the same edges                         [n, F]
 *   h1[i]  = h0[i] + relu(h0[i] w_self + m[i] w_msg + a[i] w_edge + b_msg)     (only pooled per group)
 *   z[g]   = relu([mean of h1 over g ; group_input[g] ; prior[g] prior_scale] w_head + schedule_bias[schedule[g]])
 *   out[g] = prior[g] + (z[g] . w_out + b_out) y_std + y_mean                   [G] ln µs
 *
 * which is ``CostModel``'s network (reward/costmodel/model.py). In numpy it was fifteen
 * passes over [N, H] and [G, D] arrays, ~0.9 ms of a 10k-edge plan; here it is one pass over
 * nodes and edges and one over groups. At the shipped widths (H = 16, D = 32) on a CPU with
 * AVX2 and FMA the rows are held in vector registers (two for a node, four for a group); a node
 * without an internal in-edge skips the message rows, which would add zeros. Other widths or CPUs
 * take the plain loops, which compute the same sums (4x slower: their accumulators live in memory).
 * h0 [n, H] and pooled [G, H] (the group sums, then scaled by each group's 1 / size as its row
 * enters the head) are the caller's scratch, kept between calls: fresh pages would cost more faults
 * than the arithmetic. Float arrays are contiguous float32 (prior and out float64), indices int64;
 * plan_node is [P, n], feature by feature (as ``plan_pass`` writes it).
 *
 * plan_pass(in_indptr, in_src, in_edge_bytes, out_indptr, out_dst, labels, own_read_bytes, bytes_written,
 *           always_written, summed, in_internal, node, group)
 * computes a plan's features (``features.plan_features``) in one pass over nodes, each node's in-edges
 * (CSR by consumer, as ``forward`` reads them) then its out-edges (CSR by producer): in_internal[e] (uint8)
 * when an in-edge's ends share a group; a node's external read bytes (its own reads plus the bytes of
 * crossing in-edges, added in edge order), its written bytes (when an output crosses or leaves the graph),
 * its internal in / out degrees; node [4, n] = [1 + read, 1 + written, min(in, 8) / 4, min(out, 8) / 4],
 * feature by feature (numpy's log2 is 30x faster over a contiguous row than over a strided column);
 * the group sums of ``summed`` [n, C] (FLOPs, -, -, parameter bytes, -, kind one-hot) with read, written and
 * in-degree filled in; group [G, C + 2] = 1 + [sums ; nodes ; FLOPs / max(1, read + written)]. The caller
 * takes log2 / 16 of the "1 +" columns with numpy's log2, so the numbers are bit for bit those of
 * ``features._node_features`` and ``_group_rows`` summed in the same order (float32 group sums in node
 * order, float64 reads in edge order); a test checks it.
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
        for (Py_ssize_t r = 0; r < f->plan; r++) {
            float x = f->plan_node[r * f->n + i];
            for (Py_ssize_t c = 0; c < hidden; c++) acc[c] += x * f->w_plan[r * hidden + c];
        }
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
            __m256 x = _mm256_set1_ps(f->plan_node[r * f->n + i]);
            lo = _mm256_fmadd_ps(x, _mm256_loadu_ps(f->w_plan + r * 16), lo);
            hi = _mm256_fmadd_ps(x, _mm256_loadu_ps(f->w_plan + r * 16 + 8), hi);
        }
        _mm256_storeu_ps(f->h0 + i * 16, _mm256_max_ps(lo, zero));
        _mm256_storeu_ps(f->h0 + i * 16 + 8, _mm256_max_ps(hi, zero));
    }
    for (Py_ssize_t i = 0; i < f->n; i++) {
        const float *own = f->h0 + i * 16;
        __m256 m_lo = zero, m_hi = zero;
        int has_message = 0;   /* an internal in-edge: without one the message rows add zeros, skipped */
        memset(edge_sum, 0, sizeof(edge_sum));
        for (int64_t e = f->indptr[i]; e < f->indptr[i + 1]; e++)
            if (f->in_mask[e]) {
                has_message = 1;
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
            if (has_message) {
                msg_lo = _mm256_fmadd_ps(y, _mm256_loadu_ps(wm), msg_lo);
                msg_hi = _mm256_fmadd_ps(y, _mm256_loadu_ps(wm + 8), msg_hi);
                msg_lo2 = _mm256_fmadd_ps(y2, _mm256_loadu_ps(wm + 16), msg_lo2);
                msg_hi2 = _mm256_fmadd_ps(y2, _mm256_loadu_ps(wm + 24), msg_hi2);
            }
        }
        for (Py_ssize_t k = 0; has_message && k < features; k++) {
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
        if (f->indptr[i + 1] < f->indptr[i]) {
            PyErr_Format(PyExc_ValueError, "in_indptr decreases at node %zd", i);
            return -1;
        }
    if (check_labels(f->label, f->n, f->groups) < 0) return -1;
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

/* The plan pass (see the top of the file): node by node, its in-edges then its out-edges. */
static void plan_rows(Py_ssize_t n, Py_ssize_t columns, const int64_t *in_indptr, const int64_t *in_src,
                      const double *in_bytes, const int64_t *out_indptr, const int64_t *out_dst, const int64_t *label,
                      const double *own_read, const double *bytes_written, const unsigned char *always_written,
                      const float *summed, unsigned char *in_internal, float *node, float *sums) {
    for (Py_ssize_t i = 0; i < n; i++) {
        double external_read = own_read[i], in_degree = 0.0, out_degree = 0.0;
        int leaves = 0;
        for (int64_t e = in_indptr[i]; e < in_indptr[i + 1]; e++) {
            int inside = label[in_src[e]] == label[i];
            in_internal[e] = (unsigned char)inside;
            if (inside) in_degree += 1.0;
            else external_read += in_bytes[e];
        }
        for (int64_t e = out_indptr[i]; e < out_indptr[i + 1]; e++) {
            if (label[out_dst[e]] == label[i]) out_degree += 1.0;
            else leaves = 1;
        }
        double written = (always_written[i] || leaves) ? bytes_written[i] : 0.0;
        node[i] = (float)external_read + 1.0f;
        node[n + i] = (float)written + 1.0f;
        node[2 * n + i] = (float)((in_degree < 8.0 ? in_degree : 8.0) * 0.25);
        node[3 * n + i] = (float)((out_degree < 8.0 ? out_degree : 8.0) * 0.25);
        const float *terms = summed + i * columns;
        float *sum = sums + label[i] * columns;
        sum[0] += terms[0];
        sum[1] += (float)external_read;
        sum[2] += (float)written;
        sum[3] += terms[3];
        sum[4] += (float)in_degree;
        for (Py_ssize_t c = 5; c < columns; c++) sum[c] += terms[c];
    }
}

/* group[g] = 1 + [sums[g] ; nodes ; FLOPs / max(1, read + written bytes)], the pre-log group rows. */
static void group_rows(Py_ssize_t groups, Py_ssize_t columns, const float *sums, float *group) {
    for (Py_ssize_t g = 0; g < groups; g++) {
        const float *sum = sums + g * columns;
        float *row = group + g * (columns + 2), nodes = 0.0f, moved = sum[1] + sum[2];
        for (Py_ssize_t c = 0; c < columns; c++) row[c] = sum[c] + 1.0f;
        for (Py_ssize_t c = 5; c < columns; c++) nodes += sum[c];
        row[columns] = nodes + 1.0f;
        row[columns + 1] = sum[0] / (moved > 1.0f ? moved : 1.0f) + 1.0f;
    }
}

static PyObject *plan_pass(PyObject *self, PyObject *args) {
    enum { IN_PTR, IN_SRC_, IN_BYTES, OUT_PTR, OUT_DST, LABELS_, OWN_READ, WRITTEN, ALWAYS, SUMMED, IN_INTERNAL,
           NODE, GROUP, COUNT_ };
    Py_buffer v[COUNT_];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*w*w*w*", &v[IN_PTR], &v[IN_SRC_], &v[IN_BYTES], &v[OUT_PTR],
                          &v[OUT_DST], &v[LABELS_], &v[OWN_READ], &v[WRITTEN], &v[ALWAYS], &v[SUMMED],
                          &v[IN_INTERNAL], &v[NODE], &v[GROUP]))
        return NULL;
    PyObject *result = NULL;
    float *sums = NULL;
    Py_ssize_t n = v[LABELS_].len / 8, edges = v[IN_SRC_].len / 8;
    Py_ssize_t columns = n ? v[SUMMED].len / (4 * n) : 0, groups = columns ? v[GROUP].len / (4 * (columns + 2)) : 0;
    if (check(&v[IN_PTR], "in_indptr", 8, n + 1) < 0 || check(&v[IN_BYTES], "in_edge_bytes", 8, edges) < 0 ||
        check(&v[OUT_PTR], "out_indptr", 8, n + 1) < 0 || check(&v[OUT_DST], "out_dst", 8, edges) < 0 ||
        check(&v[OWN_READ], "own_read_bytes", 8, n) < 0 || check(&v[WRITTEN], "bytes_written", 8, n) < 0 ||
        check(&v[ALWAYS], "always_written", 1, n) < 0 || check(&v[SUMMED], "summed", 4, n * columns) < 0 ||
        check(&v[IN_INTERNAL], "in_internal", 1, edges) < 0 || check(&v[NODE], "node", 4, n * 4) < 0 ||
        check(&v[GROUP], "group", 4, groups * (columns + 2)) < 0)
        goto done;
    if (n > 0 && columns < 5) {
        PyErr_Format(PyExc_ValueError, "summed needs at least 5 columns (FLOPs .. internal in-edges), got %zd",
                     columns);
        goto done;
    }
    /* The plan's labels are checked; the graph's own arrays (``GraphTensors``) are built together and trusted. */
    const int64_t *label = v[LABELS_].buf;
    if (check_labels(label, n, groups) < 0) goto done;
    sums = calloc((size_t)(groups * columns) + 1, sizeof(float));
    if (!sums) {
        PyErr_NoMemory();
        goto done;
    }
    plan_rows(n, columns, v[IN_PTR].buf, v[IN_SRC_].buf, v[IN_BYTES].buf, v[OUT_PTR].buf, v[OUT_DST].buf, label,
              v[OWN_READ].buf, v[WRITTEN].buf, v[ALWAYS].buf, v[SUMMED].buf, v[IN_INTERNAL].buf, v[NODE].buf, sums);
    group_rows(groups, columns, sums, v[GROUP].buf);
    result = Py_NewRef(Py_None);
done:
    free(sums);
    for (int i = 0; i < COUNT_; i++) PyBuffer_Release(&v[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS,
     "forward(static_proj, plan_node, w_plan, in_indptr, in_src, in_mask, in_edge_attr, w_self, w_msg, w_edge, b_msg, "
     "labels, group_input, w_head, schedule_bias, schedule, w_out, prior, h0, pooled, out, b_out, y_std, y_mean, "
     "prior_scale): "
     "ln µs of every group."},
    {"plan_pass", plan_pass, METH_VARARGS,
     "plan_pass(in_indptr, in_src, in_edge_bytes, out_indptr, out_dst, labels, own_read_bytes, bytes_written, "
     "always_written, summed, in_internal, node, group): a plan's node and group features, before the log."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
