"""Only the optional C accelerator of the acquire stack's frame walk; everything else is in pyproject.toml.

Built against the limited C API (one ``abi3`` wheel for CPython 3.11 and later). ``optional``:
where it cannot be compiled (no compiler, another interpreter) the install goes on and poolguard
walks frames in Python, as ``django_poolguard/engine/stacks.py`` says.
"""

import platform

from setuptools import Extension, setup

accelerated = platform.python_implementation() == "CPython"

setup(
    ext_modules=[
        Extension(
            "django_poolguard.engine._frames",
            ["django_poolguard/engine/_frames.c"],
            py_limited_api=True,
            optional=True,
        )
    ]
    if accelerated
    else [],
    options={"bdist_wheel": {"py_limited_api": "cp311"}} if accelerated else {},
)
