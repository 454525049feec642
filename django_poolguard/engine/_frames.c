/* The acquire stack's frame walk in C: stacks.capture() runs on every checkout, and in Python
 * its loop costs about 1.5 us per checkout (measured in bench_checkout.py); here, a fraction.
 *
 * The same walk as stacks.py's pure-Python one, which runs wherever this is not built. Only
 * the limited C API (stable ABI, 3.11+): one wheel for every CPython, and no reliance on the
 * interpreter's frame layout. Frames are read as the Python code reads them: sys._getframe(),
 * f_lasti and f_back, and f_code through PyFrame_GetCode(), its limited-API call. What a checkout
 * leaves behind is only the tuple it returns: the frames walked are kept on the C stack until
 * it is made, and the plumbing's code ids are compared as addresses, with no int made per frame.
 */
#define Py_LIMITED_API 0x030B0000
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *str_f_back, *str_f_code, *str_f_lasti, *getframe;
static PyTypeObject *frame_type; /* type(sys._getframe()) */
static PyObject *hint_args;      /* (hint,) of the last after_hint(): the same, checkout after checkout */

/* frame.f_code: the direct call for a real frame (PyFrame_GetCode, limited API since 3.10), the
   attribute otherwise, so anything else gets Python's own error. A new reference, or NULL. */
static PyObject *
code_of(PyObject *frame)
{
    if (Py_IS_TYPE(frame, frame_type))
        return (PyObject *)PyFrame_GetCode((PyFrameObject *)frame);
    return PyObject_GetAttr(frame, str_f_code);
}

/* The frozensets of code ids after_hint() was given, as addresses: capture() passes the same few
   sets (the connection plumbing, set_autocommit's) checkout after checkout, so a lookup is a scan
   of a few pointers, with no int made and nothing hashed. Each set is held, so that no other set
   can take its address while it is known. */
#define KNOWN_SETS 4
typedef struct {
    PyObject *set;
    void **codes;
    Py_ssize_t count;
} Known;
static Known known[KNOWN_SETS];
static int known_next; /* the entry the next new set replaces */

/* The entry of skip_codes, made if it is a frozenset of plain ints, else NULL (the general path
   takes it). NULL with an exception set only when out of memory. Nothing here runs Python code,
   so no other thread comes in halfway. */
static Known *
known_entry(PyObject *skip_codes)
{
    for (int i = 0; i < KNOWN_SETS; i++)
        if (known[i].set == skip_codes)
            return &known[i];
    if (!PyFrozenSet_CheckExact(skip_codes))
        return NULL;
    Py_ssize_t n = PySet_Size(skip_codes);
    void **codes = n < 0 ? NULL : PyMem_Malloc(sizeof(void *) * (size_t)(n > 0 ? n : 1));
    PyObject *iterator = codes == NULL ? NULL : PyObject_GetIter(skip_codes);
    if (iterator == NULL) {
        PyMem_Free(codes);
        if (codes == NULL && n >= 0)
            PyErr_NoMemory();
        return NULL;
    }
    Py_ssize_t count = 0;
    PyObject *item;
    while ((item = PyIter_Next(iterator)) != NULL) {
        void *address = count < n && PyLong_CheckExact(item) ? PyLong_AsVoidPtr(item) : NULL;
        Py_DECREF(item);
        if (address == NULL)
            break;
        codes[count++] = address;
    }
    Py_DECREF(iterator);
    if (item != NULL || PyErr_Occurred()) { /* not ids of code objects: the general path takes them */
        PyErr_Clear();
        PyMem_Free(codes);
        return NULL;
    }
    Known *entry = &known[known_next];
    known_next = (known_next + 1) % KNOWN_SETS;
    PyMem_Free(entry->codes);
    Py_XDECREF(entry->set);
    Py_INCREF(skip_codes);
    entry->set = skip_codes;
    entry->codes = codes;
    entry->count = count;
    return entry;
}

