/* The argument checks the fusiongym.reward C extensions share: buffer lengths, schedule ids, group labels. */
#ifndef FUSIONGYM_REWARD_BUFFERS_H
#define FUSIONGYM_REWARD_BUFFERS_H

#include <Python.h>
#include <stdint.h>

/* 0 when ``view`` holds exactly ``items`` items of ``itemsize`` bytes, else -1 with a ValueError naming ``name``. */
static int check(Py_buffer *view, const char *name, Py_ssize_t itemsize, Py_ssize_t items) {
    if (view->itemsize != itemsize || view->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s must be a contiguous buffer of %zd items of %zd bytes, got %zd bytes",
                     name, items, itemsize, view->len);
        return -1;
    }
    return 0;
}

/* 0 when every group's schedule id lies in 0..schedules-1, else -1 with a ValueError naming the group. */
static int check_schedules(const int64_t *schedule, Py_ssize_t groups, Py_ssize_t schedules) {
    for (Py_ssize_t g = 0; g < groups; g++)
        if (schedule[g] < 0 || schedule[g] >= schedules) {
            PyErr_Format(PyExc_ValueError, "group %zd has schedule %lld outside 0..%zd", g, (long long)schedule[g],
                         schedules - 1);
            return -1;
        }
    return 0;
}

/* 0 when every node's group label lies in 0..groups-1, else -1 with a ValueError naming the node. */
static int check_labels(const int64_t *label, Py_ssize_t n, Py_ssize_t groups) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (label[i] < 0 || label[i] >= groups) {
            PyErr_Format(PyExc_ValueError, "node %zd has group %lld outside 0..%zd", i, (long long)label[i],
                         groups - 1);
            return -1;
        }
    return 0;
}

#endif
