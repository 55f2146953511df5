/* fusiongym.reward._roofline: the analytical backend's latency of every group of one plan.
 *
 * plan_us(group_of, schedule_of_group, compute_us, us_per_byte, own_read_bytes, edge_src, edge_dst,
 *         edge_read_bytes, edge_tensor, tensor_node, tensor_bytes, tensor_elems, tensor_always_written,
 *         schedule_table, out)
 *
 * For N nodes in G groups (E edges, T tensors, S schedules), cell(n) = schedule[group[n]] * N + n:
 *   memory[g]  = sum over nodes n of g of (own_read_bytes[n] + bytes n reads over edges from
 *                other groups + bytes of the tensors n writes out of g) * us_per_byte[cell(n)]
 *   compute[g] = sum over nodes n of g of compute_us[cell(n)]
 *   elems[g]   = output elements of the tensors g writes
 *   tiles = max(1, ceil(elems / tile_elems)); wave = ceil(tiles / slots_left) * wave_scale / tiles
 *   out[g]     = max(compute, memory) * wave + overhead_us
 * (schedule_table [S, 4] rows: tile_elems, slots_left, wave_scale, overhead_us). A tensor is
 * written out when an edge carrying it crosses groups or when tensor_always_written.
 *
 * The same numbers as ``AnalyticalBackend.evaluate`` computes with numpy bincounts
 * (reward/analytical.py), summed in another order. One plan of a 10k-edge graph: one pass over
 * edges, tensors and nodes, ~0.03 ms instead of the numpy passes' ~0.25 ms. Float arrays are
 * contiguous float64, indices int64, tensor_always_written uint8; out is float64 [G].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "buffers.h"
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

enum {
    GROUP_OF, SCHEDULE, COMPUTE_US, US_PER_BYTE, OWN_READ, EDGE_SRC, EDGE_DST, EDGE_READ, EDGE_TENSOR,
    TENSOR_NODE, TENSOR_BYTES, TENSOR_ELEMS, ALWAYS_WRITTEN, SCHEDULE_TABLE, OUT, COUNT
};

/* The plan's labels and schedules; the graph's own arrays are built together and trusted. */
static int check_plan(const int64_t *group, Py_ssize_t n, const int64_t *schedule, Py_ssize_t groups,
                      Py_ssize_t schedules) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (group[i] < 0 || group[i] >= groups) {
            PyErr_Format(PyExc_ValueError, "group labels must lie in 0..%zd (schedule_of_group has %zd entries); "
                         "node %zd has %lld", groups - 1, groups, i, (long long)group[i]);
            return -1;
        }
    return check_schedules(schedule, groups, schedules);
}

