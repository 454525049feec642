/* The acquire stack's frame walk in C: stacks.capture() runs on every checkout, and in Python
 * its loop costs about 1.5 us per checkout (measured in bench_checkout.py); here, a fraction.
 *
 * The same walk as stacks.py's pure-Python one, which runs wherever this is not built. Only
 * the limited C API (stable ABI, 3.11+): one wheel for every CPython, and no reliance on the
 * interpreter's frame layout. Frames are read through their Python attributes (f_code,
 * f_lasti, f_back) and sys._getframe(), as the Python code reads them.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *str_f_back, *str_f_code, *str_f_lasti, *getframe;

/* Whether id(frame.f_code) is in skip_codes: 1, 0, or -1 with an exception set. */
static int
in_skip_codes(PyObject *frame, PyObject *skip_codes)
{
    PyObject *code = PyObject_GetAttr(frame, str_f_code);
    if (code == NULL)
        return -1;
    PyObject *key = PyLong_FromVoidPtr(code);
    Py_DECREF(code);
    if (key == NULL)
        return -1;
    int found = PySet_Contains(skip_codes, key);
    Py_DECREF(key);
    return found;
}

/* (code, lasti, code, lasti, ...) of frame and its callers, at most depth frames. */
static PyObject *
walk_from(PyObject *frame, Py_ssize_t depth)
{
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_INCREF(frame);
    while (frame != Py_None && depth-- > 0) {
        PyObject *code = PyObject_GetAttr(frame, str_f_code);
        PyObject *lasti = code == NULL ? NULL : PyObject_GetAttr(frame, str_f_lasti);
        int failed = lasti == NULL || PyList_Append(out, code) < 0 || PyList_Append(out, lasti) < 0;
        Py_XDECREF(code);
        Py_XDECREF(lasti);
        PyObject *back = failed ? NULL : PyObject_GetAttr(frame, str_f_back);
        Py_DECREF(frame);
        if (back == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        frame = back;
    }
    Py_DECREF(frame);
    PyObject *result = PyList_AsTuple(out);
    Py_DECREF(out);
    return result;
}

/* The argument count is `expected` (else TypeError with `usage`) and args[1] a depth: 0, or -1 with
   an exception set. */
static int
parse_args(Py_ssize_t nargs, Py_ssize_t expected, const char *usage, PyObject *const *args, Py_ssize_t *depth)
{
    if (nargs != expected) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *depth = PyLong_AsSsize_t(args[1]);
    return *depth == -1 && PyErr_Occurred() ? -1 : 0;
}

PyDoc_STRVAR(walk_doc,
"walk(frame, depth) -> tuple\n\n"
"(code, lasti, ...) of frame and its callers, innermost first, at most depth frames.");

static PyObject *
walk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t depth;
    if (parse_args(nargs, 2, "walk() takes a frame (or None) and a depth", args, &depth) < 0)
        return NULL;
    return walk_from(args[0], depth);
}

PyDoc_STRVAR(after_hint_doc,
"after_hint(hint, depth, skip_codes) -> tuple or None\n\n"
"The stack outside the skipped frames, if the frame sys._getframe(hint) names (counted from the\n"
"caller) is the last skipped one: its code's id is in skip_codes and its caller's is not.\n"
"None otherwise (the hint is stale, or the stack is shorter: the caller walks instead).");

static PyObject *
after_hint(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t depth;
    if (parse_args(nargs, 3, "after_hint() takes a hint, a depth and a set of code ids", args, &depth) < 0)
        return NULL;
    if (!PyObject_TypeCheck(args[2], &PyFrozenSet_Type) && !PyObject_TypeCheck(args[2], &PySet_Type)) {
        PyErr_SetString(PyExc_TypeError, "after_hint(): skip_codes must be a set of code object ids");
        return NULL;
    }
    PyObject *inside = PyObject_CallFunctionObjArgs(getframe, args[0], NULL);
    if (inside == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))  /* "call stack is not deep enough" */
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int found = in_skip_codes(inside, args[2]);
    PyObject *frame = found > 0 ? PyObject_GetAttr(inside, str_f_back) : NULL;
    Py_DECREF(inside);
    if (found <= 0) {
        if (found < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (frame == NULL)
        return NULL;
    if (frame != Py_None) {
        found = in_skip_codes(frame, args[2]);
        if (found != 0) {
            Py_DECREF(frame);
            if (found < 0)
                return NULL;
            Py_RETURN_NONE;
        }
    }
    PyObject *result = walk_from(frame, depth);
    Py_DECREF(frame);
    return result;
}

static PyMethodDef methods[] = {
    {"after_hint", (PyCFunction)(void (*)(void))after_hint, METH_FASTCALL, after_hint_doc},
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL, walk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef frames_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_frames",
    .m_doc = "The acquire stack's frame walk (see stacks.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__frames(void)
{
    str_f_back = PyUnicode_InternFromString("f_back");
    str_f_code = PyUnicode_InternFromString("f_code");
    str_f_lasti = PyUnicode_InternFromString("f_lasti");
    getframe = PySys_GetObject("_getframe"); /* borrowed */
    if (str_f_back == NULL || str_f_code == NULL || str_f_lasti == NULL)
        return NULL;
    if (getframe == NULL) {
        PyErr_SetString(PyExc_ImportError, "sys._getframe is missing");
        return NULL;
    }
    Py_INCREF(getframe);
    return PyModule_Create(&frames_module);
}
