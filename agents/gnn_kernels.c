/* fusiongym.agents._gnn_kernels: the fusion policy's start-state forward pass, compiled.
 *
 * forward(hidden, schedules, layers, weights, code, node_feat, glob, graph_ptr, src, dst, edge_bytes,
 *         scratch, edge_logits, schedule_logits, pooled)
 *
 * computes, for M nodes of B graphs (nodes of graph b: graph_ptr[b] .. graph_ptr[b+1] - 1) and
 * K edges src -> dst, with H hidden units and S schedules:
 *   h[i]   = relu(table[code i] + node_feat[i] W_feat + glob[b])                     encoder [M, H]
 *   per layer: P = h [W_self | W_in | W_out]                                          [M, 3H]
 *   h[i]  += relu(P_self[i] + mean_{e: dst=i} P_in[src e] + mean_{e: src=i} P_out[dst e]
 *                 + ctx_in[i] w_ctx_in + ctx_out[i] w_ctx_out + b)                   (ctx: mean edge bytes)
 *   U[i]   = h[i] W_ends + b_ends                                                     [M, 2H]
 *   edge_logits[e]     = edge_bytes[e] w_bytes + b_edge + sum_j w_edge[j] relu(U[src e, j] + U[dst e, H + j])
 *   schedule_logits[i] = h[i] W_schedule + b_schedule                                 [M, S]
 *   pooled[b]          = mean of h over the nodes of graph b                          [B, H]
 *
 * which is ``KernelEngine``'s network (kernel_engine.py), the exported GNN specialised to
 * graphs in their start state. ``weights`` is one float32 array, laid out as
 * ``KernelEngine.packed`` writes it:
 *   table [R, H], W_feat [F, H], per layer (W [H, 3H], w_ctx_in [H], w_ctx_out [H], b [H]),
 *   W_ends [H, 2H], b_ends [2H], w_edge [H], w_bytes, b_edge, W_schedule [H, S8], b_schedule [S8],
 * S8 being S rounded up to a multiple of 8 (zero columns), so that every product is whole vectors.
 * The whole pass is three node sweeps and three edge sweeps over rows that stay in cache;
 * as numpy matmuls plus per-edge kernels it was twenty passes over [M, 3H] arrays.
 *
 * At H = 8 and H = 16 the loops have constant trip counts: with AVX2 and FMA (chosen at run
 * time on x86-64) a node's rows live in vector registers. Other widths or CPUs take the same
 * code with run-time widths. ``scratch`` [M (4H + 4)] float32 is the caller's, kept between
 * calls. Integer arrays are int64, float arrays contiguous float32.
 *
 * round_half(values, scale, out): out = float(float16(values)) * scale, rounding to nearest
 * even as numpy's ``astype(np.float16)`` does (10x faster here): the features the env stores
 * as float16 are rounded the same way for ``decide``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define NODE_FEATURES 5
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_AVX2_PATH 1   /* compiled for AVX2 + FMA (+ F16C), chosen at run time */
#include <immintrin.h>
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

typedef struct {
    Py_ssize_t nodes, edges, graphs, schedules, layers, rows;
    const float *weights, *node_feat, *glob, *edge_bytes;
    const int64_t *code, *graph_ptr, *src, *dst;
    float *scratch, *edge_logits, *schedule_logits, *pooled;
} Forward;

static inline float relu(float x) { return x > 0.0f ? x : 0.0f; }

static inline Py_ssize_t padded(Py_ssize_t columns) { return (columns + 7) / 8 * 8; }

/* out[0:cols] = bias[0:cols] + x[0:rows] W, W row-major [rows, cols]; bias may be NULL. */
INLINE void row_times_scalar(float *restrict out, const float *restrict x, const float *restrict w,
                             const float *restrict bias, Py_ssize_t rows, Py_ssize_t cols) {
    for (Py_ssize_t j = 0; j < cols; j++) out[j] = bias ? bias[j] : 0.0f;
    for (Py_ssize_t k = 0; k < rows; k++)
        for (Py_ssize_t j = 0; j < cols; j++) out[j] += x[k] * w[k * cols + j];
}