/* Whether id(frame.f_code) is in skip_codes (entry: its known addresses, or NULL): 1, 0, or -1
   with an exception set. */
static int
in_skip_codes(PyObject *frame, PyObject *skip_codes, Known *entry)
{
    PyObject *code = code_of(frame);
    if (code == NULL)
        return -1;
    if (entry != NULL) {
        Py_DECREF(code); /* the frame keeps it: only its address is compared */
        for (Py_ssize_t i = 0; i < entry->count; i++)
            if (entry->codes[i] == (void *)code)
                return 1;
        return 0;
    }
    PyObject *key = PyLong_FromVoidPtr(code);
    Py_DECREF(code);
    if (key == NULL)
        return -1;
    int found = PySet_Contains(skip_codes, key);
    Py_DECREF(key);
    return found;
}

/* Frames kept on the C stack while walking: the result tuple is made once, at its size, with no
   list and no regrowth (STACK_DEPTH is 20 unless raised); a deeper walk goes on in a list. */
#define BUFFERED 64

/* (code, lasti, code, lasti, ...) of frame and its callers, at most depth frames. */
static PyObject *
walk_from(PyObject *frame, Py_ssize_t depth)
{
    PyObject *buffer[2 * BUFFERED];
    Py_ssize_t n = 0;
    PyObject *more = NULL; /* past BUFFERED frames */
    PyObject *result = NULL;
    Py_INCREF(frame);
    while (frame != Py_None && depth-- > 0) {
        PyObject *code = code_of(frame);
        PyObject *lasti = code == NULL ? NULL : PyObject_GetAttr(frame, str_f_lasti);
        if (lasti == NULL) {
            Py_XDECREF(code);
            goto done;
        }
        if (n < 2 * BUFFERED) {
            buffer[n++] = code; /* the references move into the buffer */
            buffer[n++] = lasti;
        }
        else {
            int failed = (more == NULL && (more = PyList_New(0)) == NULL) || PyList_Append(more, code) < 0 ||
                         PyList_Append(more, lasti) < 0;
            Py_DECREF(code);
            Py_DECREF(lasti);
            if (failed)
                goto done;
        }
        PyObject *back = PyObject_GetAttr(frame, str_f_back);
        if (back == NULL)
            goto done;
        Py_DECREF(frame);
        frame = back;
    }
    Py_ssize_t extra = more == NULL ? 0 : PyList_Size(more);
    result = PyTuple_New(n + extra);
    if (result != NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            PyTuple_SetItem(result, i, buffer[i]); /* steals: the buffer gives its references up */
        for (Py_ssize_t i = 0; i < extra; i++) {
            PyObject *item = PyList_GetItem(more, i);
            Py_INCREF(item);
            PyTuple_SetItem(result, n + i, item);
        }
        n = 0; /* nothing left to let go of */
    }
done:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_XDECREF(buffer[i]);
    Py_XDECREF(more);
    Py_DECREF(frame);
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
    Known *entry = known_entry(args[2]);
    if (entry == NULL && PyErr_Occurred())
        return NULL;
    if (hint_args == NULL || PyTuple_GetItem(hint_args, 0) != args[0]) {
        PyObject *fresh = PyTuple_Pack(1, args[0]);
        if (fresh == NULL)
            return NULL;
        Py_XDECREF(hint_args);
        hint_args = fresh;
    }
    PyObject *inside = PyObject_Call(getframe, hint_args, NULL);
    if (inside == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ValueError))  /* "call stack is not deep enough" */
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int found = in_skip_codes(inside, args[2], entry);
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
        found = in_skip_codes(frame, args[2], entry);
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
    PyObject *frame = PyObject_CallNoArgs(getframe);
    if (frame == NULL)
        return NULL;
    frame_type = Py_TYPE(frame);
    Py_INCREF((PyObject *)frame_type);
    Py_DECREF(frame);
    return PyModule_Create(&frames_module);
}
