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
 * group_members(labels, num_groups) -> list of G lists: the node ids of each group, ascending.
 * group_schedules(labels, logits, offered, chosen) writes chosen[g], the schedule index with
 * the highest logit (float32 [N, S]) on any node of group g among the ``offered`` ones (uint8 [S]).
 * Both are the plan's bookkeeping, linear in N, but a Python loop would cost more than the merges.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

/* A set of group roots as a small unsorted array (degrees in ML graphs are small): the first
 * LOCAL_ROOTS live inside the struct, so most nodes never allocate. */
#define LOCAL_ROOTS 4
typedef struct {
    int64_t *items;
    int64_t count;
    int64_t capacity;
    int64_t local[LOCAL_ROOTS];
} RootSet;

static void rootset_init(RootSet *set) {
    set->items = set->local;
    set->count = 0;
    set->capacity = LOCAL_ROOTS;
}

static void rootset_free(RootSet *set) {
    if (set->items != set->local) free(set->items);
}

static int rootset_add(RootSet *set, int64_t root) {
    for (int64_t i = 0; i < set->count; i++)
        if (set->items[i] == root) return 0;
    if (set->count == set->capacity) {
        int64_t capacity = 2 * set->capacity;
        int64_t *items = malloc((size_t)capacity * sizeof(int64_t));
        if (!items) return -1;
        memcpy(items, set->items, (size_t)set->count * sizeof(int64_t));
        rootset_free(set);
        set->items = items;
        set->capacity = capacity;
    }
    set->items[set->count++] = root;
    return 0;
}

static void rootset_discard(RootSet *set, int64_t root) {
    for (int64_t i = 0; i < set->count; i++)
        if (set->items[i] == root) {
            set->items[i] = set->items[--set->count];
            return;
        }
}

/* Replace ``gone`` by ``keep`` in ``set`` (the neighbour set of a neighbour of a merged pair). */
static int rootset_rename(RootSet *set, int64_t gone, int64_t keep) {
    rootset_discard(set, gone);
    return rootset_add(set, keep);
}

typedef struct {
    int64_t num_nodes;
    int64_t *parent, *size, *first, *last;
    int64_t *member_next, *member_tail;   /* members of a root: linked list from the root */
    int64_t *stack, *seen;                /* path search scratch; seen holds search stamps */
    int64_t stamp;
    RootSet *succ, *pred;
} Partition;

static void partition_free(Partition *p) {
    if (p->succ)
        for (int64_t v = 0; v < p->num_nodes; v++) rootset_free(&p->succ[v]);
    if (p->pred)
        for (int64_t v = 0; v < p->num_nodes; v++) rootset_free(&p->pred[v]);
    free(p->succ); free(p->pred);
    free(p->parent); free(p->size); free(p->first); free(p->last);
    free(p->member_next); free(p->member_tail); free(p->stack); free(p->seen);
}

static int partition_init(Partition *p, int64_t n) {
    memset(p, 0, sizeof(*p));
    p->num_nodes = n;
    size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(int64_t);
    p->parent = malloc(bytes); p->size = malloc(bytes); p->first = malloc(bytes); p->last = malloc(bytes);
    p->member_next = malloc(bytes); p->member_tail = malloc(bytes);
    p->stack = malloc(bytes); p->seen = calloc((size_t)(n > 0 ? n : 1), sizeof(int64_t));
    p->succ = calloc((size_t)(n > 0 ? n : 1), sizeof(RootSet));
    p->pred = calloc((size_t)(n > 0 ? n : 1), sizeof(RootSet));
    if (!p->parent || !p->size || !p->first || !p->last || !p->member_next || !p->member_tail ||
        !p->stack || !p->seen || !p->succ || !p->pred)
        return -1;
    for (int64_t v = 0; v < n; v++) {
        p->parent[v] = v; p->size[v] = 1; p->first[v] = v; p->last[v] = v;
        p->member_next[v] = -1; p->member_tail[v] = v;
        rootset_init(&p->succ[v]); rootset_init(&p->pred[v]);
    }
    return 0;
}