#if defined(__GNUC__) || defined(__clang__)
/* The same product with the sums in up to MAX_VECTORS vectors of 8 floats (registers: AVX
 * in the AVX2 build, SSE pairs otherwise), for cols a multiple of 8 up to 64. */
#define MAX_VECTORS 8
typedef float vec8 __attribute__((vector_size(32), aligned(4)));

INLINE void row_times(float *restrict out, const float *restrict x, const float *restrict w,
                      const float *restrict bias, Py_ssize_t rows, Py_ssize_t cols) {
    const Py_ssize_t vectors = cols / 8;
    if (cols % 8 || vectors > MAX_VECTORS) {
        row_times_scalar(out, x, w, bias, rows, cols);
        return;
    }
    vec8 acc[MAX_VECTORS];
    for (Py_ssize_t i = 0; i < vectors; i++) acc[i] = bias ? *(const vec8 *)(bias + 8 * i) : (vec8){0};
    for (Py_ssize_t k = 0; k < rows; k++) {
        const vec8 scale = (vec8){0} + x[k];
        for (Py_ssize_t i = 0; i < vectors; i++) acc[i] += scale * *(const vec8 *)(w + k * cols + 8 * i);
    }
    for (Py_ssize_t i = 0; i < vectors; i++) *(vec8 *)(out + 8 * i) = acc[i];
}
typedef int32_t vec8i __attribute__((vector_size(32), aligned(4)));

/* into[0:n] += scale from[0:n]. */
INLINE void add_scaled(float *into, const float *from, float scale, Py_ssize_t n) {
    if (n % 8) {
        for (Py_ssize_t j = 0; j < n; j++) into[j] += scale * from[j];
        return;
    }
    for (Py_ssize_t j = 0; j < n; j += 8) *(vec8 *)(into + j) += scale * *(const vec8 *)(from + j);
}

/* row[0:n] += relu(pre + a u + b v + bias) (a convolution's residual update). */
INLINE void add_relu(float *row, const float *pre, float a, const float *u, float b, const float *v, const float *bias,
                     Py_ssize_t n) {
    if (n % 8) {
        for (Py_ssize_t j = 0; j < n; j++) row[j] += relu(pre[j] + a * u[j] + b * v[j] + bias[j]);
        return;
    }
    for (Py_ssize_t j = 0; j < n; j += 8) {
        const vec8 sum = *(const vec8 *)(pre + j) + a * *(const vec8 *)(u + j) + b * *(const vec8 *)(v + j) +
                         *(const vec8 *)(bias + j);
        *(vec8 *)(row + j) += (vec8)((vec8i)sum & (sum > (vec8){0}));   /* relu: keep the positive lanes */
    }
}
#else
#define row_times row_times_scalar

INLINE void add_scaled(float *into, const float *from, float scale, Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) into[j] += scale * from[j];
}

INLINE void add_relu(float *row, const float *pre, float a, const float *u, float b, const float *v, const float *bias,
                     Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) row[j] += relu(pre[j] + a * u[j] + b * v[j] + bias[j]);
}
#endif

