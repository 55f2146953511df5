/* fusiongym.agents._greedy_merge: the one-pass policy's plan building, compiled.
 *
 * greedy_merge(num_nodes, src, dst, order, max_group_size, allowed, labels) merges, for each
 * edge index in ``order`` (edges above the stop logit, best first), the groups of its two
 * ends when the merge stays legal: not one group already, within ``max_group_size``, allowed
 * by ``allowed(members_a, members_b)`` (a Python callable, or None) and convex (no other
 * successor group of the producer's group reaches the consumer's group). ``labels`` [N]
 * receives each node's group index, groups numbered in the order of their first node.
 *
 * This is exactly ``greedy_groups`` in fusion_policy.py, kept in C because a compiler asks
 * for a plan inline: the Python loop took ~30 ms on a 10k-edge graph. Node ids are a
 * topological order, so a path search from A towards B visits only groups whose first node
 * precedes B's last node. Buffers are int64 (src, dst, order, labels), passed through the
 * buffer protocol, so the module needs only the CPython API.
 *
 * group_schedules(labels, logits, offered, chosen) writes chosen[g], the schedule index with
 * the highest logit (float32 [N, S]) on any node of group g among the ``offered`` ones (uint8 [S]):
 * the plan's bookkeeping, linear in N, but a Python loop would cost more than the merges.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* The partition: union-find over nodes (int32: graphs stay far below 2^31 nodes), each root
 * holding its group's size, first and last node and member list. Groups' neighbours are not
 * kept: they are read off the graph's adjacency (CSR both ways) when a merge asks, through
 * the members (at most max_group_size). Every array is O(N + K) int32, small enough for the
 * allocator to reuse between calls: per-node neighbour sets, allocated fresh (a megabyte at
 * 10k nodes), cost more in page faults than the merging itself. */
typedef struct {
    int32_t num_nodes;
    int32_t *parent, *size, *first, *last;
    int32_t *member_next, *member_tail;   /* members of a root: linked list from the root */
    int32_t *out_ptr, *out_node, *in_ptr, *in_node;   /* adjacency, CSR by producer and by consumer */
    int32_t *stack, *seen;                 /* path search scratch; seen holds search stamps */
    int32_t stamp;
} Partition;

static void partition_free(Partition *p) {
    free(p->parent); free(p->size); free(p->first); free(p->last); free(p->member_next); free(p->member_tail);
    free(p->out_ptr); free(p->out_node); free(p->in_ptr); free(p->in_node); free(p->stack); free(p->seen);
}

/* Fill the CSR (ptr [N+1], node [K]) of the edges grouped by ``from``, listing ``to``. */
static void build_csr(const int64_t *from, const int64_t *to, Py_ssize_t num_edges, int32_t n, int32_t *ptr,
                      int32_t *node) {
    memset(ptr, 0, (size_t)(n + 1) * sizeof(int32_t));
    for (Py_ssize_t k = 0; k < num_edges; k++) ptr[from[k] + 1]++;
    for (int32_t v = 0; v < n; v++) ptr[v + 1] += ptr[v];
    for (Py_ssize_t k = 0; k < num_edges; k++) node[ptr[from[k]]++] = (int32_t)to[k];
    for (int32_t v = n; v > 0; v--) ptr[v] = ptr[v - 1];
    ptr[0] = 0;
}

static int partition_init(Partition *p, int32_t n, const int64_t *src, const int64_t *dst, Py_ssize_t num_edges) {
    memset(p, 0, sizeof(*p));
    p->num_nodes = n;
    size_t bytes = (size_t)(n + 1) * sizeof(int32_t), edge_bytes = (size_t)(num_edges + 1) * sizeof(int32_t);
    p->parent = malloc(bytes); p->size = malloc(bytes); p->first = malloc(bytes); p->last = malloc(bytes);
    p->member_next = malloc(bytes); p->member_tail = malloc(bytes); p->stack = malloc(bytes);
    p->seen = calloc((size_t)n + 1, sizeof(int32_t));
    p->out_ptr = malloc(bytes); p->in_ptr = malloc(bytes); p->out_node = malloc(edge_bytes); p->in_node = malloc(edge_bytes);
    if (!p->parent || !p->size || !p->first || !p->last || !p->member_next || !p->member_tail || !p->stack ||
        !p->seen || !p->out_ptr || !p->in_ptr || !p->out_node || !p->in_node)
        return -1;
    for (int32_t v = 0; v < n; v++) {
        p->parent[v] = v; p->size[v] = 1; p->first[v] = v; p->last[v] = v;
        p->member_next[v] = -1; p->member_tail[v] = v;
    }
    build_csr(src, dst, num_edges, n, p->out_ptr, p->out_node);
    build_csr(dst, src, num_edges, n, p->in_ptr, p->in_node);
    return 0;
}

