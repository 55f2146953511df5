/* The length check every fusiongym.reward C extension applies to its buffer arguments. */
#ifndef FUSIONGYM_REWARD_BUFFERS_H
#define FUSIONGYM_REWARD_BUFFERS_H

#include <Python.h>

/* 0 when ``view`` holds exactly ``items`` items of ``itemsize`` bytes, else -1 with a ValueError naming ``name``. */
static int check(Py_buffer *view, const char *name, Py_ssize_t itemsize, Py_ssize_t items) {
    if (view->itemsize != itemsize || view->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s must be a contiguous buffer of %zd items of %zd bytes, got %zd bytes",
                     name, items, itemsize, view->len);
        return -1;
    }
    return 0;
}

#endif