/* The pass at width H, S8 = padded(S) (constants where forward_at inlines it). */
INLINE void forward_body(const Forward *f, const Py_ssize_t H, const Py_ssize_t S8) {
    const Py_ssize_t M = f->nodes, K = f->edges, S = f->schedules;
    const int64_t *src = f->src, *dst = f->dst;
    const float *w = f->weights, *table = w;
    w += f->rows * H;
    const float *feat_w = w;
    w += NODE_FEATURES * H;
    const float *layer_w = w;                      /* layers, then the heads */
    const float *ends_w = layer_w + f->layers * (3 * H * H + 3 * H), *ends_b = ends_w + 2 * H * H;
    const float *edge_w = ends_b + 2 * H, w_bytes = edge_w[H], b_edge = edge_w[H + 1];
    const float *schedule_w = edge_w + H + 2, *schedule_b = schedule_w + H * S8;
    float *restrict h = f->scratch, *restrict p = h + M * H, *restrict ctx = p + M * 3 * H;   /* ctx [M, 4]: inv_in,
                                                                                     inv_out, bytes in, bytes out */

    /* Degrees and mean edge bytes per node. */
    memset(ctx, 0, (size_t)(4 * M) * sizeof(float));
    for (Py_ssize_t e = 0; e < K; e++) {
        ctx[4 * dst[e]] += 1.0f, ctx[4 * src[e] + 1] += 1.0f;
        ctx[4 * dst[e] + 2] += f->edge_bytes[e], ctx[4 * src[e] + 3] += f->edge_bytes[e];
    }
    for (Py_ssize_t i = 0; i < M; i++) {
        float *c = ctx + 4 * i;
        c[0] = 1.0f / (c[0] > 1.0f ? c[0] : 1.0f), c[1] = 1.0f / (c[1] > 1.0f ? c[1] : 1.0f);
        c[2] *= c[0], c[3] *= c[1];
    }
    /* Encoder. */
    for (Py_ssize_t b = 0; b < f->graphs; b++)
        for (Py_ssize_t i = f->graph_ptr[b]; i < f->graph_ptr[b + 1]; i++) {
            float *row = h + i * H;
            const float *start = table + f->code[i] * H, *glob = f->glob + b * H;
            float bias[H];
            for (Py_ssize_t j = 0; j < H; j++) bias[j] = start[j] + glob[j];
            row_times(row, f->node_feat + i * NODE_FEATURES, feat_w, bias, NODE_FEATURES, H);
            for (Py_ssize_t j = 0; j < H; j++) row[j] = relu(row[j]);
        }
    /* Convolutions: matmul per node, neighbour means per edge, residual update per node. */
    for (Py_ssize_t l = 0; l < f->layers; l++) {
        const float *conv_w = layer_w + l * (3 * H * H + 3 * H), *w_in = conv_w + 3 * H * H, *w_out = w_in + H,
                    *bias = w_out + H;
        for (Py_ssize_t i = 0; i < M; i++) row_times(p + i * 3 * H, h + i * H, conv_w, NULL, H, 3 * H);
        for (Py_ssize_t e = 0; e < K; e++) {   /* the means go into P's self block, read only by its own node */
            float *into = p + dst[e] * 3 * H, *out_of = p + src[e] * 3 * H;
            const float *from_src = p + src[e] * 3 * H + H, *from_dst = p + dst[e] * 3 * H + 2 * H;
            const float scale_in = ctx[4 * dst[e]], scale_out = ctx[4 * src[e] + 1];
            add_scaled(into, from_src, scale_in, H);
            add_scaled(out_of, from_dst, scale_out, H);
        }
        for (Py_ssize_t i = 0; i < M; i++) {
            const float *c = ctx + 4 * i;
            add_relu(h + i * H, p + i * 3 * H, c[2], w_in, c[3], w_out, bias, H);
        }
    }
    /* Heads: edge-head ends (into P's rows, stride 3H), schedule logits, graph means. */
    for (Py_ssize_t b = 0; b < f->graphs; b++) {
        float *pooled = f->pooled + b * H;
        const Py_ssize_t first = f->graph_ptr[b], last = f->graph_ptr[b + 1];
        for (Py_ssize_t j = 0; j < H; j++) pooled[j] = 0.0f;
        for (Py_ssize_t i = first; i < last; i++) {
            const float *row = h + i * H;
            row_times(p + i * 3 * H, row, ends_w, ends_b, H, 2 * H);
            float schedule[S8];
            row_times(schedule, row, schedule_w, schedule_b, H, S8);
            memcpy(f->schedule_logits + i * S, schedule, (size_t)S * sizeof(float));
            for (Py_ssize_t j = 0; j < H; j++) pooled[j] += row[j];
        }
        const float inv_count = last > first ? 1.0f / (float)(last - first) : 0.0f;
        for (Py_ssize_t j = 0; j < H; j++) pooled[j] *= inv_count;
    }
    for (Py_ssize_t e = 0; e < K; e++) {
        const float *u = p + src[e] * 3 * H, *v = p + dst[e] * 3 * H + H;
        float score = 0.0f;
        for (Py_ssize_t j = 0; j < H; j++) score += edge_w[j] * relu(u[j] + v[j]);
        f->edge_logits[e] = f->edge_bytes[e] * w_bytes + b_edge + score;
    }
}