static PyObject *plan_us(PyObject *self, PyObject *args) {
    Py_buffer v[COUNT];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*y*y*w*", &v[GROUP_OF], &v[SCHEDULE], &v[COMPUTE_US],
                          &v[US_PER_BYTE], &v[OWN_READ], &v[EDGE_SRC], &v[EDGE_DST], &v[EDGE_READ], &v[EDGE_TENSOR],
                          &v[TENSOR_NODE], &v[TENSOR_BYTES], &v[TENSOR_ELEMS], &v[ALWAYS_WRITTEN],
                          &v[SCHEDULE_TABLE], &v[OUT]))
        return NULL;
    PyObject *result = NULL;
    unsigned char *written = NULL;
    double *compute = NULL, *elems = NULL;
    Py_ssize_t n = v[GROUP_OF].len / 8, groups = v[SCHEDULE].len / 8, edges = v[EDGE_SRC].len / 8;
    Py_ssize_t tensors = v[TENSOR_NODE].len / 8, schedules = v[SCHEDULE_TABLE].len / (4 * 8);
    if (check(&v[GROUP_OF], "group_of", 8, n) < 0 || check(&v[SCHEDULE], "schedule_of_group", 8, groups) < 0 ||
        check(&v[COMPUTE_US], "compute_us", 8, schedules * n) < 0 ||
        check(&v[US_PER_BYTE], "us_per_byte", 8, schedules * n) < 0 || check(&v[OWN_READ], "own_read_bytes", 8, n) < 0 ||
        check(&v[EDGE_SRC], "edge_src", 8, edges) < 0 || check(&v[EDGE_DST], "edge_dst", 8, edges) < 0 ||
        check(&v[EDGE_READ], "edge_read_bytes", 8, edges) < 0 || check(&v[EDGE_TENSOR], "edge_tensor", 8, edges) < 0 ||
        check(&v[TENSOR_BYTES], "tensor_bytes", 8, tensors) < 0 ||
        check(&v[TENSOR_ELEMS], "tensor_elems", 8, tensors) < 0 ||
        check(&v[ALWAYS_WRITTEN], "tensor_always_written", 1, tensors) < 0 ||
        check(&v[SCHEDULE_TABLE], "schedule_table", 8, schedules * 4) < 0 || check(&v[OUT], "out", 8, groups) < 0)
        goto done;
    const int64_t *group = v[GROUP_OF].buf, *schedule = v[SCHEDULE].buf;
    const int64_t *src = v[EDGE_SRC].buf, *dst = v[EDGE_DST].buf, *edge_tensor = v[EDGE_TENSOR].buf;
    const int64_t *tensor_node = v[TENSOR_NODE].buf;
    const double *compute_us = v[COMPUTE_US].buf, *us_per_byte = v[US_PER_BYTE].buf, *own_read = v[OWN_READ].buf;
    const double *edge_read = v[EDGE_READ].buf, *tensor_bytes = v[TENSOR_BYTES].buf;
    const double *tensor_elems = v[TENSOR_ELEMS].buf, *table = v[SCHEDULE_TABLE].buf;
    const unsigned char *always_written = v[ALWAYS_WRITTEN].buf;
    double *memory = v[OUT].buf;   /* accumulated in place, then turned into latency */
    if (check_plan(group, n, schedule, groups, schedules) < 0) goto done;
    written = malloc((size_t)tensors + 1);
    compute = calloc((size_t)groups + 1, sizeof(double));
    elems = calloc((size_t)groups + 1, sizeof(double));
    if (!written || !compute || !elems) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t t = 0; t < tensors; t++) written[t] = always_written[t];
    for (Py_ssize_t g = 0; g < groups; g++) memory[g] = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t g = group[i], cell = schedule[g] * n + i;
        compute[g] += compute_us[cell];
        memory[g] += own_read[i] * us_per_byte[cell];
    }
    for (Py_ssize_t e = 0; e < edges; e++) {
        int64_t g = group[dst[e]];
        if (group[src[e]] == g) continue;
        written[edge_tensor[e]] = 1;
        memory[g] += edge_read[e] * us_per_byte[schedule[g] * n + dst[e]];
    }
    for (Py_ssize_t t = 0; t < tensors; t++) {
        if (!written[t]) continue;
        int64_t node = tensor_node[t], g = group[node];
        memory[g] += tensor_bytes[t] * us_per_byte[schedule[g] * n + node];
        elems[g] += tensor_elems[t];
    }
    for (Py_ssize_t g = 0; g < groups; g++) {
        const double *row = table + 4 * schedule[g];   /* tile_elems, slots_left, wave_scale, overhead_us */
        double tiles = fmax(1.0, ceil(elems[g] / row[0]));
        double wave = ceil(tiles / row[1]) * row[2] / tiles;
        memory[g] = fmax(compute[g], memory[g]) * wave + row[3];
    }
    result = Py_NewRef(Py_None);
done:
    free(written);
    free(compute);
    free(elems);
    for (int i = 0; i < COUNT; i++) PyBuffer_Release(&v[i]);
    return result;
}

static PyMethodDef methods[] = {
    {"plan_us", plan_us, METH_VARARGS,
     "plan_us(group_of, schedule_of_group, compute_us, us_per_byte, own_read_bytes, edge_src, edge_dst, "
     "edge_read_bytes, edge_tensor, tensor_node, tensor_bytes, tensor_elems, tensor_always_written, "
     "schedule_table, out): every group's roofline latency (µs) of one plan into out"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_roofline", NULL, -1, methods};

PyMODINIT_FUNC PyInit__roofline(void) { return PyModule_Create(&module); }
