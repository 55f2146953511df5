/* fusiongym.agents._gnn_kernels: the graph operations of the fusion policy's forward pass.
 *
 * The dense parts of the network (the per-node matrix products) run as numpy matmuls; what
 * is left is per edge, and is here: a scatter over the edge list is a plain loop in C,
 * where onnxruntime's ScatterElements (or gathers + prefix sums, the ONNX workaround) cost
 * several milliseconds on a 10k-edge graph. ``KernelEngine`` (kernel_engine.py) calls them.
 *
 * conv_update(h, P, src, dst, inv_in, inv_out, ctx_in, ctx_out, w_ctx_in, w_ctx_out, bias)
 *     One EdgeAwareConv, after its matmul P = h [W_self; W_in; W_out]^T ([M, 3H]):
 *     h[i] += relu(P_self[i] + inv_in[i] sum_{e: dst=i} P_in[src e] + inv_out[i] sum_{e: src=i} P_out[dst e]
 *                  + ctx_in[i] w_ctx_in + ctx_out[i] w_ctx_out + bias), in place; P is scratch.
 * edge_scores(UV, src, dst, w, edge_term, out)
 *     The edge head: out[e] = edge_term[e] + sum_j w[j] relu(UV[src e, j] + UV[dst e, H + j]).
 *
 * Buffers are contiguous float32 (int64 for src, dst), passed through the buffer protocol.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int check_length(Py_buffer *view, const char *name, Py_ssize_t itemsize, Py_ssize_t items) {
    if (view->itemsize != itemsize || view->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s must be a contiguous buffer of %zd items of %zd bytes", name, items,
                     itemsize);
        return -1;
    }
    return 0;
}

/* Every edge's ends must be nodes: the kernels index rows with them unchecked. */
static int check_edges(const int64_t *src, const int64_t *dst, Py_ssize_t num_edges, Py_ssize_t num_nodes) {
    for (Py_ssize_t k = 0; k < num_edges; k++)
        if (src[k] < 0 || src[k] >= num_nodes || dst[k] < 0 || dst[k] >= num_nodes) {
            PyErr_Format(PyExc_ValueError, "edge %zd (%lld -> %lld) names a node outside 0..%zd", k,
                         (long long)src[k], (long long)dst[k], num_nodes - 1);
            return -1;
        }
    return 0;
}

static void release(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++) PyBuffer_Release(&views[i]);
}