/* The widths with constant-trip loops (up to 8 schedules); others run with widths read at run time. */
INLINE void forward_at(const Forward *f, Py_ssize_t hidden) {
    const Py_ssize_t schedules = padded(f->schedules);
    if (hidden == 8 && schedules == 8)
        forward_body(f, 8, 8);
    else if (hidden == 16 && schedules == 8)
        forward_body(f, 16, 8);
    else
        forward_body(f, hidden, schedules);
}

static void forward_plain(const Forward *f, Py_ssize_t hidden) { forward_at(f, hidden); }

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2,fma"))) static void forward_avx2(const Forward *f, Py_ssize_t hidden) {
    forward_at(f, hidden);
}
#endif

static int check_length(Py_buffer *view, const char *name, Py_ssize_t itemsize, Py_ssize_t items) {
    if (view->itemsize != itemsize || view->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s must be a contiguous buffer of %zd items of %zd bytes", name, items,
                     itemsize);
        return -1;
    }
    return 0;
}

/* The kernel indexes rows with these unchecked: every one must name a row. */
static int check_indices(const Forward *f) {
    for (Py_ssize_t k = 0; k < f->edges; k++)
        if (f->src[k] < 0 || f->src[k] >= f->nodes || f->dst[k] < 0 || f->dst[k] >= f->nodes) {
            PyErr_Format(PyExc_ValueError, "edge %zd (%lld -> %lld) names a node outside 0..%zd", k,
                         (long long)f->src[k], (long long)f->dst[k], f->nodes - 1);
            return -1;
        }
    for (Py_ssize_t i = 0; i < f->nodes; i++)
        if (f->code[i] < 0 || f->code[i] >= f->rows) {
            PyErr_Format(PyExc_ValueError, "node %zd has table row %lld outside 0..%zd", i, (long long)f->code[i],
                         f->rows - 1);
            return -1;
        }
    for (Py_ssize_t b = 0; b < f->graphs; b++)
        if (f->graph_ptr[b] > f->graph_ptr[b + 1]) {
            PyErr_Format(PyExc_ValueError, "graph_ptr must ascend from 0 to %zd", f->nodes);
            return -1;
        }
    if (f->graph_ptr[0] != 0 || f->graph_ptr[f->graphs] != f->nodes) {
        PyErr_Format(PyExc_ValueError, "graph_ptr must ascend from 0 to %zd", f->nodes);
        return -1;
    }
    return 0;
}

static PyObject *forward(PyObject *self, PyObject *args) {
    enum { WEIGHTS, CODE, NODE_FEAT, GLOB, GRAPH_PTR, SRC, DST, EDGE_BYTES, SCRATCH, EDGE_LOGITS, SCHEDULE, POOLED, COUNT };
    Py_buffer v[COUNT];
    Py_ssize_t hidden, schedules, layers;
    if (!PyArg_ParseTuple(args, "nnny*y*y*y*y*y*y*y*w*w*w*w*", &hidden, &schedules, &layers, &v[WEIGHTS], &v[CODE],
                          &v[NODE_FEAT], &v[GLOB], &v[GRAPH_PTR], &v[SRC], &v[DST], &v[EDGE_BYTES], &v[SCRATCH],
                          &v[EDGE_LOGITS], &v[SCHEDULE], &v[POOLED]))
        return NULL;
    PyObject *result = NULL;
    Forward f = {.nodes = v[CODE].len / 8, .edges = v[SRC].len / 8, .graphs = v[GRAPH_PTR].len / 8 - 1,
                 .schedules = schedules, .layers = layers};
    const Py_ssize_t other_weights = NODE_FEATURES * hidden + layers * (3 * hidden * hidden + 3 * hidden) +
                                     2 * hidden * hidden + 3 * hidden + 2 + (hidden + 1) * padded(schedules);
    f.rows = hidden > 0 ? (v[WEIGHTS].len / 4 - other_weights) / hidden : 0;
    if (hidden <= 0 || schedules <= 0 || layers < 0 || f.graphs < 1 || f.rows <= 0) {
        PyErr_Format(PyExc_ValueError, "bad shapes: hidden %zd, schedules %zd, layers %zd, %zd graphs, %zd table rows",
                     hidden, schedules, layers, f.graphs, f.rows);
        goto done;
    }
    if (check_length(&v[WEIGHTS], "weights", 4, f.rows * hidden + other_weights) < 0 ||
        check_length(&v[CODE], "code", 8, f.nodes) < 0 ||
        check_length(&v[NODE_FEAT], "node_feat", 4, f.nodes * NODE_FEATURES) < 0 ||
        check_length(&v[GLOB], "glob", 4, f.graphs * hidden) < 0 ||
        check_length(&v[SRC], "src", 8, f.edges) < 0 || check_length(&v[DST], "dst", 8, f.edges) < 0 ||
        check_length(&v[EDGE_BYTES], "edge_bytes", 4, f.edges) < 0 ||
        check_length(&v[SCRATCH], "scratch", 4, f.nodes * (4 * hidden + 4)) < 0 ||
        check_length(&v[EDGE_LOGITS], "edge_logits", 4, f.edges) < 0 ||
        check_length(&v[SCHEDULE], "schedule_logits", 4, f.nodes * schedules) < 0 ||
        check_length(&v[POOLED], "pooled", 4, f.graphs * hidden) < 0)
        goto done;
    f.weights = v[WEIGHTS].buf, f.code = v[CODE].buf, f.node_feat = v[NODE_FEAT].buf, f.glob = v[GLOB].buf;
    f.graph_ptr = v[GRAPH_PTR].buf, f.src = v[SRC].buf, f.dst = v[DST].buf, f.edge_bytes = v[EDGE_BYTES].buf;
    f.scratch = v[SCRATCH].buf, f.edge_logits = v[EDGE_LOGITS].buf, f.schedule_logits = v[SCHEDULE].buf;
    f.pooled = v[POOLED].buf;
    if (check_indices(&f) < 0) goto done;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AVX2_PATH
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        forward_avx2(&f, hidden);
    else
        forward_plain(&f, hidden);
#else
    forward_plain(&f, hidden);
#endif
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < COUNT; i++) PyBuffer_Release(&v[i]);
    return result;
}