static int32_t find(Partition *p, int32_t v) {
    while (p->parent[v] != v) {                 /* path halving */
        p->parent[v] = p->parent[p->parent[v]];
        v = p->parent[v];
    }
    return v;
}

/* Whether group ``a`` has a neighbour group other than ``b`` along ``ptr``/``node`` (its
 * successors with the out-CSR, its predecessors with the in-CSR). */
static int other_neighbour(Partition *p, const int32_t *ptr, const int32_t *node, int32_t a, int32_t b) {
    for (int32_t v = a; v >= 0; v = p->member_next[v])
        for (int32_t k = ptr[v]; k < ptr[v + 1]; k++) {
            int32_t c = find(p, node[k]);
            if (c != a && c != b) return 1;
        }
    return 0;
}

/* Push the successor groups of group ``c`` that start before ``bound`` and are unseen;
 * 1 when one of them is ``b``. */
static int push_successors(Partition *p, int32_t c, int32_t b, int32_t bound, int32_t *top, int first_step) {
    for (int32_t v = c; v >= 0; v = p->member_next[v])
        for (int32_t k = p->out_ptr[v]; k < p->out_ptr[v + 1]; k++) {
            int32_t d = find(p, p->out_node[k]);
            if (d == c) continue;
            if (d == b) {
                if (first_step) continue;   /* the merge's own edge(s) */
                return 1;
            }
            if (p->seen[d] != p->stamp && p->first[d] < bound) {
                p->seen[d] = p->stamp;
                p->stack[(*top)++] = d;
            }
        }
    return 0;
}

/* Whether a successor group of ``a`` other than ``b`` reaches ``b``. */
static int detour(Partition *p, int32_t a, int32_t b) {
    int32_t bound = p->last[b], top = 0;
    p->stamp++;
    push_successors(p, a, b, bound, &top, 1);
    while (top > 0)
        if (push_successors(p, p->stack[--top], b, bound, &top, 0)) return 1;
    return 0;
}

static PyObject *members_list(Partition *p, int32_t root) {
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (int32_t v = root; v >= 0; v = p->member_next[v]) {
        PyObject *item = PyLong_FromLong(v);
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
    }
    return list;
}

/* 1: allowed, 0: refused, -1: the callable raised. */
static int call_allowed(Partition *p, PyObject *allowed, int32_t a, int32_t b) {
    PyObject *members_a = members_list(p, a), *members_b = members_a ? members_list(p, b) : NULL;
    PyObject *verdict = members_b ? PyObject_CallFunctionObjArgs(allowed, members_a, members_b, NULL) : NULL;
    int result = verdict ? PyObject_IsTrue(verdict) : -1;
    Py_XDECREF(verdict); Py_XDECREF(members_a); Py_XDECREF(members_b);
    return result;
}

/* Merge root ``gone`` into root ``keep``: sizes, spans and members. */
static void merge(Partition *p, int32_t keep, int32_t gone) {
    p->parent[gone] = keep;
    p->size[keep] += p->size[gone];
    if (p->first[gone] < p->first[keep]) p->first[keep] = p->first[gone];
    if (p->last[gone] > p->last[keep]) p->last[keep] = p->last[gone];
    p->member_next[p->member_tail[keep]] = gone;
    p->member_tail[keep] = p->member_tail[gone];
}

static int check_buffer(Py_buffer *view, const char *name, Py_ssize_t length) {
    if (view->itemsize != 8 || view->len != length * 8) {
        PyErr_Format(PyExc_ValueError, "%s must be a contiguous int64 buffer of %zd items", name, length);
        return -1;
    }
    return 0;
}