static PyObject *conv_update(PyObject *self, PyObject *args) {
    enum { H_, P_, SRC, DST, INV_IN, INV_OUT, CTX_IN, CTX_OUT, W_IN, W_OUT, BIAS, COUNT };
    Py_buffer v[COUNT];
    if (!PyArg_ParseTuple(args, "w*w*y*y*y*y*y*y*y*y*y*", &v[H_], &v[P_], &v[SRC], &v[DST], &v[INV_IN],
                          &v[INV_OUT], &v[CTX_IN], &v[CTX_OUT], &v[W_IN], &v[W_OUT], &v[BIAS]))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t m = v[INV_IN].len / 4, hidden = v[BIAS].len / 4, k = v[SRC].len / 8;
    if (check_length(&v[H_], "h", 4, m * hidden) < 0 || check_length(&v[P_], "P", 4, m * 3 * hidden) < 0 ||
        check_length(&v[SRC], "src", 8, k) < 0 || check_length(&v[DST], "dst", 8, k) < 0 ||
        check_length(&v[INV_IN], "inv_in", 4, m) < 0 || check_length(&v[INV_OUT], "inv_out", 4, m) < 0 ||
        check_length(&v[CTX_IN], "ctx_in", 4, m) < 0 || check_length(&v[CTX_OUT], "ctx_out", 4, m) < 0 ||
        check_length(&v[W_IN], "w_ctx_in", 4, hidden) < 0 || check_length(&v[W_OUT], "w_ctx_out", 4, hidden) < 0 ||
        check_length(&v[BIAS], "bias", 4, hidden) < 0)
        goto done;
    const int64_t *src = v[SRC].buf, *dst = v[DST].buf;
    if (check_edges(src, dst, k, m) < 0) goto done;
    float *h = v[H_].buf, *p = v[P_].buf;
    const float *inv_in = v[INV_IN].buf, *inv_out = v[INV_OUT].buf, *ctx_in = v[CTX_IN].buf, *ctx_out = v[CTX_OUT].buf;
    const float *w_in = v[W_IN].buf, *w_out = v[W_OUT].buf, *bias = v[BIAS].buf;
    Py_ssize_t stride = 3 * hidden;
    Py_BEGIN_ALLOW_THREADS
    /* The means are accumulated into P's self block: it is read only by its own node's update. */
    for (Py_ssize_t e = 0; e < k; e++) {
        float *into = p + dst[e] * stride, *out_of = p + src[e] * stride;
        const float *from_src = p + src[e] * stride + hidden, *from_dst = p + dst[e] * stride + 2 * hidden;
        float scale_in = inv_in[dst[e]], scale_out = inv_out[src[e]];
        for (Py_ssize_t j = 0; j < hidden; j++) into[j] += scale_in * from_src[j];
        for (Py_ssize_t j = 0; j < hidden; j++) out_of[j] += scale_out * from_dst[j];
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        const float *pre = p + i * stride;
        float *row = h + i * hidden;
        for (Py_ssize_t j = 0; j < hidden; j++) {
            float value = pre[j] + ctx_in[i] * w_in[j] + ctx_out[i] * w_out[j] + bias[j];
            row[j] += value > 0.0f ? value : 0.0f;
        }
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(v, COUNT);
    return result;
}

static PyObject *edge_scores(PyObject *self, PyObject *args) {
    enum { UV, SRC, DST, W, TERM, OUT, COUNT };
    Py_buffer v[COUNT];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*", &v[UV], &v[SRC], &v[DST], &v[W], &v[TERM], &v[OUT])) return NULL;
    PyObject *result = NULL;
    Py_ssize_t hidden = v[W].len / 4, k = v[SRC].len / 8, m = hidden ? v[UV].len / (4 * 2 * hidden) : 0;
    if (check_length(&v[UV], "UV", 4, m * 2 * hidden) < 0 || check_length(&v[SRC], "src", 8, k) < 0 ||
        check_length(&v[DST], "dst", 8, k) < 0 || check_length(&v[TERM], "edge_term", 4, k) < 0 ||
        check_length(&v[OUT], "out", 4, k) < 0)
        goto done;
    const int64_t *src = v[SRC].buf, *dst = v[DST].buf;
    if (check_edges(src, dst, k, m) < 0) goto done;
    const float *uv = v[UV].buf, *w = v[W].buf, *term = v[TERM].buf;
    float *out = v[OUT].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t e = 0; e < k; e++) {
        const float *u = uv + src[e] * 2 * hidden, *t = uv + dst[e] * 2 * hidden + hidden;
        float score = term[e];
        for (Py_ssize_t j = 0; j < hidden; j++) {
            float pair = u[j] + t[j];
            score += w[j] * (pair > 0.0f ? pair : 0.0f);
        }
        out[e] = score;
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(v, COUNT);
    return result;
}

static PyMethodDef methods[] = {
    {"conv_update", conv_update, METH_VARARGS,
     "conv_update(h, P, src, dst, inv_in, inv_out, ctx_in, ctx_out, w_ctx_in, w_ctx_out, bias): "
     "one EdgeAwareConv after its matmul, h updated in place."},
    {"edge_scores", edge_scores, METH_VARARGS,
     "edge_scores(UV, src, dst, w, edge_term, out): fuse logit of every edge."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_gnn_kernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__gnn_kernels(void) { return PyModule_Create(&module); }