static int64_t find(Partition *p, int64_t v) {
    while (p->parent[v] != v) {                 /* path halving */
        p->parent[v] = p->parent[p->parent[v]];
        v = p->parent[v];
    }
    return v;
}

/* Whether a successor group of ``a`` other than ``b`` reaches ``b``. */
static int detour(Partition *p, int64_t a, int64_t b) {
    int64_t bound = p->last[b], top = 0, stamp = ++p->stamp;
    RootSet *out = &p->succ[a];
    for (int64_t i = 0; i < out->count; i++) {
        int64_t c = out->items[i];
        if (c != b && p->first[c] < bound && p->seen[c] != stamp) {
            p->seen[c] = stamp;
            p->stack[top++] = c;
        }
    }
    while (top > 0) {
        RootSet *next = &p->succ[p->stack[--top]];
        for (int64_t i = 0; i < next->count; i++) {
            int64_t d = next->items[i];
            if (d == b) return 1;
            if (p->seen[d] != stamp && p->first[d] < bound) {
                p->seen[d] = stamp;
                p->stack[top++] = d;
            }
        }
    }
    return 0;
}

static PyObject *members_list(Partition *p, int64_t root) {
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (int64_t v = root; v >= 0; v = p->member_next[v]) {
        PyObject *item = PyLong_FromLongLong(v);
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
static int call_allowed(Partition *p, PyObject *allowed, int64_t a, int64_t b) {
    PyObject *members_a = members_list(p, a), *members_b = members_a ? members_list(p, b) : NULL;
    PyObject *verdict = members_b ? PyObject_CallFunctionObjArgs(allowed, members_a, members_b, NULL) : NULL;
    int result = verdict ? PyObject_IsTrue(verdict) : -1;
    Py_XDECREF(verdict); Py_XDECREF(members_a); Py_XDECREF(members_b);
    return result;
}

/* Merge root ``gone`` into root ``keep``: sizes, spans, members and neighbour sets. */
static int merge(Partition *p, int64_t keep, int64_t gone) {
    p->parent[gone] = keep;
    p->size[keep] += p->size[gone];
    if (p->first[gone] < p->first[keep]) p->first[keep] = p->first[gone];
    if (p->last[gone] > p->last[keep]) p->last[keep] = p->last[gone];
    p->member_next[p->member_tail[keep]] = gone;
    p->member_tail[keep] = p->member_tail[gone];
    RootSet *gone_succ = &p->succ[gone], *gone_pred = &p->pred[gone];
    for (int64_t i = 0; i < gone_succ->count; i++)
        if (rootset_rename(&p->pred[gone_succ->items[i]], gone, keep) < 0) return -1;
    for (int64_t i = 0; i < gone_pred->count; i++)
        if (rootset_rename(&p->succ[gone_pred->items[i]], gone, keep) < 0) return -1;
    for (int64_t i = 0; i < gone_succ->count; i++)
        if (rootset_add(&p->succ[keep], gone_succ->items[i]) < 0) return -1;
    for (int64_t i = 0; i < gone_pred->count; i++)
        if (rootset_add(&p->pred[keep], gone_pred->items[i]) < 0) return -1;
    rootset_discard(&p->succ[keep], keep); rootset_discard(&p->succ[keep], gone);
    rootset_discard(&p->pred[keep], keep); rootset_discard(&p->pred[keep], gone);
    gone_succ->count = gone_pred->count = 0;
    return 0;
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
    int ready = partition_init(&p, num_nodes);
    Py_ssize_t num_edges = src.len / 8, num_order = order.len / 8;
    if (ready < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (check_buffer(&src, "src", num_edges) < 0 || check_buffer(&dst, "dst", num_edges) < 0 ||
        check_buffer(&order, "order", num_order) < 0 || check_buffer(&labels, "labels", num_nodes) < 0)
        goto done;
    const int64_t *u = src.buf, *v = dst.buf, *edges = order.buf;
    for (Py_ssize_t k = 0; k < num_edges; k++) {
        if (u[k] < 0 || u[k] >= num_nodes || v[k] < 0 || v[k] >= num_nodes) {
            PyErr_Format(PyExc_ValueError, "edge %zd (%lld -> %lld) names a node outside 0..%lld",
                         k, (long long)u[k], (long long)v[k], num_nodes - 1);
            goto done;
        }
        if (rootset_add(&p.succ[u[k]], v[k]) < 0 || rootset_add(&p.pred[v[k]], u[k]) < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    int callable = allowed != Py_None;
    for (Py_ssize_t i = 0; i < num_order; i++) {
        int64_t edge = edges[i];
        if (edge < 0 || edge >= num_edges) {
            PyErr_Format(PyExc_ValueError, "order names edge %lld of %zd", (long long)edge, num_edges);
            goto done;
        }
        int64_t a = find(&p, u[edge]), b = find(&p, v[edge]);
        if (a == b || p.size[a] + p.size[b] > max_group_size) continue;
        if (p.succ[a].count > 1 && p.pred[b].count > 1 && detour(&p, a, b)) continue;
        if (callable) {
            int verdict = call_allowed(&p, allowed, a, b);
            if (verdict < 0) goto done;
            if (!verdict) continue;
        }
        int64_t keep = p.size[a] >= p.size[b] ? a : b;
        if (merge(&p, keep, keep == a ? b : a) < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    int64_t *out = labels.buf, groups = 0;
    for (int64_t node = 0; node < num_nodes; node++) p.stack[node] = -1;   /* group index per root */
    for (int64_t node = 0; node < num_nodes; node++) {
        int64_t root = find(&p, node);
        if (p.stack[root] < 0) p.stack[root] = groups++;
        out[node] = p.stack[root];
    }
    result = Py_NewRef(Py_None);
done:
    partition_free(&p);
    PyBuffer_Release(&src); PyBuffer_Release(&dst); PyBuffer_Release(&order); PyBuffer_Release(&labels);
    return result;
}

static PyObject *group_members(PyObject *self, PyObject *args) {
    Py_buffer labels;
    Py_ssize_t num_groups;
    if (!PyArg_ParseTuple(args, "y*n", &labels, &num_groups)) return NULL;
    Py_ssize_t n = labels.len / 8;
    PyObject *groups = NULL;
    Py_ssize_t *fill = NULL;
    if (check_buffer(&labels, "labels", n) < 0) goto done;
    const int64_t *label = labels.buf;
    fill = calloc((size_t)(num_groups > 0 ? num_groups : 1), sizeof(Py_ssize_t));
    if (!fill) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t v = 0; v < n; v++) {
        if (label[v] < 0 || label[v] >= num_groups) {
            PyErr_Format(PyExc_ValueError, "node %zd has group %lld outside 0..%zd", v, (long long)label[v], num_groups - 1);
            goto done;
        }
        fill[label[v]]++;
    }
    /* G + N new objects: with the collector on, they would trigger collections that traverse
     * every object of the process (milliseconds in a compiler holding big graphs); lists of
     * ints cannot form cycles, so it is paused while they are built. */
    int collecting = PyGC_Disable();
    groups = PyList_New(num_groups);
    if (!groups) goto fail;
    for (Py_ssize_t g = 0; g < num_groups; g++) {
        PyObject *members = PyList_New(fill[g]);
        if (!members) goto fail;
        PyList_SET_ITEM(groups, g, members);
        fill[g] = 0;
    }
    for (Py_ssize_t v = 0; v < n; v++) {
        PyObject *node = PyLong_FromSsize_t(v);
        if (!node) goto fail;
        PyList_SET_ITEM(PyList_GET_ITEM(groups, label[v]), fill[label[v]]++, node);
    }
    goto built;
fail:
    Py_CLEAR(groups);
built:
    if (collecting) PyGC_Enable();
done:
    free(fill);
    PyBuffer_Release(&labels);
    return groups;
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
    {"group_members", group_members, METH_VARARGS, "group_members(labels, num_groups): node ids of each group."},
    {"group_schedules", group_schedules, METH_VARARGS,
     "group_schedules(labels, logits, offered, chosen): best offered schedule of each group."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_greedy_merge", NULL, -1, methods};

PyMODINIT_FUNC PyInit__greedy_merge(void) { return PyModule_Create(&module); }