/* float -> nearest float16 (ties to even) -> float, for finite or infinite x. */
static float round_half_plain(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    const uint32_t sign = bits & 0x80000000u, magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) return x;                           /* inf, nan */
    if (magnitude >= 0x477ff000u) return sign ? -HUGE_VALF : HUGE_VALF;   /* beyond 65504 + half an ulp */
    if (magnitude < 0x38800000u) {                                    /* float16 subnormal: steps of 2^-24 */
        const float steps = nearbyintf(fabsf(x) * 16777216.0f);
        return copysignf(steps / 16777216.0f, x);
    }
    const uint32_t rounded = (magnitude + 0x0fffu + ((magnitude >> 13) & 1u)) & ~0x1fffu;   /* keep 10 bits */
    bits = sign | rounded;
    memcpy(&x, &bits, sizeof x);
    return x;
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx,f16c"))) static Py_ssize_t round_half_f16c(const float *in, float scale, float *out,
                                                                       Py_ssize_t n) {
    const __m256 factor = _mm256_set1_ps(scale);
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m128i half = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_cvtph_ps(half), factor));
    }
    return i;
}
#endif

static PyObject *round_half(PyObject *self, PyObject *args) {
    Py_buffer in, out;
    float scale;
    if (!PyArg_ParseTuple(args, "y*fw*", &in, &scale, &out)) return NULL;
    PyObject *result = NULL;
    const Py_ssize_t n = in.len / 4;
    if (check_length(&in, "values", 4, n) < 0 || check_length(&out, "out", 4, n) < 0) goto done;
    const float *values = in.buf;
    float *rounded = out.buf;
    Py_ssize_t done_items = 0;
#ifdef HAVE_AVX2_PATH
    if (__builtin_cpu_supports("f16c")) done_items = round_half_f16c(values, scale, rounded, n);
#endif
    for (Py_ssize_t i = done_items; i < n; i++) rounded[i] = round_half_plain(values[i]) * scale;
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS,
     "forward(hidden, schedules, layers, weights, code, node_feat, glob, graph_ptr, src, dst, edge_bytes, scratch, "
     "edge_logits, schedule_logits, pooled): the start-state network."},
    {"round_half", round_half, METH_VARARGS, "round_half(values, scale, out): float16-rounded values times scale."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gnn_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__gnn_kernels(void) { return PyModule_Create(&module); }