static PyObject *greedy_merge(PyObject *self, PyObject *args) {
    long long num_nodes, max_group_size;
    Py_buffer src, dst, order, labels;
    PyObject *allowed;
    if (!PyArg_ParseTuple(args, "Ly*y*y*LOw*", &num_nodes, &src, &dst, &order, &max_group_size, &allowed, &labels))
        return NULL;
    PyObject *result = NULL;
    Partition p;
    memset(&p, 0, sizeof p);
    Py_ssize_t num_edges = src.len / 8, num_order = order.len / 8;
    if (num_nodes < 0 || num_nodes >= INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "num_nodes %lld is outside 0..%d", num_nodes, INT32_MAX - 1);
        goto done;
    }
    if (check_buffer(&src, "src", num_edges) < 0 || check_buffer(&dst, "dst", num_edges) < 0 ||
        check_buffer(&order, "order", num_order) < 0 || check_buffer(&labels, "labels", num_nodes) < 0)
        goto done;
    const int64_t *u = src.buf, *v = dst.buf, *edges = order.buf;
    for (Py_ssize_t k = 0; k < num_edges; k++)
        if (u[k] < 0 || u[k] >= num_nodes || v[k] < 0 || v[k] >= num_nodes) {
            PyErr_Format(PyExc_ValueError, "edge %zd (%lld -> %lld) names a node outside 0..%lld",
                         k, (long long)u[k], (long long)v[k], num_nodes - 1);
            goto done;
        }
    if (partition_init(&p, (int32_t)num_nodes, u, v, num_edges) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    int callable = allowed != Py_None;
    for (Py_ssize_t i = 0; i < num_order; i++) {
        int64_t edge = edges[i];
        if (edge < 0 || edge >= num_edges) {
            PyErr_Format(PyExc_ValueError, "order names edge %lld of %zd", (long long)edge, num_edges);
            goto done;
        }
        int32_t a = find(&p, (int32_t)u[edge]), b = find(&p, (int32_t)v[edge]);
        if (a == b || p.size[a] + p.size[b] > max_group_size) continue;
        if (other_neighbour(&p, p.out_ptr, p.out_node, a, b) && other_neighbour(&p, p.in_ptr, p.in_node, b, a) &&
            detour(&p, a, b))
            continue;
        if (callable) {
            int verdict = call_allowed(&p, allowed, a, b);
            if (verdict < 0) goto done;
            if (!verdict) continue;
        }
        int32_t keep = p.size[a] >= p.size[b] ? a : b;
        merge(&p, keep, keep == a ? b : a);
    }
    int64_t *out = labels.buf, groups = 0;
    for (int32_t node = 0; node < num_nodes; node++) p.stack[node] = -1;   /* group index per root */
    for (int32_t node = 0; node < num_nodes; node++) {
        int32_t root = find(&p, node);
        if (p.stack[root] < 0) p.stack[root] = (int32_t)groups++;
        out[node] = p.stack[root];
    }
    result = Py_NewRef(Py_None);
done:
    partition_free(&p);
    PyBuffer_Release(&src); PyBuffer_Release(&dst); PyBuffer_Release(&order); PyBuffer_Release(&labels);
    return result;
}

static PyObject *group_schedules(PyObject *self, PyObject *args) {
    Py_buffer labels, logits, offered, chosen;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &labels, &logits, &offered, &chosen)) return NULL;
    PyObject *result = NULL;
    float *best = NULL;
    Py_ssize_t n = labels.len / 8, schedules = offered.len, num_groups = chosen.len / 8;
    if (check_buffer(&labels, "labels", n) < 0 || check_buffer(&chosen, "chosen", num_groups) < 0) goto done;
    if (logits.itemsize != 4 || logits.len != n * schedules * 4 || offered.itemsize != 1) {
        PyErr_Format(PyExc_ValueError, "logits must be contiguous float32 [%zd, %zd] and offered uint8 [%zd]",
                     n, schedules, schedules);
        goto done;
    }
    best = malloc((size_t)(num_groups * schedules + 1) * sizeof(float));
    if (!best) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t *label = labels.buf;
    const float *logit = logits.buf;
    const unsigned char *ok = offered.buf;
    int64_t *out = chosen.buf;
    for (Py_ssize_t i = 0; i < num_groups * schedules; i++) best[i] = -HUGE_VALF;
    for (Py_ssize_t v = 0; v < n; v++) {
        if (label[v] < 0 || label[v] >= num_groups) {
            PyErr_Format(PyExc_ValueError, "node %zd has group %lld outside 0..%zd", v, (long long)label[v], num_groups - 1);
            goto done;
        }
        float *row = best + label[v] * schedules;
        for (Py_ssize_t s = 0; s < schedules; s++)
            if (ok[s] && logit[v * schedules + s] > row[s]) row[s] = logit[v * schedules + s];
    }
    for (Py_ssize_t g = 0; g < num_groups; g++) {
        const float *row = best + g * schedules;
        Py_ssize_t arg = 0;
        for (Py_ssize_t s = 1; s < schedules; s++)
            if (row[s] > row[arg]) arg = s;
        out[g] = arg;
    }
    result = Py_NewRef(Py_None);
done:
    free(best);
    PyBuffer_Release(&labels); PyBuffer_Release(&logits); PyBuffer_Release(&offered); PyBuffer_Release(&chosen);
    return result;
}

static PyMethodDef methods[] = {
    {"greedy_merge", greedy_merge, METH_VARARGS,
     "greedy_merge(num_nodes, src, dst, order, max_group_size, allowed, labels): legal merges in order."},
    {"group_schedules", group_schedules, METH_VARARGS,
     "group_schedules(labels, logits, offered, chosen): best offered schedule of each group."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_greedy_merge", NULL, -1, methods};

PyMODINIT_FUNC PyInit__greedy_merge(void) { return PyModule_Create(&module); }
